"""--tracker tensorboard / wandb: the files a run writes, read back with the libraries' own readers."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mirai_lab.config import build_config
from mirai_lab.errors import UserError
from mirai_lab.files.atomic import read_json
from mirai_lab.runs import tracking
from mirai_lab.training.run import execute


def curve_values(run: Path) -> dict[tuple[str, int], float]:
    """curve.csv before the last step (the final evaluation replaces that point; it goes to final/)."""
    with open(run / "curve.csv") as fh:
        rows = list(csv.DictReader(fh))
    last = max(int(r["step"]) for r in rows)
    return {(r["metric"], int(r["step"])): float(r["value"]) for r in rows if int(r["step"]) < last}


def train(kind: str, root: Path, overrides: dict, seed: int, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    monkeypatch.setenv(tracking.TRACKER_ENV, kind)
    cfg = build_config(None, {**overrides, "train.seed": seed})
    final, path, skipped = execute(cfg, root, variant="v2d")
    assert not skipped
    return path, final


@pytest.mark.slow
def test_tensorboard_events_hold_the_curve_and_the_final_metrics(tmp_path, tiny_overrides, monkeypatch):
    run, final = train("tensorboard", tmp_path, tiny_overrides, 0, monkeypatch)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    expected = curve_values(run)
    assert expected
    for (metric, step), value in expected.items():
        logged = {e.step: e.value for e in events.Scalars(f"curve/{metric}")}
        assert logged[step] == pytest.approx(value, rel=1e-6)
    assert events.Scalars("final/val_nll")[-1].value == pytest.approx(final["val_nll"], rel=1e-6)
    tags = json.loads(events.Tensors("run/text_summary")[0].tensor_proto.string_val[0])
    assert tags == {"run_id": final["run_id"], "variant": "v2d", "seed": 0, "budget": ""}


@pytest.mark.slow
def test_wandb_offline_log_holds_the_curve_and_the_final_metrics(tmp_path, tiny_overrides, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run, final = train("wandb", tmp_path, tiny_overrides, 1, monkeypatch)
    (log,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(log)], capture_output=True, text=True,
                         timeout=120, check=True).stdout  # wandb's own reader of its transaction log
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    history = {r["history"]["step"]["num"]: r["history"]["item"] for r in records if r["type"] == "history"}
    for (metric, step), value in curve_values(run).items():
        assert history[step][f"curve/{metric}"] == pytest.approx(value, rel=1e-6)
    assert history[final["steps"]]["final/val_nll"] == pytest.approx(final["val_nll"], rel=1e-6)
    (header,) = [r["run"] for r in records if r["type"] == "run"]
    assert header["config"]["update"]["mirai_lab"] == {"run_id": final["run_id"], "variant": "v2d", "seed": 1,
                                                        "budget": ""}
    assert header["tags"] == ["v2d", "seed1"] and header["display_name"] == final["run_id"]
    assert read_json(run / "final.json")["val_nll"] == final["val_nll"]


def test_unknown_tracker_is_one_line(monkeypatch):
    with pytest.raises(UserError, match=r"--tracker 'mlflow': expected one of none, tensorboard, wandb"):
        tracking.select("mlflow")
    monkeypatch.setenv(tracking.TRACKER_ENV, "tb")
    with pytest.raises(UserError, match=r"\$MIRAI_LAB_TRACKER='tb': expected one of none, tensorboard, wandb"):
        tracking.selected()
