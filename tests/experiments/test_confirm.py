"""Confirmation on fresh seeds: disjoint seeds, a separate look, and the three outcomes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from finished_sweep import write_finished_sweep, write_run

from mirai_lab.errors import UserError
from mirai_lab.experiments import confirm
from mirai_lab.experiments.spec import CONFIRMATION_SEEDS, plan_from_spec
from mirai_lab.report.write import write_report

# first-look per-seed val_nll: "good" is clearly better, "flat" equals the baseline within 0.001
BASE = {0: 2.00, 1: 2.03, 2: 1.98}
FIRST = {"good": {s: v - 0.10 + 0.002 * s for s, v in BASE.items()},
         "flat": {s: v + 0.0005 * (-1) ** s for s, v in BASE.items()}}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    def overrides(variant: str) -> dict:
        k = 3 if variant == "good" else 1
        return {} if variant == "baseline" else {"foresight.source": "ema", "foresight.k": k}

    return write_finished_sweep(tmp_path / "results", {"baseline": BASE, **FIRST}, overrides)


def _fresh(shift: float, spread: float):
    """A stand-in for training the fresh block: 'good' lands `shift` from the baseline, +-spread by seed."""

    def execute(plan, request, root, *, as_json=False):
        assert request.workers == 1
        for run in plan.runs:
            base = 2.0 + 0.01 * (run.seed % 7)
            value = base if run.variant == "baseline" else base + shift + spread * (-1) ** run.seed
            write_run(root, run.run_id, run.cfg.to_dict(), value)
        (root / "sweeps" / plan.name).mkdir(parents=True, exist_ok=True)
        (root / "sweeps" / plan.name / "manifest.json").write_text(json.dumps(
            {"name": plan.name, "budget": plan.budget, "seeds": plan.seeds, "axes": plan.axes,
             "baseline": plan.baseline, "command": request.command,
             "runs": [{"run_id": r.run_id, "variant": r.variant, "seed": r.seed} for r in plan.runs]}))
        return {"name": plan.name}

    return execute


@pytest.mark.parametrize("shift, spread, outcome", [(-0.1, 0.002, "replicated"), (0.1, 0.002, "not replicated"),
                                                    (-0.01, 0.2, "inconclusive")])
def test_a_resolved_row_is_trained_again_on_fresh_seeds(sweep: Path, monkeypatch, shift, spread, outcome):
    monkeypatch.setattr(confirm, "execute_plan", _fresh(shift, spread))
    record = confirm.confirm_sweep(sweep, "s", seeds=4, workers=1, command="mirai-lab confirm s")
    assert record["seeds"] == [CONFIRMATION_SEEDS + i for i in range(4)]
    assert set(record["seeds"]).isdisjoint({0, 1, 2})
    row = record["rows"]["good"]["val_nll"]
    assert row["first"]["verdict"] == "better" and row["first"]["n"] == 3
    assert row["fresh"]["n"] == 4 and row["outcome"] == outcome
    assert record["level"] == 0.95  # a plain interval of its own: the fresh block is a separate look
    trained = {r["variant"] for r in json.loads((sweep / "sweeps" / "s-confirm" / "manifest.json").read_text())["runs"]}
    assert trained == {"baseline", "good"} | ({"flat"} if "flat" in record["rows"] else set())
    assert json.loads((sweep / "sweeps" / "s" / "confirm.json").read_text())["rows"] == record["rows"]


def test_the_report_reads_the_confirmation(sweep: Path, monkeypatch, tmp_path: Path):
    monkeypatch.setattr(confirm, "execute_plan", _fresh(-0.1, 0.002))
    confirm.confirm_sweep(sweep, "s", seeds=3, workers=1, command="mirai-lab confirm s")
    text = write_report(sweep, ["s"], tmp_path / "out", "cmd").read_text()
    assert "## Confirmation on fresh seeds" in text and "**good** val_nll: first -0.098 [" in text
    assert "**replicated**" in text


def test_the_fresh_plan_keeps_every_setting_but_the_seed(sweep: Path):
    manifest = json.loads((sweep / "sweeps" / "s" / "manifest.json").read_text())
    plan = confirm.confirmation_plan(manifest, ["good"], [CONFIRMATION_SEEDS], "s-confirm")
    first = next(r for r in manifest["runs"] if r["variant"] == "good")
    fresh = next(r for r in plan.runs if r.variant == "good")
    assert {**first["config"], "train": {**first["config"]["train"], "seed": CONFIRMATION_SEEDS}} == fresh.cfg.to_dict()
    assert fresh.run_id != first["run_id"]


def test_exploration_seeds_stay_below_the_confirmation_block():
    spec = {"experiment": {"seeds": [0, CONFIRMATION_SEEDS]}, "axes": {"v": {"a": {}}}}
    with pytest.raises(UserError, match="kept for confirmations on fresh seeds"):
        plan_from_spec(spec, "x.toml")
    with pytest.raises(UserError, match="expected 3..1000"):
        confirm.confirm_sweep(Path("."), "s", seeds=2, workers=1, command="c")


def test_confirm_on_a_missing_sweep_is_one_error_line(tmp_path: Path):
    from cli_helpers import refused

    line = refused(["confirm", "nosuch", "--results-dir", str(tmp_path / "r")], tmp_path)
    assert "no sweep 'nosuch'" in line


def _static_teacher(sweep: Path, teacher: str) -> dict:
    """The manifest of `sweep` with 'good' reading the checkpoint of `teacher`'s run of its seed."""
    path = sweep / "sweeps" / "s" / "manifest.json"
    manifest = json.loads(path.read_text())
    ids = {(r["variant"], r["seed"]): r["run_id"] for r in manifest["runs"]}
    for run in manifest["runs"]:
        if run["variant"] == "good":
            run["depends_on"] = ids[teacher, run["seed"]]
            run["config"]["foresight"].update(source="static", static_checkpoint=run["depends_on"])
    path.write_text(json.dumps(manifest))
    return manifest


