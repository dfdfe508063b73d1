"""Robustness at neighbouring settings: the settings' exact configs, the summary of each category,
bad --vary input, merging into robust.json, the report's section and figure, and one smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import entries, refused, run_main, tiny_spec
from finished_sweep import write_finished_sweep, write_run
from matplotlib.colors import to_rgba

from mirai_lab.config import RunConfig, build_config, flatten
from mirai_lab.experiments import robust
from mirai_lab.experiments.robust import parse_vary, summarize
from mirai_lab.files.digest import content_hash
from mirai_lab.report.figures import VERDICT_COLOURS, robustness_figure, robustness_points
from mirai_lab.report.write import write_report

# first-look per-seed val_nll: "good" is clearly better, "flat" is unresolved (too noisy)
BASE = {0: 2.00, 1: 2.03, 2: 1.98}
FIRST = {"good": {s: v - 0.10 + 0.002 * s for s, v in BASE.items()},
         "flat": {s: v + 0.05 * (-1) ** s for s, v in BASE.items()}}
EMA = {"foresight.source": "ema", "foresight.k": 3}


def _changes(before: RunConfig, after: RunConfig) -> dict[str, tuple]:
    a, b = flatten(before.to_dict()), flatten(after.to_dict())
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A finished sweep `s` at quick: a baseline, a resolved row (good) and an unresolved one (flat)."""
    def overrides(variant: str) -> dict:
        return {} if variant == "baseline" else {**EMA, "foresight.k": 3 if variant == "good" else 1}

    return write_finished_sweep(tmp_path / "results", {"baseline": BASE, **FIRST}, overrides, "quick")


# ---------------------------------------------------------------- the settings


def test_lr_factors_and_values_change_the_lr_alone():
    cfg = build_config(None, {"data.dataset": "synthetic", **EMA}, "quick")  # lr 2e-3
    settings = parse_vary(["train.lr=0.5x,1.5x", "train.lr=3e-3", "train.lr=0.5x"])
    assert [s.name for s in settings] == ["train.lr=0.5x", "train.lr=1.5x", "train.lr=0.003"]
    assert [_changes(cfg, s.apply(cfg)) for s in settings] == [
        {"train.lr": (0.002, 0.001)}, {"train.lr": (0.002, 0.003)}, {"train.lr": (0.002, 0.003)}]


def test_an_integer_field_is_scaled_to_an_integer():
    cfg = build_config(None, {"data.dataset": "synthetic"}, "quick")
    (steps,) = parse_vary(["train.steps=1.5x"])
    assert _changes(cfg, steps.apply(cfg)) == {"train.steps": (320, 480)}


def test_quick_to_standard_resets_what_quick_set():
    cfg = build_config(None, {"data.dataset": "synthetic", **EMA}, "quick")
    (standard,) = parse_vary(["budget=standard"])
    assert standard.name == "budget=standard" and standard.budget("quick") == "standard"
    assert _changes(cfg, standard.apply(cfg)) == {
        "budget": ("quick", "standard"), "train.steps": (320, 1000), "train.batch_size": (32, 64),
        "train.lr": (0.002, 0.001), "train.lr_schedule": ("constant", "cosine"), "train.warmup_steps": (40, 50),
        "train.eval_every": (80, 200), "train.val_every": (80, 50),
        # quick's dropouts off, back to the schema's default: standard sets none
        "model.token_dropout": (0.0, 0.1), "model.resid_dropout": (0.0, 0.1), "model.ffn_dropout": (0.0, 0.1)}


def test_a_budget_with_another_preset_derives_the_shape_again():
    cfg = build_config(None, {"data.dataset": "synthetic", **EMA, "foresight.projector_dim": 64}, "smoke")
    (quick,) = parse_vary(["budget=quick"])
    new = quick.apply(cfg)
    assert (new.model.preset, new.model.n_layer, new.model.dim, new.model.n_head, new.model.ffn_hidden) == \
        ("cpu-s", 4, 128, 4, 352)
    assert (new.foresight.student_block, new.foresight.teacher_block) == (3, 3)
    assert new.foresight.projector_dim == 64  # set by hand, not derived: kept
    assert (new.train.steps, new.train.lr, new.foresight.encoder_steps, new.eval.n_samples) == (320, 2e-3, 400, 250)


