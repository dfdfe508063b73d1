"""Sweeps and tuning end to end on the smoke budget (real training, real Optuna storages).

The command lines run in this process (tests/cli_helpers.py), the sweep workers in their own.
Most tests start from a copy of the SMALL caches (`warm_results`); the journal test starts
cold, so that two workers building the caches together stays covered."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from cli_helpers import SMALL_ARGS, Ran, run_main

from mirai_lab.experiments.spec import AXES, axis_spec_path, load_plan

pytestmark = pytest.mark.slow
pytest_plugins = ["pg"]  # the throw-away PostgreSQL fixture
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
# half the smoke budget's batch: these sweeps are checked for which runs exist and what the
# report holds, not for trained numbers
FAST = [*SMALL_ARGS, "--set", "train.batch_size=16"]


def cli(*args: str, results: Path) -> Ran:
    ran = run_main([*args, "--results-dir", str(results)], results)
    assert ran.code == 0, ran.err
    return ran


def test_every_builtin_axis_expands_with_a_baseline_row():
    baselines = set()
    for axis in AXES:
        plan = load_plan(axis_spec_path(axis), budget="smoke", seeds=1)
        assert plan.baseline == "baseline" and plan.runs[0].variant == "baseline"
        baselines.add(plan.runs[0].run_id)
    assert len(baselines) == 1  # one shared baseline run for all axes


def test_layout_sweep_smoke_two_seeds_then_nothing_to_do(warm_results):
    root = warm_results
    out = json.loads(cli("sweep", "--axis", "layout", "--budget", "smoke", "--seeds", "2", "--json", *FAST,
                         results=root).out)
    assert out["done"] == 6 and out["failed"] == 0 and out["trained"] == 6
    manifest = json.loads(Path(out["manifest"]).read_text())
    assert [r["variant"] for r in manifest["runs"]] == ["baseline"] * 2 + ["1d"] * 2 + ["2d"] * 2
    for run in manifest["runs"]:
        assert (root / "runs" / run["run_id"] / "curve.csv").is_file()
    again = cli("sweep", "--axis", "layout", "--budget", "smoke", "--seeds", "2", *FAST, results=root)
    assert "nothing to do, 6 runs already done" in again.err
    # a second sweep shares finished runs: the baseline, and k3, which is the layout sweep's 2d run
    k = json.loads(cli("sweep", "--axis", "k", "--budget", "smoke", "--seeds", "2", "--json", *FAST,
                       results=root).out)
    assert k["trained"] == 4 and k["done"] == 8


def test_dry_run_prints_the_run_table_and_writes_nothing(tmp_path):
    proc = cli("sweep", "--axis", "source", "--budget", "smoke", "--seeds", "1", "--dry-run", "--json",
               results=tmp_path)
    rows = json.loads(proc.out)["runs"]
    assert [r["variant"] for r in rows] == ["baseline", "ema", "static", "mtm", "pixel-ae"]
    assert all(r["status"] == "pending" for r in rows)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_two_worker_processes_through_the_journal(tmp_path):
    out = json.loads(cli("sweep", "--axis", "k", "--budget", "smoke", "--seeds", "1", "--workers", "2", "--json",
                         *FAST, results=tmp_path).out)
    assert out["done"] == 4 and out["failed"] == 0
    journal = Path(out["manifest"]).parent / "journal.log"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    trials = optuna.load_study(study_name=f"mirai-lab-sweep:{out['name']}", storage=storage).trials
    done = sorted(t.user_attrs["run_id"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert len(done) == 4 and len(set(done)) == 4


def test_two_workers_through_postgres(warm_results, postgres_url):
    common = ["sweep", "--axis", "k", "--budget", "smoke", "--seeds", "1", "--storage", postgres_url, *FAST,
              "--name", "k", "--results-dir", str(warm_results)]
    procs = [subprocess.Popen([sys.executable, "-m", "mirai_lab", *common, "--threads", "1"], env=ENV,
                              stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=900) == 0, p.stderr.read().decode()
    trials = optuna.load_study(study_name="mirai-lab-sweep:k", storage=postgres_url.replace(
        "postgresql://", "postgresql+psycopg2://")).trials
    done = sorted(t.user_attrs["run_id"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert len(done) == 4 and len(set(done)) == 4


def test_reproduce_table2_smoke(warm_results):
    """The table spec's own final evaluation gives the sample columns (no --set eval.metrics)."""
    root = warm_results
    (root / "table2").mkdir()
    (root / "table2" / "report.md").write_text("the committed report")
    cli("reproduce", "table2", "--budget", "smoke", "--seeds", "2", *FAST, results=root)
    assert [p.name for p in (root / "table2").iterdir()] == ["report.md"]  # another budget: another folder
    assert (root / "table2" / "report.md").read_text() == "the committed report"
    (folder,) = root.glob("table2-smoke-s2-set*")  # 2 seeds are not the spec's own 3: in the name
    for name in ("table.md", "table.csv", "table.tex", "report.md", "COMMAND", "environment.json", "curves.png"):
        assert (folder / name).is_file(), name
    table = pd.read_csv(folder / "table.csv")
    variants = ["baseline", "mirai-i-b1", "mirai-i-b2", "mirai-i-b3", "mirai-e-b1", "mirai-e-b2", "mirai-e-b3",
                "mirai-e-s3-t2"]
    assert list(table["variant"]) == variants
    for col in ("fid_domain_mean", "is_domain_mean", "class_acc_mean", "val_nll_mean", "structure_score_mean"):
        assert table[col].map(math.isfinite).all(), col
    assert table.loc[1:, "delta_fid_domain"].map(math.isfinite).all()
    again = cli("reproduce", "table2", "--budget", "smoke", "--seeds", "2", *FAST, results=root)
    assert "nothing to do" in again.err