def test_a_static_teacher_row_reads_the_baseline_of_its_own_seed_and_setting(sweep: Path):
    manifest = _static_teacher(sweep, "baseline")
    seeds = [CONFIRMATION_SEEDS, CONFIRMATION_SEEDS + 1]
    recorded_lr = next(r for r in manifest["runs"] if r["variant"] == "baseline")["config"]["train"]["lr"]

    def faster(cfg):  # a robustness setting: lr x1.5 on every run
        return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=cfg.train.lr * 1.5))

    for change in (None, faster):
        plan = confirm.confirmation_plan(manifest, ["good"], seeds, "x", change=change)
        assert [(r.variant, r.seed) for r in plan.runs] == [(v, s) for v in ("baseline", "good") for s in seeds]
        base = {r.seed: r for r in plan.runs if r.variant == "baseline"}
        for run in (r for r in plan.runs if r.variant == "good"):
            assert run.depends_on == base[run.seed].run_id == run.cfg.foresight.static_checkpoint
            assert run.cfg.train.lr == base[run.seed].cfg.train.lr
        assert len({r.run_id for r in plan.runs}) == 4
        if change is not None:  # the teacher is the baseline trained at the new setting
            assert base[seeds[0]].cfg.train.lr == pytest.approx(1.5 * recorded_lr)


def test_a_static_teacher_outside_the_confirmed_rows_is_refused(sweep: Path):
    manifest = _static_teacher(sweep, "flat")
    with pytest.raises(UserError, match="reads the checkpoint of 'flat'"):
        confirm.confirmation_plan(manifest, ["good"], [CONFIRMATION_SEEDS], "x")
    assert [r.variant for r in confirm.confirmation_plan(manifest, ["flat", "good"], [7], "x").runs] == \
        ["baseline", "flat", "good"]