def test_a_field_a_run_never_reads_leaves_that_run_as_it_was():
    base = build_config(None, {"data.dataset": "synthetic"}, "quick")
    (coef,) = parse_vary(["foresight.coef=0.5x"])
    assert coef.apply(base) is base
    ema = build_config(None, {"data.dataset": "synthetic", **EMA}, "quick")
    assert _changes(ema, coef.apply(ema)) == {"foresight.coef": (2.0, 1.0)}


def test_a_setting_name_that_is_no_path_gets_a_safe_slug():
    (setting,) = parse_vary(["foresight.head_coefs=[1.0,2.0,3.0]"])
    assert setting.name == "foresight.head_coefs=[1.0,2.0,3.0]"
    assert setting.slug == f"foresight.head_coefs=_1.0_2.0_3.0_-{content_hash(setting.name, 6)}"


# ---------------------------------------------------------------- the summary


@pytest.mark.parametrize("original, verdicts, summary", [
    ("better", {"a": "better", "b": "better"}, "holds at every setting"),
    ("equivalent", {"a": "equivalent"}, "holds at every setting"),
    ("better", {"a": "better", "b": "unresolved", "c": "better"}, "holds at some (a, c)"),
    ("worse", {"a": "worse", "b": None}, "holds at some (a)"),
    ("better", {"a": "unresolved", "b": "equivalent"}, "holds at no setting"),
    ("equivalent", {"a": "better", "b": "worse"}, "holds at no setting"),  # not opposite: no flip
    ("better", {"a": "better", "b": "worse", "c": "worse"}, "flips at b, c"),
    ("worse", {"a": "better"}, "flips at a"),
    ("unresolved", {"budget=standard": "better"}, "no verdict to hold: unresolved at quick, better at "
                                                   "budget=standard"),
    (None, {"a": "unresolved", "b": None}, "no verdict to hold: no result at quick, unresolved at a, no result at b"),
])
def test_summary(original, verdicts, summary):
    assert summarize(original, verdicts, "quick") == summary


# ---------------------------------------------------------------- the command


def _at_settings(effects: dict[str, float]):
    """A stand-in for training a setting's runs: `good` lands effects[setting sweep] from the baseline
    (+-0.002 by seed), `flat` on it +-0.2."""

    def execute(plan, request, root, *, as_json=False):
        if request.dry_run:
            return {"name": plan.name, "runs": len(plan.runs)}
        shift = effects[plan.name]
        for run in plan.runs:
            base = 2.0 + 0.01 * (run.seed % 7)
            value = {"baseline": base, "good": base + shift + 0.002 * (-1) ** run.seed,
                     "flat": base + 0.2 * (-1) ** run.seed}[run.variant]
            if not (root / "runs" / run.run_id).exists():
                write_run(root, run.run_id, run.cfg.to_dict(), value)
        (root / "sweeps" / plan.name).mkdir(parents=True, exist_ok=True)
        (root / "sweeps" / plan.name / "manifest.json").write_text(json.dumps(
            {"name": plan.name, "budget": plan.budget, "seeds": plan.seeds, "axes": plan.axes,
             "baseline": plan.baseline, "command": request.command,
             "runs": [{"run_id": r.run_id, "variant": r.variant, "seed": r.seed} for r in plan.runs]}))
        return {"name": plan.name}

    return execute


