"""SIGKILL a sweep at random moments; after a rerun, everything equals an uninterrupted sweep."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import time

import pytest
from helpers import env, run_sweep, snapshot, sweep_cmd, write_spec

pytestmark = pytest.mark.slow


def test_ten_random_kills_then_rerun_equals_uninterrupted(tmp_path):
    spec = write_spec(tmp_path)
    clean = tmp_path / "clean"
    t = time.perf_counter()
    proc = run_sweep(spec, clean)
    full_time = time.perf_counter() - t
    assert proc.returncode == 0, proc.stderr
    expected = snapshot(clean)

    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copytree(clean / "cache", killed / "cache")  # the caches are not under test; the runs are
    rng = random.Random(0)
    kills = 0
    # each life is short (a few seconds past start-up), so the kills land all over the sweep:
    # in start-up, training, checkpoint and curve writes, evaluation and the final metrics
    per_life = max(3.0, full_time / 6)
    for _ in range(10):
        child = subprocess.Popen(sweep_cmd(spec, killed), env=env(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, per_life))
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            kills += 1
        child.wait()
    assert kills >= 5  # most kills landed mid-sweep
    final = run_sweep(spec, killed)
    assert final.returncode == 0, final.stderr
    assert snapshot(killed) == expected
    # a kill can leave a temp file behind, but only under a hidden temp name that nothing reads
    assert all(p.name.startswith(".") for p in killed.rglob("*.tmp"))
