"""Several processes on one sweep's results: each run is trained to completion exactly once.

Three workers through the journal storage, one killed mid-run; and two plain sweeps (no
storage, one worker each) started on the same folder, which share the runs through the
per-run file lock (runs/lock.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import optuna
import pytest
from helpers import SPEC, WORKER_OPTS, env, snapshot, sweep_cmd, sweep_here, write_spec

pytestmark = pytest.mark.slow


def test_three_workers_one_killed(tmp_path):
    text = SPEC.replace('mtp = { foresight = { injection = "mtp" } }',
                        'mtp = { foresight = { injection = "mtp" } }\n'
                        'k1 = { foresight = { source = "ema", k = 1 } }\n'
                        'd2 = { foresight = { source = "ema", layout = "1d" } }')
    spec = write_spec(tmp_path, text)
    results = tmp_path / "r"
    journal = results / "sweeps" / "faults" / "journal.log"
    cmd = sweep_cmd(spec, results, "--storage", f"journal:{journal}", *WORKER_OPTS)
    extra = env()
    # a valid plan first (in-process: it writes nothing), then three claiming workers
    assert sweep_here(spec, results, "--dry-run").code == 0
    workers = [subprocess.Popen(cmd, env=extra, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(3)]
    victim = workers[0]
    deadline = time.time() + 120
    while time.time() < deadline:  # kill the first worker once it holds a run with a checkpoint
        if any((p / "checkpoint.pt").exists() for p in (results / "runs").glob("*")) if (results / "runs").exists() \
                else False:
            break
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    for w in workers[1:]:
        w.wait(timeout=600)
        assert w.returncode == 0, w.stderr.read().decode()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="mirai-lab-sweep:faults", storage=storage)
    complete = [t.user_attrs["run_id"] for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    plan = json.loads(sweep_here(spec, results, "--dry-run").out)
    run_ids = sorted({r["run_id"] for r in plan["runs"]})
    assert sorted(complete) == run_ids  # every run completed exactly once
    assert all(r["status"] == "done" for r in plan["runs"])
    snap = snapshot(results)
    assert all(v == "done" for k, v in snap.items() if k.endswith("/status"))


# Loaded by every Python process of the test below (PYTHONPATH), before `-m mirai_lab` runs: it
# records each Trainer.run (the one place a run is trained or evaluated again) as a line
# "<role> <run_id>", and holds the first sweep's first run until the second sweep has started a
# run of its own, so that the two sweeps surely overlap on the first run, whatever the start-up
# times of the two interpreters.
TRAIN_HOOK = r'''
import os, time
from pathlib import Path

if os.environ.get("HOOK_LOG"):
    from mirai_lab.training import trainer

    _run = trainer.Trainer.run
    log, go, role = Path(os.environ["HOOK_LOG"]), Path(os.environ["HOOK_GO"]), os.environ["HOOK_ROLE"]

    def run(self, *args, **kwargs):
        with open(log, "a") as fh:
            fh.write(f"{role} {self.run_id}\n")
        if role == "second":
            go.touch()
        deadline = time.time() + 240
        while not go.exists():
            if time.time() > deadline:
                raise RuntimeError("the second sweep never trained a run: it waited for the held one")
            time.sleep(0.1)
        return _run(self, *args, **kwargs)

    trainer.Trainer.run = run
'''


def test_two_sweeps_on_one_folder_train_each_run_once(tmp_path):
    """Two `mirai-lab sweep` processes, no storage, one worker each, on the same results folder: the
    second finds the first run held, trains the others first, then reuses the first one's run."""
    spec = write_spec(tmp_path)
    results = tmp_path / "r"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(TRAIN_HOOK)
    log, go = tmp_path / "trained.log", tmp_path / "go"

    def start(role: str) -> subprocess.Popen:
        extra = env(HOOK_LOG=str(log), HOOK_GO=str(go), HOOK_ROLE=role,
                    PYTHONPATH=os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]))
        return subprocess.Popen(sweep_cmd(spec, results), env=extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    first = start("first")
    deadline = time.time() + 300
    while not (log.exists() and log.read_text()) and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)  # the first sweep holds its first run
    second = start("second")
    outs = [p.communicate(timeout=900) for p in (first, second)]
    for proc, (_, err) in zip((first, second), outs, strict=True):
        assert proc.returncode == 0, err
    plan = json.loads(sweep_here(spec, results, "--dry-run").out)
    run_ids = [r["run_id"] for r in plan["runs"]]
    trained = [line.split() for line in log.read_text().splitlines()]
    assert trained[0] == ["first", run_ids[0]]
    assert sorted(run_id for _, run_id in trained) == sorted(run_ids)  # each run trained exactly once
    assert {role for role, _ in trained} == {"first", "second"}  # by both sweeps together
    err = outs[1][1]
    assert f"run {run_ids[0]} is being trained by another process; training the other runs first" in err
    assert all(r["status"] == "done" for r in plan["runs"])
    assert json.loads(outs[1][0])["done"] == len(run_ids)
    assert not (results / "locks").exists()
