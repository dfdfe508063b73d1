"""--tracker tensorboard / wandb: the files a run writes, read back with the libraries' own readers."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import refused
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mirai_lab.config import build_config
from mirai_lab.errors import UserError
from mirai_lab.files.atomic import read_json
from mirai_lab.runs import tracking
from mirai_lab.training.run import execute

PER_STEP = ("loss", "train_ntp", "lr", "grad_norm", "steps_per_s", "tokens_per_s")


def curve_values(run: Path) -> dict[tuple[str, int], float]:
    """Every curve.csv value, the final evaluation's point included."""
    with open(run / "curve.csv") as fh:
        return {(r["metric"], int(r["step"])): float(r["value"]) for r in csv.DictReader(fh)}


def train(kind: str, root: Path, overrides: dict, seed: int, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    monkeypatch.setenv(tracking.TRACKER_ENV, kind)
    cfg = build_config(None, {**overrides, "train.seed": seed})
    final, path, skipped = execute(cfg, root, variant="v2d", sweep="sw")
    assert not skipped
    return path, final


def wandb_records(run: Path) -> list[dict]:
    """The records of the run's offline W&B log, through wandb's own reader of its transaction log."""
    (log,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(log)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_tensorboard_events_hold_every_step_the_curve_and_the_final_summary(tmp_path, tiny_overrides, monkeypatch):
    run, final = train("tensorboard", tmp_path, tiny_overrides, 0, monkeypatch)
    events = EventAccumulator(str(run / "tensorboard" / "sw" / "v2d" / "s0"))  # the run's name: sweep/variant/seed
    events.Reload()
    steps = final["steps"]
    for name in PER_STEP:
        assert [e.step for e in events.Scalars(f"train/{name}")] == list(range(1, steps + 1)), name
    assert events.Scalars("train/lr")[0].value == pytest.approx(1e-4)
    assert all(e.value > 0 for e in events.Scalars("train/tokens_per_s"))
    expected = curve_values(run)
    assert max(step for _, step in expected) == steps  # the final point is on the curve
    for (metric, step), value in expected.items():
        logged = {e.step: e.value for e in events.Scalars(f"curve/{metric}")}
        assert logged[step] == pytest.approx(value, rel=1e-6)
    assert not [tag for tag in events.Tags()["scalars"] if tag.startswith("final/")]  # the finals are a summary
    tags = json.loads(events.Tensors("run/text_summary")[0].tensor_proto.string_val[0])
    assert tags == {"run_id": final["run_id"], "name": "sw/v2d/s0", "sweep": "sw", "variant": "v2d", "seed": 0,
                    "budget": ""}
    assert json.loads(events.Tensors("final/text_summary")[0].tensor_proto.string_val[0])["val_nll"] == \
        final["val_nll"]
    # the HParams tab: the run's config as hyperparameters, the final point's metrics
    hparams = [e for e in (run / "tensorboard" / "sw" / "v2d" / "s0").iterdir() if e.name.startswith("events")]
    raw = b"".join(p.read_bytes() for p in hparams)
    assert b"_hparams_/session_start_info" in raw and b"train.lr" in raw and b"curve/val_nll" in raw


@pytest.mark.slow
def test_wandb_offline_log_holds_every_step_the_curve_and_the_summary(tmp_path, tiny_overrides, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    run, final = train("wandb", tmp_path, tiny_overrides, 1, monkeypatch)
    records = wandb_records(run)
    history = {r["history"]["step"]["num"]: r["history"]["item"] for r in records if r["type"] == "history"}
    steps = final["steps"]
    for name in PER_STEP:
        assert all(f"train/{name}" in history[s] for s in range(1, steps + 1)), name
    for (metric, step), value in curve_values(run).items():
        assert history[step][f"curve/{metric}"] == pytest.approx(value, rel=1e-6)
    (header,) = [r["run"] for r in records if r["type"] == "run"]
    assert header["display_name"] == "sw/v2d/s1" and header["run_group"] == "sw"
    assert header["tags"] == [final["run_id"], "v2d", "s1"]
    config = header["config"]["update"]
    assert config["mirai_lab"]["run_id"] == final["run_id"] and config["train"]["seed"] == 1
    summary: dict = {}
    for r in records:
        if r["type"] == "summary":
            summary.update(r["summary"]["update"])
    assert summary["val_nll"] == pytest.approx(final["val_nll"]) and summary["params"] == final["params"]
    assert not any(key.startswith("final/") for item in history.values() for key in item)
    assert read_json(run / "final.json")["val_nll"] == final["val_nll"]


@pytest.mark.slow
def test_a_done_run_logs_its_stored_curve_once(tmp_path, tiny_overrides, monkeypatch, capsys):
    cfg = build_config(None, {**tiny_overrides, "train.seed": 2})
    _, run, _ = execute(cfg, tmp_path)  # no tracker
    monkeypatch.setenv(tracking.TRACKER_ENV, "tensorboard")
    capsys.readouterr()
    assert execute(cfg, tmp_path)[2]
    err = capsys.readouterr().err
    assert "was already done: its stored curve and final metrics logged to tensorboard" in err
    (folder,) = [p.parent for p in (run / "tensorboard").rglob("events*")]
    events = EventAccumulator(str(folder))
    events.Reload()
    assert {(f"curve/{m}", s) for m, s in curve_values(run)} == \
        {(tag, e.step) for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    assert execute(cfg, tmp_path)[2]
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "already done and in tensorboard" in lines[0] and "nothing logged again" in lines[0]


@pytest.mark.parametrize("kind", ["tensorboard", "wandb"])
def test_a_missing_tracker_package_is_one_error_line(tmp_path, monkeypatch, kind):
    monkeypatch.setitem(sys.modules, kind, None)  # as if the `trackers` extra were not installed
    line = refused(["train", "--tracker", kind, "--results-dir", str(tmp_path / "results")], tmp_path)
    assert line == f"error: --tracker {kind}: the {kind} package is not installed: pip install 'mirai-lab[trackers]'"


def test_unknown_tracker_or_wandb_mode_is_one_line(monkeypatch):
    with pytest.raises(UserError, match=r"--tracker 'mlflow': expected one of none, tensorboard, wandb"):
        tracking.select("mlflow")
    monkeypatch.setenv(tracking.TRACKER_ENV, "tb")
    with pytest.raises(UserError, match=r"\$MIRAI_LAB_TRACKER='tb': expected one of none, tensorboard, wandb"):
        tracking.selected()
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(UserError, match=r"\$WANDB_MODE='sometimes': expected one of offline, online, disabled"):
        tracking.select("wandb")