def test_settings_merge_into_robust_json_and_the_report_shows_them(sweep: Path, monkeypatch, tmp_path: Path):
    monkeypatch.setattr(robust, "execute_plan", _at_settings({"s-robust-train.lr=0.5x": -0.1,
                                                              "s-robust-budget=standard": 0.1}))
    first = robust.robust_sweep(sweep, "s", vary=["train.lr=0.5x"], seeds=4, command="mirai-lab robust s")
    assert [s["name"] for s in first["settings"]] == ["train.lr=0.5x"]
    assert [(r["variant"], r["metric"]) for r in first["rows"]] == [("good", "val_nll")]  # resolved rows only
    (setting,) = first["settings"]
    assert (setting["sweep"], setting["budget"], setting["seeds"]) == ("s-robust-train.lr=0.5x", "quick", [0, 1, 2, 3])
    assert setting["rows"]["good"]["val_nll"]["verdict"] == "better" and setting["rows"]["good"]["val_nll"]["n"] == 4
    assert first["rows"][0]["summary"] == "holds at every setting"
    assert first["first_level"] == first["level"] == 0.95
    record = robust.robust_sweep(sweep, "s", vary=["budget=standard"], seeds=3, rows="all", command="c2")
    assert [s["name"] for s in record["settings"]] == ["train.lr=0.5x", "budget=standard"]
    summaries = {r["variant"]: r["summary"] for r in record["rows"] if r["metric"] == "val_nll"}
    assert summaries == {"good": "flips at budget=standard",
                         "flat": "no verdict to hold: unresolved at quick, unresolved at budget=standard"}
    assert json.loads((sweep / "sweeps" / "s" / "robust.json").read_text()) == json.loads(json.dumps(record))
    text = write_report(sweep, ["s"], tmp_path / "out", "cmd").read_text()
    section = text.split("## Robustness at neighbouring settings")[1]
    assert "| row | metric | quick (first look) | `train.lr=0.5x` | `budget=standard` | summary |" in section
    good = next(line for line in section.splitlines() if line.startswith("| good |"))
    assert good.endswith("] worse | flips at budget=standard |") and good.count("] better |") == 2
    assert "| flat | val_nll | " in section and "not run" in section  # flat was not trained at lr 0.5x
    assert "seeds 0..3 (n = 4 paired seeds per row), plain 95% intervals" in section
    assert "![robustness](robustness.png)" in section and (tmp_path / "out" / "robustness.pdf").is_file()


def test_the_figure_draws_each_setting_in_its_verdicts_colour(sweep: Path, monkeypatch):
    monkeypatch.setattr(robust, "execute_plan", _at_settings({"s-robust-train.lr=2x": 0.1}))
    record = robust.robust_sweep(sweep, "s", vary=["train.lr=2x"], seeds=3, command="c")
    points = robustness_points(record)
    assert points[["variant", "x", "setting", "verdict"]].values.tolist() == [
        ["good", 0, "quick", "better"], ["good", 1, "train.lr=2x", "worse"]]
    fig = robustness_figure(points, ["quick", "train.lr=2x"], {"val_nll": 0.01}, 0.95, 0.95)
    (ax,) = fig.axes
    dots = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert [(line.get_xdata()[0], line.get_color()) for line in dots] == [(0, VERDICT_COLOURS["better"]),
                                                                         (1, VERDICT_COLOURS["worse"])]
    assert [to_rgba(c.get_color()[0]) for c in ax.collections if c.get_segments()][:1] == \
        [to_rgba(VERDICT_COLOURS["better"])]  # the first interval bar


def test_dry_run_plans_every_setting_and_writes_nothing(sweep: Path):
    before = entries(sweep)
    out = robust.robust_sweep(sweep, "s", vary=["train.lr=0.5x,1.5x"], seeds=3, dry_run=True, as_json=True,
                              command="c")
    assert [s["name"] for s in out["settings"]] == ["train.lr=0.5x", "train.lr=1.5x"]
    assert [r["variant"] for r in out["settings"][0]["plan"]["runs"]] == ["baseline"] * 3 + ["good"] * 3
    assert entries(sweep) == before


