"""SIGKILL a sweep at random moments of its work; after a rerun, everything equals an uninterrupted sweep."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import env, run_sweep, snapshot, sweep_cmd, write_spec

from mirai_lab.results_dir import CURVE as CURVE_FILE
from mirai_lab.runs.curve import Curve

pytestmark = pytest.mark.slow

LIVES = 5  # the first killed in start-up, the others at a random moment of their work


def manifest_of(results: Path) -> Path:
    return results / "sweeps" / "faults" / "manifest.json"


def inode(path: Path) -> int | None:
    """The manifest is replaced (a new file renamed over it) by every sweep that starts its work."""
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def milestones(results: Path) -> int:
    """How far the sweep's work has come: its runs' evaluation points and final records on disk. A
    kill takes back at most the point written after its run's last checkpoint (it is recomputed)."""
    return sum(len({row[1] for row in Curve.load(run / CURVE_FILE, run.name).rows}) + (run / "final.json").exists()
               for run in results.glob("runs/*"))


def wait_until(child: subprocess.Popen, reached: Callable[[], bool]) -> None:
    while not reached() and child.poll() is None:
        time.sleep(0.02)


def kill_in_work(child: subprocess.Popen, results: Path, before: int | None, target: int,
                 rng: random.Random) -> None:
    """Wait until the sweep has begun its work (written its manifest) and made its first milestone
    (the resumed run's first point), then until its work has reached `target` milestones and one
    more than that first; then sleep a random moment up to the mean interval between this life's
    milestones since its first. The interval is measured on this life, after its resume, so a
    life that runs faster or slower than another (a machine busy or idle) is still killed inside
    its next stretch of work."""
    wait_until(child, lambda: inode(manifest_of(results)) != before)
    first = milestones(results) + 1
    wait_until(child, lambda: milestones(results) >= first)
    t0 = time.perf_counter()
    goal = max(target, first + 1)
    wait_until(child, lambda: milestones(results) >= goal)
    time.sleep(rng.uniform(0.0, (time.perf_counter() - t0) / (goal - first)))


def test_random_kills_then_rerun_equals_uninterrupted(tmp_path):
    """Most of a short smoke sweep's wall time is its start-up (the interpreter and the torch
    import), so a kill at a random share of a life's whole time lands there nearly always. The
    kills are therefore aimed at the work's progress, not at clock times: each life but the first
    dies a random moment after a milestone drawn from one quarter of the sweep (`kill_in_work`),
    in training, a checkpoint or curve write, an evaluation or the final metrics of whichever run
    it resumed. Four milestones or more stay beyond the last target, so every life is killed
    with work left unless the machine runs it about four times faster at its kill than at its
    first milestones (kills timed by the clean sweep's clock let a life that ran faster than the
    clean sweep finish it). The first life is killed in start-up."""
    spec = write_spec(tmp_path)
    clean = tmp_path / "clean"
    ran = run_sweep(spec, clean)
    assert ran.returncode == 0, ran.stderr
    expected = snapshot(clean)
    total = milestones(clean)

    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copytree(clean / "cache", killed / "cache")  # the caches are not under test; the runs are
    rng = random.Random(0)
    span = (total - 3) // (LIVES - 1)  # the last target leaves four milestones or more
    targets = [rng.randrange(i * span, (i + 1) * span) for i in range(LIVES - 1)]
    kills = 0
    for life in range(LIVES):
        before = inode(manifest_of(killed))
        child = subprocess.Popen(sweep_cmd(spec, killed), env=env(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        if life == 0:
            time.sleep(rng.uniform(0.5, 1.5))
        else:
            kill_in_work(child, killed, before, targets[life - 1], rng)
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            kills += 1
        child.wait()
    assert kills == LIVES  # every life died with work left
    final = run_sweep(spec, killed)
    assert final.returncode == 0, final.stderr
    assert snapshot(killed) == expected
    # a kill can leave a temp file behind, but only under a hidden temp name that nothing reads
    assert all(p.name.startswith(".") for p in killed.rglob("*.tmp"))
