"""timing.json: a sweep's wall time in parts that add up to it, from real smoke sweeps."""

from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import run_main, tiny_spec

from mirai_lab.experiments.timing_record import _worker_parts
from mirai_lab.files.atomic import write_json
from mirai_lab.timing import PARTS, breakdown, read_calls


def _sweep(tmp_path: Path, name: str, workers: int) -> dict:
    spec = tmp_path / f"{name}.toml"
    spec.write_text(tiny_spec(name, seeds=2, train="steps = 12, batch_size = 16, eval_every = 6, threads = 1"))
    ran = run_main(["sweep", "--experiment", spec, "--workers", str(workers), "--results-dir", tmp_path / "r"],
                   tmp_path)
    assert ran.code == 0, ran
    calls = read_calls(tmp_path / "r" / "sweeps" / name)
    assert len(calls) == 1
    return calls[0]


def test_the_parts_of_a_sweep_add_up_to_its_wall_time(tmp_path: Path) -> None:
    """Two worker processes: what the measured parts leave unaccounted is under 5% of the wall time."""
    call = _sweep(tmp_path, "timed", workers=2)
    wall, parts = breakdown([call])
    assert call["workers"] == 2 and len(call["rounds"]) == 1
    assert set(parts) <= set(PARTS)
    assert {"train", "val", "final_eval", "start", "claim"} <= set(parts), parts
    assert abs(sum(parts.values()) - wall) <= 0.01 * wall + 0.05  # every second is in one part
    assert parts.get("other", 0.0) <= 0.05 * wall, parts
    rnd = call["rounds"][0]  # each worker's parts fill the round: worker-seconds = workers x round wall
    assert abs(sum(rnd["worker_s"].values()) - 2 * rnd["wall_s"]) <= 0.02 * rnd["wall_s"] + 0.05


def test_a_sweep_in_this_process_is_one_round_of_one_worker(tmp_path: Path) -> None:
    call = _sweep(tmp_path, "here", workers=1)
    wall, parts = breakdown([call])
    assert call["rounds"][0]["workers"] == 1
    assert "start" not in parts and "claim" not in parts and parts["train"] > 0
    assert parts.get("other", 0.0) <= 0.05 * wall, parts
    again = run_main(["sweep", "--experiment", tmp_path / "here.toml", "--results-dir", tmp_path / "r"], tmp_path)
    assert again.code == 0  # nothing left to train: no call is added
    assert len(read_calls(tmp_path / "r" / "sweeps" / "here")) == 1
    report = run_main(["report", "here", "--results-dir", tmp_path / "r"], tmp_path)
    assert report.code == 0, report
    text = (tmp_path / "r" / "reports" / "here" / "report.md").read_text()
    assert " s of wall time in 1 command" in text and "training steps" in text


def test_a_worker_without_a_ledger_counts_its_round_as_unaccounted(tmp_path: Path) -> None:
    assert _worker_parts(tmp_path / "missing.json", 1000.0, 30.0) == {"other": 30.0}
    path = tmp_path / "w.json"
    write_json(path, {"parts": {"train": 20.0, "start": 2.0, "lunch": 9.0}, "spawned_at": 1000.0,
                      "ended_at": 1024.0})
    assert _worker_parts(path, 1000.0, 30.0) == {"train": 20.0, "start": 2.0, "other": 2.0, "idle": 6.0}
    assert json.loads(path.read_text())["parts"]["lunch"] == 9.0  # unknown parts are ignored, not rewritten