@pytest.mark.parametrize("vary, message", [
    ([], "at least one --vary"),
    (["--vary", "train.lr"], "expected field=value"),
    (["--vary", "train.lr="], "expected field=value"),
    (["--vary", "train.lr=0.5x,,2x"], "an empty value"),
    (["--vary", "nosuch.lr=2"], "unknown config key 'nosuch.lr'"),
    (["--vary", "train.nosuch=2"], "unknown config key 'train.nosuch'"),
    (["--vary", "train.lr=abc"], "expected a finite number"),
    (["--vary", "train.lr=twox"], "expected a factor like 0.5x"),
    (["--vary", "train.lr=-1x"], "expected a finite factor > 0"),
    (["--vary", "train.lr=infx"], "expected a finite factor > 0"),
    (["--vary", "train.lr=-1"], "train.lr=-1.0: expected > 0"),
    (["--vary", "eval.metrics=2x"], "eval.metrics is not a number"),
    (["--vary", "model.preset=huge"], "model.preset='huge'"),
    (["--vary", "budget=huge"], "unknown budget 'huge'"),
    (["--vary", "budget=quick"], "ran at quick already"),
    (["--vary", "train.seed=3"], "train.seed is not varied here"),
    (["--vary", "train.precision=auto"], "decided per sweep"),
    (["--vary", "train.threads=2"], "changes no run"),
    (["--vary", "train.min_lr_ratio=0.5"], "no run of these rows reads train.min_lr_ratio"),
    (["--vary", "train.lr=2x", "--rows", "some"], "--rows 'some'"),
    (["--vary", "train.lr=2x", "--seeds", "2"], "--seeds"),
])
def test_bad_input_is_one_error_line(sweep: Path, vary: list[str], message: str):
    line = refused(["robust", "s", *vary, "--results-dir", sweep], sweep.parent)
    assert message in line, line


def test_no_resolved_row_says_so_and_trains_nothing(sweep: Path):
    path = sweep / "sweeps" / "s" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["runs"] = [r for r in manifest["runs"] if r["variant"] != "good"]
    path.write_text(json.dumps(manifest))
    before = entries(sweep)
    ran = run_main(["robust", "s", "--vary", "train.lr=2x", "--results-dir", sweep], sweep.parent)
    assert ran.code == 0 and "no resolved row in the first look" in ran.err and entries(sweep) == before


# ---------------------------------------------------------------- end to end

SPEC = tiny_spec("rob", seeds=3, samples=8, train="steps = 2, batch_size = 8, eval_every = 2, val_every = 2, "
                 "threads = 1")


@pytest.mark.slow
def test_a_smoke_sweep_at_twice_the_lr(tmp_path: Path):
    (tmp_path / "rob.toml").write_text(SPEC)
    results = tmp_path / "r"
    ran = run_main(["sweep", "--experiment", tmp_path / "rob.toml", "--results-dir", results], tmp_path)
    assert ran.code == 0, ran.err
    ran = run_main(["robust", "rob", "--vary", "train.lr=2x", "--rows", "all", "--seeds", "3", "--results-dir",
                    results], tmp_path)
    assert ran.code == 0, ran.err
    assert "robust rob: ema: val_nll " in ran.err
    record = json.loads((results / "sweeps" / "rob" / "robust.json").read_text())
    (setting,) = record["settings"]
    assert setting["sweep"] == "rob-robust-train.lr=2x" and {r["variant"] for r in record["rows"]} == {"ema"}
    assert setting["rows"]["ema"]["val_nll"]["n"] == 3
    manifest = json.loads((results / "sweeps" / "rob-robust-train.lr=2x" / "manifest.json").read_text())
    assert {r["variant"] for r in manifest["runs"]} == {"baseline", "ema"} and len(manifest["runs"]) == 6
    for run in manifest["runs"]:
        config = json.loads((results / "runs" / run["run_id"] / "config.json").read_text())
        assert config["train"]["lr"] == 2e-4  # twice the schema default, which smoke keeps
    ran = run_main(["report", "rob", "--results-dir", results, "--out", tmp_path / "rep"], tmp_path)
    assert ran.code == 0, ran.err
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "## Robustness at neighbouring settings" in text and "check the plumbing" in text
    assert (tmp_path / "rep" / "robustness.png").is_file()
