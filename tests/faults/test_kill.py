"""SIGKILL a sweep at random moments of its work; after a rerun, everything equals an uninterrupted sweep."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import env, run_sweep, snapshot, sweep_cmd, write_spec

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


def wait_for_work(child: subprocess.Popen, manifest: Path, before: int | None) -> None:
    """Until the child has written its manifest: its start-up (interpreter, imports, plan) is over."""
    while inode(manifest) == before and child.poll() is None:
        time.sleep(0.02)


def test_random_kills_then_rerun_equals_uninterrupted(tmp_path):
    """Most of a short smoke sweep's wall time is its start-up (the interpreter and the torch
    import), so a kill at a random share of a life's whole time lands there nearly always. Each
    life but the first therefore waits until its sweep has written its manifest, then dies a
    random moment into the work, up to half of the clean sweep's: in training, a checkpoint or
    curve write, an evaluation or the final metrics of whichever run it resumed. A life keeps
    what it wrote before its last checkpoint, so each one starts further on and the kills move
    through the sweep; the first life is killed in start-up."""
    spec = write_spec(tmp_path)
    clean = tmp_path / "clean"
    child = subprocess.Popen(sweep_cmd(spec, clean), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    wait_for_work(child, manifest_of(clean), None)
    t = time.perf_counter()
    _, err = child.communicate(timeout=900)
    work = time.perf_counter() - t
    assert child.returncode == 0, err
    expected = snapshot(clean)

    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copytree(clean / "cache", killed / "cache")  # the caches are not under test; the runs are
    rng = random.Random(0)
    kills = 0
    for life in range(LIVES):
        before = inode(manifest_of(killed))
        child = subprocess.Popen(sweep_cmd(spec, killed), env=env(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        if life == 0:
            time.sleep(rng.uniform(0.5, 1.5))
        else:
            wait_for_work(child, manifest_of(killed), before)
            time.sleep(rng.uniform(0.0, work / 2))
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            kills += 1
        child.wait()
    assert kills >= LIVES - 1  # the lives died mid-sweep (the last may find too little work left)
    final = run_sweep(spec, killed)
    assert final.returncode == 0, final.stderr
    assert snapshot(killed) == expected
    # a kill can leave a temp file behind, but only under a hidden temp name that nothing reads
    assert all(p.name.startswith(".") for p in killed.rglob("*.tmp"))
