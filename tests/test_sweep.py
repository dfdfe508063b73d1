"""Sweeps and tuning end to end on the smoke budget (real training, real Optuna storages)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mirai_lab.experiments.spec import AXES, axis_spec_path, load_plan

pytestmark = pytest.mark.slow
pytest_plugins = ["pg"]  # the throw-away PostgreSQL fixture
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
SMALL = ["--set", "data.dataset=synthetic", "--set", "tokenizer.codebook_size=32", "--set", "eval.n_samples=20",
         "--set", "eval.n_samples_final=20"]


def cli(*args: str, results: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "mirai_lab", *args, "--results-dir", str(results)],
                          capture_output=True, text=True, env=ENV, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_every_builtin_axis_expands_with_a_baseline_row():
    baselines = set()
    for axis in AXES:
        plan = load_plan(axis_spec_path(axis), budget="smoke", seeds=1)
        assert plan.baseline == "baseline" and plan.runs[0].variant == "baseline"
        baselines.add(plan.runs[0].run_id)
    assert len(baselines) == 1  # one shared baseline run for all axes


def test_layout_sweep_smoke_two_seeds_then_nothing_to_do(tmp_path):
    out = json.loads(cli("sweep", "--axis", "layout", "--budget", "smoke", "--seeds", "2", "--json", *SMALL,
                         results=tmp_path).stdout)
    assert out["done"] == 6 and out["failed"] == 0 and out["trained"] == 6
    manifest = json.loads(Path(out["manifest"]).read_text())
    assert [r["variant"] for r in manifest["runs"]] == ["baseline"] * 2 + ["1d"] * 2 + ["2d"] * 2
    for run in manifest["runs"]:
        assert (tmp_path / "runs" / run["run_id"] / "curve.csv").is_file()
    again = cli("sweep", "--axis", "layout", "--budget", "smoke", "--seeds", "2", *SMALL, results=tmp_path)
    assert "nothing to do, 6 runs already done" in again.stderr
    # a second sweep shares finished runs: the baseline, and k3, which is the layout sweep's 2d run
    k = json.loads(cli("sweep", "--axis", "k", "--budget", "smoke", "--seeds", "2", "--json", *SMALL,
                       results=tmp_path).stdout)
    assert k["trained"] == 4 and k["done"] == 8


def test_dry_run_prints_the_run_table_and_writes_nothing(tmp_path):
    proc = cli("sweep", "--axis", "source", "--budget", "smoke", "--seeds", "1", "--dry-run", "--json",
               results=tmp_path)
    rows = json.loads(proc.stdout)["runs"]
    assert [r["variant"] for r in rows] == ["baseline", "ema", "static", "mtm", "pixel-ae"]
    assert all(r["status"] == "pending" for r in rows)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_two_worker_processes_through_the_journal(tmp_path):
    out = json.loads(cli("sweep", "--axis", "k", "--budget", "smoke", "--seeds", "1", "--workers", "2", "--json",
                         *SMALL, results=tmp_path).stdout)
    assert out["done"] == 4 and out["failed"] == 0
    import optuna

    journal = Path(out["manifest"]).parent / "journal.log"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    trials = optuna.load_study(study_name=f"mirai-lab-sweep:{out['name']}", storage=storage).trials
    done = sorted(t.user_attrs["run_id"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert len(done) == 4 and len(set(done)) == 4


def test_two_workers_through_postgres(tmp_path, postgres_url):
    common = ["sweep", "--axis", "k", "--budget", "smoke", "--seeds", "1", "--storage", postgres_url, *SMALL,
              "--name", "k", "--results-dir", str(tmp_path)]
    procs = [subprocess.Popen([sys.executable, "-m", "mirai_lab", *common, "--as-worker"], env=ENV,
                              stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=900) == 0, p.stderr.read().decode()
    import optuna

    trials = optuna.load_study(study_name="mirai-lab-sweep:k", storage=postgres_url.replace(
        "postgresql://", "postgresql+psycopg2://")).trials
    done = sorted(t.user_attrs["run_id"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert len(done) == 4 and len(set(done)) == 4


def test_tune_prunes_and_exports_a_spec_train_accepts(tmp_path):
    out_dir = tmp_path / "tuned"
    proc = cli("tune", "--source", "ema", "--trials", "8", "--budget", "smoke", "--objective", "val_nll",
               "--set", "train.steps=24", "--set", "train.eval_every=4", *SMALL, "--set", "eval.metrics=false",
               "--out", str(out_dir), "--json", results=tmp_path)
    info = json.loads(proc.stdout)
    assert info["trials"] == 8 and info["pruned"] >= 1 and math.isfinite(info["best_value"])
    spec = Path(info["spec"])
    assert spec.is_file() and "coef" in spec.read_text()
    train = cli("train", str(spec), "--json", results=tmp_path)
    assert json.loads(train.stdout)["run_id"]


METRICS = ["--set", "eval.metrics=true"]  # the table specs measure val_nll only; the report's sample columns too


def test_reproduce_table2_smoke(tmp_path):
    (tmp_path / "table2").mkdir()
    (tmp_path / "table2" / "report.md").write_text("the committed report")
    cli("reproduce", "table2", "--budget", "smoke", "--seeds", "2", *SMALL, *METRICS, results=tmp_path)
    assert [p.name for p in (tmp_path / "table2").iterdir()] == ["report.md"]  # another budget: another folder
    assert (tmp_path / "table2" / "report.md").read_text() == "the committed report"
    (folder,) = tmp_path.glob("table2-smoke-set*")  # seeds=2 is the spec's own: not in the name
    for name in ("table.md", "table.csv", "table.tex", "report.md", "COMMAND", "environment.json", "curves.png"):
        assert (folder / name).is_file(), name
    import pandas as pd

    table = pd.read_csv(folder / "table.csv")
    variants = ["baseline", "mirai-i-b1", "mirai-i-b2", "mirai-i-b3", "mirai-e-b1", "mirai-e-b2", "mirai-e-b3",
                "mirai-e-s3-t2"]
    assert list(table["variant"]) == variants
    for col in ("fid_domain_mean", "is_domain_mean", "class_acc_mean", "val_nll_mean", "structure_score_mean"):
        assert table[col].map(math.isfinite).all(), col
    assert table.loc[1:, "delta_fid_domain"].map(math.isfinite).all()
    again = cli("reproduce", "table2", "--budget", "smoke", "--seeds", "2", *SMALL, *METRICS, results=tmp_path)
    assert "nothing to do" in again.stderr
