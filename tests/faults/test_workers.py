"""Exactly-once for sweep workers: a worker frozen past its heartbeat loses its claim and,
when it wakes, writes nothing; a sweep whose runs all finished exits 0 after a worker died."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from helpers import WORKER_OPTS, env, sweep_cmd, sweep_here, write_spec

pytestmark = pytest.mark.slow

WORKER_ENV = env()


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def checkpointed_runs(results: Path) -> list[Path]:
    return [p.parent for p in (results / "runs").glob("*/checkpoint.pt")] if (results / "runs").exists() else []


def files_of(results: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under runs/ with its bytes and modification time (temporary files included)."""
    return {str(p.relative_to(results)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted((results / "runs").rglob("*")) if p.is_file()}


def complete_trials(journal: Path) -> list[str]:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="mirai-lab-sweep:faults", storage=storage)
    return sorted(t.user_attrs["run_id"] for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)


def test_frozen_worker_loses_its_claim_and_writes_nothing_when_it_wakes(tmp_path):
    spec = write_spec(tmp_path)
    results = tmp_path / "r"
    journal = tmp_path / "journal.log"
    cmd = sweep_cmd(spec, results, "--storage", f"journal:{journal}", *WORKER_OPTS)
    frozen = subprocess.Popen(cmd, env=WORKER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: checkpointed_runs(results), 120, "the first worker's first checkpoint")
        frozen.send_signal(signal.SIGSTOP)  # mid-run, holding its claim; its heartbeat stops with it
        (held,) = checkpointed_runs(results)
        other = subprocess.run(cmd, env=WORKER_ENV, capture_output=True, text=True, timeout=300)
        assert other.returncode == 0, other.stderr
        # the other worker took the frozen one's run over (after 3 missed beats) and finished every run
        assert json.loads((held / "status.json").read_text())["state"] == "done"
        before = files_of(results)
        frozen.send_signal(signal.SIGCONT)
        _, err = frozen.communicate(timeout=120)
    finally:
        frozen.kill()
    assert frozen.returncode == 0, err
    assert "this worker's claim was given to another worker" in err
    assert files_of(results) == before  # woken, it wrote nothing: no file changed, none added, no temp file
    plan = json.loads(sweep_here(spec, results, "--dry-run").out)
    run_ids = sorted({r["run_id"] for r in plan["runs"]})
    assert complete_trials(journal) == run_ids  # every run trained to completion exactly once
    # the run's files were last written by one claimant: the worker that finished it
    status = json.loads((held / "status.json").read_text())
    assert status["pid"] != frozen.pid
    assert (held / "claim.txt").read_text().strip().endswith(f":{status['pid']}")


def _children(pid: int) -> list[int]:
    """The sweep's worker processes (multiprocessing's spawned children; its resource tracker is not one)."""
    try:
        kids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    workers = []
    for kid in kids:
        try:
            if b"spawn_main" in Path(f"/proc/{kid}/cmdline").read_bytes():
                workers.append(kid)
        except OSError:
            continue
    return workers


def test_sweep_exits_0_when_every_run_finished_after_a_worker_died(tmp_path):
    spec = write_spec(tmp_path)
    results = tmp_path / "r"
    parent = subprocess.Popen(sweep_cmd(spec, results, "--workers", "2", *WORKER_OPTS), env=WORKER_ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(_children(parent.pid)) == 2, 60, "two workers")
        victim = _children(parent.pid)[0]
        wait_for(lambda: checkpointed_runs(results), 120, "a first checkpoint")
        os.kill(victim, signal.SIGKILL)  # no cleanup, no verdict: its claim goes stale
        out, err = parent.communicate(timeout=300)
    finally:
        parent.kill()
    assert parent.returncode == 0, err
    summary = json.loads(out)
    assert (summary["done"], summary["failed"], summary["pending"], summary["running"]) == (3, 0, 0, 0)
    lines = [ln for ln in err.splitlines() if ln.startswith("warning: sweep worker")]
    assert len(lines) == 1 and "was killed by SIGKILL" in lines[0], err
