"""Three workers on one sweep through the journal storage, one killed mid-run: each run
is trained to completion exactly once."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import optuna
import pytest
from helpers import SPEC, env, snapshot, sweep_cmd, sweep_here, write_spec

pytestmark = pytest.mark.slow


def test_three_workers_one_killed(tmp_path):
    text = SPEC.replace('mtp = { foresight = { injection = "mtp" } }',
                        'mtp = { foresight = { injection = "mtp" } }\n'
                        'k1 = { foresight = { source = "ema", k = 1 } }\n'
                        'd2 = { foresight = { source = "ema", layout = "1d" } }')
    spec = write_spec(tmp_path, text)
    results = tmp_path / "r"
    journal = results / "sweeps" / "faults" / "journal.log"
    cmd = sweep_cmd(spec, results, "--storage", f"journal:{journal}", "--as-worker")
    extra = env(MIRAI_LAB_HEARTBEAT_S="1", MIRAI_LAB_WORKER_THREADS="1")
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
