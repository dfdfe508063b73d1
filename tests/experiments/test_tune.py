"""`mirai-lab tune`: a paired objective, an anchored study, rescoring, confirmation on fresh seeds and an
exported experiment spec.

One study runs end to end on the smoke budget (the `tuned` fixture, shared by the tests that read
it); the objective's arithmetic and its pruning positions are checked with a stand-in for training."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import optuna
import pytest
from cli_helpers import SMALL_ARGS, refused, run_main
from conftest import TINY

from mirai_lab.analysis.stats import paired_difference
from mirai_lab.config import build_config, read_toml
from mirai_lab.experiments import tune, tune_study
from mirai_lab.experiments.spec import CONFIRMATION_SEEDS, plan_from_spec
from mirai_lab.experiments.tune import (
    COEF_RANGE,
    PairedObjective,
    TuneOptions,
    baseline_overrides,
    default_params,
    make_pruner,
    open_study,
    pruning_point,
    suggest,
    trial_overrides,
)
from mirai_lab.experiments.tune_blocks import BASELINE, block_plan, paired_mean
from mirai_lab.experiments.tune_export import export
from mirai_lab.foresight.fit import configure
from mirai_lab.results_dir import run_dir
from mirai_lab.runs.state import RunState, run_state
from mirai_lab.training.run import execute

# a smoke study of 2 trials x 2 seeds, 2 rescored on 3 more seeds, confirmed on 3 fresh seeds; the
# runs are half the smoke length on half its batch, one thread each
STUDY = ["tune", "--budget", "smoke", "--objective", "val_nll", "--trials", "2", "--seeds", "2", "--rescore", "2",
         "--confirm-seeds", "3", *SMALL_ARGS, "--set", "eval.metrics=false", "--set", "train.threads=1",
         "--set", "train.steps=12", "--set", "train.batch_size=16", "--set", "train.eval_every=6"]


class Tuned(NamedTuple):
    root: Path
    info: dict[str, Any]


def _final(root: Path, run_id: str) -> float:
    return json.loads((run_dir(root, run_id) / "final.json").read_text())["val_nll"]


def _manifest_values(root: Path, sweep: str) -> dict[str, dict[int, float]]:
    """variant -> {seed: final val_nll} of a sweep's runs, read from their final.json."""
    out: dict[str, dict[int, float]] = {}
    for run in json.loads((root / "sweeps" / sweep / "manifest.json").read_text())["runs"]:
        out.setdefault(run["variant"], {})[run["seed"]] = _final(root, run["run_id"])
    return out


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory, small_cache: Path) -> Tuned:
    root = tmp_path_factory.mktemp("tune")
    shutil.copytree(small_cache, root / "cache")
    ran = run_main([*STUDY, "--json", "--results-dir", str(root)], root)
    assert ran.code == 0, ran.err
    return Tuned(root, json.loads(ran.out))


# ---------------------------------------------------------------- the study end to end (smoke)


@pytest.mark.slow
def test_each_trial_scores_its_paired_mean_difference_to_the_baseline(tuned):
    root, info = tuned
    base = _manifest_values(root, f"{info['study']}-baseline")[BASELINE]
    assert sorted(base) == [0, 1] and info["baseline"] == {str(s): v for s, v in base.items()}
    for trial in info["trials"]:
        assert trial["state"] == "complete"
        t0, t1 = (_final(root, run_id) for run_id in trial["run_ids"])
        assert trial["value"] == pytest.approx(((t0 - base[0]) + (t1 - base[1])) / 2, rel=1e-12, abs=1e-15)
        assert trial["differences"] == pytest.approx({"0": t0 - base[0], "1": t1 - base[1]}, rel=1e-12)


@pytest.mark.slow
def test_the_first_trial_is_the_default_coefficient(tuned):
    root, info = tuned
    first = info["trials"][0]
    assert first["number"] == 0 and first["params"] == {"coef": 2.0} == info["default_params"]
    for run_id in first["run_ids"]:
        config = json.loads((run_dir(root, run_id) / "config.json").read_text())
        assert config["foresight"]["coef"] == 2.0 and config["foresight"]["source"] == "ema"


@pytest.mark.slow
def test_the_winner_is_the_best_rescored_trial_on_the_pooled_seeds(tuned):
    root, info = tuned
    values = _manifest_values(root, info["rescore"]["sweep"])
    assert info["rescore"]["seeds"] == [0, 1, 2, 3, 4] and sorted(info["rescore"]["trials"]) == [0, 1]
    pooled = {n: sum(values[f"trial-{n}"][s] - values[BASELINE][s] for s in range(5)) / 5 for n in (0, 1)}
    assert {int(n): v for n, v in info["rescore"]["pooled"].items()} == pytest.approx(pooled, rel=1e-9)
    assert info["winner"]["trial"] == min(pooled, key=pooled.get)


@pytest.mark.slow
def test_the_winner_is_confirmed_on_fresh_seeds_against_the_default_and_the_baseline(tuned):
    root, info = tuned
    conf = info["confirmation"]
    fresh = _manifest_values(root, conf["sweep"])
    assert conf["seeds"] == [CONFIRMATION_SEEDS + i for i in range(3)]
    assert all(sorted(seeds) == conf["seeds"] for seeds in fresh.values())
    number = r"[+-]\d[\d.e+-]*"
    verdict = r"(better|worse|equivalent|unresolved)"
    if conf["default_is_winner"]:
        assert sorted(fresh) == ["baseline", "default"] and conf["vs_default"] is None
        expected = paired_difference(fresh["default"], fresh["baseline"])
        assert conf["lines"][0].startswith(f"the winner (trial {info['winner']['trial']}) is the default coef 2.0")
        assert re.fullmatch(rf"default coef 2\.0 vs baseline: Δ val_nll {number} \[{number}, {number}\], n=3, "
                            rf"{verdict}", conf["lines"][1]), conf["lines"]
    else:
        assert sorted(fresh) == ["baseline", "default", "tuned"]
        vs_default = paired_difference(fresh["tuned"], fresh["default"])
        assert (conf["vs_default"]["mean"], conf["vs_default"]["lo"]) == pytest.approx((vs_default.mean, vs_default.lo))
        expected = paired_difference(fresh["tuned"], fresh["baseline"])
        coef = f"{info['winner']['params']['coef']:.4g}"
        for line, reference in zip(conf["lines"], ("default 2.0", "baseline"), strict=True):
            assert re.fullmatch(rf"tuned coef {re.escape(coef)} vs {reference}: Δ val_nll {number} \[{number}, "
                                rf"{number}\], n=3, {verdict}", line), line
    assert conf["vs_baseline"]["n"] == 3
    assert (conf["vs_baseline"]["mean"], conf["vs_baseline"]["hi"]) == pytest.approx((expected.mean, expected.hi))


@pytest.mark.slow
def test_the_exported_spec_is_a_sweep_of_the_study_runs(tuned):
    root, info = tuned
    spec = Path(info["spec"])
    assert spec.parent == root / "tuned" / info["study"] and (spec.parent / "tune.json").is_file()
    table = read_toml(spec)
    assert table["experiment"]["seeds"] == 2 and table["experiment"]["baseline"] == "baseline"
    assert table["axes"]["variant"]["default"] == {"foresight": {"coef": 2.0}}
    dry = run_main(["sweep", "--experiment", str(spec), "--dry-run", "--json", "--results-dir", str(root)], root)
    assert dry.code == 0, dry.err
    rows = json.loads(dry.out)["runs"]
    variants = ["baseline", "default"] + ([] if info["confirmation"]["default_is_winner"] else ["tuned"])
    assert [r["variant"] for r in rows] == [v for v in variants for _ in range(2)]
    assert {r["status"] for r in rows} == {"done"}  # the study's own runs: the spec configures them exactly
    swept = run_main(["sweep", "--experiment", str(spec), "--json", "--results-dir", str(root)], root)
    assert swept.code == 0, swept.err
    assert json.loads(swept.out)["trained"] == 0


@pytest.mark.slow
def test_the_study_records_its_settings_for_the_dashboard(tuned):
    root, info = tuned
    study = optuna.load_study(study_name=info["study"], storage=f"sqlite:///{root / 'studies' / info['study']}.db")
    attrs = study.user_attrs
    assert attrs["budget"] == "smoke" and attrs["source"] == "ema" and attrs["metric"] == "val_nll"
    assert attrs["seeds"] == [0, 1] and "paired to the baseline" in attrs["objective"]
    assert attrs["rescore"] == 2 and attrs["rescore_seeds"] == [2, 3, 4]
    assert attrs["confirm_seeds"] == 3 and attrs["confirmation_seeds_from"] == CONFIRMATION_SEEDS
    assert attrs["confirmation"]["vs_baseline"] == info["confirmation"]["vs_baseline"]
    assert attrs["winner"]["trial"] == info["winner"]["trial"]


@pytest.mark.slow
def test_a_study_reopened_with_other_settings_is_refused(tuned):
    root, info = tuned
    line = refused([*STUDY, "--seeds", "3", "--study", info["study"], "--results-dir", str(root)], root)
    assert "other settings" in line and "seeds" in line


# ---------------------------------------------------------------- refusals and the dry run (no training)


def test_mtp_is_refused_as_a_source(tmp_path):
    line = refused(["tune", "--source", "mtp", "--budget", "smoke", "--results-dir", str(tmp_path / "r")], tmp_path)
    assert "injection level" in line


@pytest.mark.parametrize("extra", [["--set", "foresight.coef=1.0"], ["--set", "train.seed=3"],
                                   ["--search-warmup", "--set", "foresight.warmup_frac=0.1"],
                                   ["--set", "foresight.source=bidirectional"]])
def test_a_set_value_the_study_sets_itself_is_refused(tmp_path, extra):
    line = refused(["tune", "--budget", "smoke", "--objective", "val_nll", *extra, "--results-dir",
                    str(tmp_path / "r")], tmp_path)
    assert "the study sets it" in line


def test_a_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    ran = run_main([*STUDY, "--dry-run", "--json", "--results-dir", str(tmp_path / "r")], tmp_path)
    assert ran.code == 0, ran.err
    assert not any(tmp_path.iterdir())
    out = json.loads(ran.out)
    assert out["runs_at_most"] == {"baseline": 2, "trials": 4, "rescore": 9, "confirmation": 9}
    assert out["default_params"] == {"coef": 2.0} and out["settings"]["seeds"] == [0, 1]
    assert out["sweeps"] == {b: f"{out['study']}-{b}" for b in ("baseline", "rescore", "fresh")}
    shown = run_main([*STUDY, "--dry-run", "--results-dir", str(tmp_path / "r")], tmp_path)
    assert shown.code == 0 and "confirmation: baseline, default coef 2.0 and the winner on fresh seeds" in shown.err
    assert not any(tmp_path.iterdir())


def test_the_default_objective_is_val_nll_and_fid_domain_names_its_own_study(tmp_path):
    plain = run_main(["tune", "--budget", "quick", "--dry-run", "--json", "--results-dir", str(tmp_path / "r")],
                     tmp_path)
    fid = run_main(["tune", "--budget", "quick", "--objective", "fid_domain", "--dry-run", "--json",
                    "--results-dir", str(tmp_path / "r")], tmp_path)
    assert plain.code == 0 and fid.code == 0, plain.err + fid.err
    plain, fid = json.loads(plain.out), json.loads(fid.out)
    assert (plain["study"], plain["settings"]["metric"]) == ("tune-ema-quick", "val_nll")
    assert (fid["study"], fid["settings"]["metric"]) == ("tune-ema-quick-fid_domain", "fid_domain")
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- the objective, with a stand-in for training

BASE_CURVE = {0: {6: 3.5, 12: 3.0}, 1: {6: 3.6, 12: 3.1}}  # the baseline's val_nll per seed and step
EFFECT = {2.0: -0.1, 1.0: -0.05, 0.1: 0.2}  # coef -> its effect on seed 0 (seed 1: three times as large)


class StandIn:
    """Trains nothing: val_nll = the baseline's + the coefficient's effect, at steps 6 and 12 of 12."""

    def __init__(self, cfg: Any, root: Path, progress: Any) -> None:
        self.cfg, self.progress = cfg, progress

    def run(self) -> dict[str, float]:
        seed = self.cfg.train.seed
        effect = EFFECT[self.cfg.foresight.coef] * (1 + 2 * seed)
        for step in (6, 12):
            self.progress(step, 12, {"val_nll": BASE_CURVE[seed][step] + effect})
        return {"val_nll": BASE_CURVE[seed][12] + effect}


def test_pruning_point_averages_the_finished_seeds_with_the_running_one():
    assert pruning_point(0, 12, 6, [], -0.25) == (6, -0.25)
    assert pruning_point(1, 12, 6, [-0.5], -0.25) == (19, -0.375)
    assert pruning_point(2, 12, 12, [-0.5, 0.25], 1.0) == (38, 0.25)


def test_the_objective_is_paired_and_the_pruner_compares_the_same_seeds_and_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(tune, "Trainer", StandIn)
    opts = TuneOptions(source="ema", trials=3, budget="smoke", objective="val_nll", study="s", seeds=2,
                       base={"data.dataset": "synthetic"})
    baseline = {s: {"val_nll": curve[12]} for s, curve in BASE_CURVE.items()}
    study = optuna.create_study(pruner=make_pruner("median"))
    for coef in EFFECT:
        study.enqueue_trial({"coef": coef})
    study.optimize(PairedObjective(opts, tmp_path, baseline, BASE_CURVE, n_layer=4), n_trials=3)
    first, second, bad = study.trials
    assert first.value == pytest.approx((-0.1 - 0.3) / 2) and second.value == pytest.approx((-0.05 - 0.15) / 2)
    assert first.intermediate_values == pytest.approx({6: -0.1, 12: -0.1, 19: -0.2, 25: -0.2})
    # the worst coefficient is stopped at its first point, worse than the others' median there
    assert bad.state is optuna.trial.TrialState.PRUNED and bad.intermediate_values == pytest.approx({6: 0.2})
    assert run_state(run_dir(tmp_path, bad.user_attrs["run_ids"][0])) is RunState.PRUNED


def test_paired_mean_needs_every_seed_on_both_sides():
    assert paired_mean({0: 2.5, 1: 3.0}, {0: 2.0, 1: 2.0}, [0, 1]) == 0.75
    assert paired_mean({0: 2.5}, {0: 2.0, 1: 2.0}, [0, 1]) == float("inf")  # a run failed: no smaller sample
    assert paired_mean({0: 2.5, 1: float("nan")}, {0: 2.0, 1: 2.0}, [0, 1]) == float("inf")


def test_per_head_the_anchor_is_the_default_on_every_head():
    opts = TuneOptions(source="ema", trials=1, budget="smoke", objective="val_nll", per_head=True,
                       base={"data.dataset": "synthetic"})
    reference = opts.validate()
    anchor = default_params(opts, reference)
    assert anchor == {"coef_k0": 2.0, "coef_k1": 2.0, "coef_k2": 2.0}
    study = optuna.create_study()
    study.enqueue_trial(anchor)
    over = suggest(study.ask(), opts, reference.model.n_layer)
    assert over["foresight.head_coefs"] == [2.0, 2.0, 2.0] and "foresight.coef" not in over


def test_the_export_holds_the_choices_not_the_budget_resolution(tmp_path):
    opts = TuneOptions(source="ema", trials=1, budget="smoke", study="s", base={"train.steps": "24"})
    record = {"study": "s", "winner": {"trial": 4, "params": {"coef": 0.7}}, "default_params": {"coef": 2.0},
              "confirmation": {"default_is_winner": False}, "rescore": {}, "counts": {"trials": 5}}
    spec, path = export(tmp_path, opts, record)
    text = spec.read_text()
    assert "projector_dim" not in text and "student_block" not in text  # resolved by the budget's model
    table = read_toml(spec)
    assert table["experiment"] == {"name": "s", "description": table["experiment"]["description"],
                                   "budget": "smoke", "seeds": 2, "baseline": "baseline"}
    assert table["base"] == {"train": {"steps": 24}, "foresight": {"source": "ema", "k": 3, "layout": "2d"},
                             "eval": {"metrics_in_training": False}}
    assert table["axes"]["variant"] == {"baseline": {"baseline": True}, "default": {"foresight": {"coef": 2.0}},
                                        "tuned": {"foresight": {"coef": 0.7}}}
    plan = plan_from_spec(table, str(spec), budget="quick")  # the same choices at another budget
    tuned = next(r.cfg for r in plan.runs if r.variant == "tuned")
    assert tuned.foresight.projector_dim == tuned.model.dim and tuned.foresight.coef == 0.7
    assert json.loads(path.read_text())["spec"] == "s.toml"


def test_the_export_has_no_tuned_row_when_the_default_won(tmp_path):
    opts = TuneOptions(source="ema", trials=1, budget="smoke", study="s", per_head=True)
    record = {"study": "s", "winner": {"trial": 0, "params": {f"coef_k{i}": 2.0 for i in range(3)}},
              "default_params": {f"coef_k{i}": 2.0 for i in range(3)}, "confirmation": {"default_is_winner": True},
              "rescore": {}, "counts": {"trials": 1}}
    spec, _ = export(tmp_path, opts, record)
    assert read_toml(spec)["axes"]["variant"] == {"baseline": {"baseline": True},
                                                  "default": {"foresight": {"head_coefs": [2.0, 2.0, 2.0]}}}


def _stand_in_block(values: dict[str, float]) -> Any:
    """Stands in for training a block: each run's final val_nll is its variant's value + 0.01 x seed parity."""

    def train_block(plan: Any, root: Path, **_: Any) -> None:
        for run in plan.runs:
            path = run_dir(root, run.run_id)
            path.mkdir(parents=True)
            (path / "config.json").write_text(json.dumps(run.cfg.to_dict()))
            (path / "status.json").write_text(json.dumps({"state": "done"}))
            value = values[run.variant] + 0.01 * (run.seed % 2)
            (path / "final.json").write_text(json.dumps({"val_nll": value, "steps": 12}))

    return train_block


def test_a_default_winner_is_compared_with_the_baseline_only(tmp_path, monkeypatch):
    monkeypatch.setattr(tune_study, "train_block", _stand_in_block({"baseline": 3.0, "default": 2.9}))
    opts = TuneOptions(source="ema", trials=1, budget="smoke", objective="val_nll", study="s", confirm_seeds=3,
                       base={"data.dataset": "synthetic"})
    winner = optuna.trial.create_trial(params={"coef": 2.0}, value=-0.1, distributions={
        "coef": optuna.distributions.FloatDistribution(0.05, 8.0, log=True)})
    record = tune_study.confirm_winner(opts, tmp_path, winner, {"coef": 2.0}, "c", quiet=True)
    assert record["default_is_winner"] and record["vs_default"] is None
    assert record["vs_baseline"]["mean"] == pytest.approx(-0.1) and record["vs_baseline"]["n"] == 3
    assert record["lines"][0].startswith("the winner (trial -1) is the default coef 2.0")
    assert record["lines"][1] == "default coef 2.0 vs baseline: Δ val_nll -0.1 [-0.1, -0.1], n=3, better"


@pytest.mark.slow
def test_a_trial_on_a_damaged_done_run_evaluates_it_again(tmp_path, capsys):
    opts = TuneOptions(source="ema", trials=1, budget="smoke", study="s", base=TINY, objective="val_nll", seeds=1)
    base_run = block_plan("b", "smoke", {BASELINE: tune.baseline_overrides(opts)}, [0]).runs[0]
    base_final, _, _ = execute(base_run.cfg, tmp_path)
    objective = PairedObjective(opts, tmp_path, {0: base_final}, {0: {}}, build_config(None, TINY).model.n_layer)
    study = optuna.create_study()
    study.enqueue_trial({"coef": 2.0})
    study.optimize(objective, n_trials=1)
    first = study.trials[0]
    (run_id,) = first.user_attrs["run_ids"]
    path = run_dir(tmp_path, run_id)
    trained = _final(tmp_path, run_id)
    assert first.value == trained - base_final["val_nll"] and run_id != base_run.run_id
    (path / "final.json").write_text('{"val_nll": 2.1')
    capsys.readouterr()
    study.enqueue_trial(first.params)
    study.optimize(objective, n_trials=1)
    again = study.trials[1]
    assert again.user_attrs["run_ids"] == [run_id]
    assert again.state is optuna.trial.TrialState.COMPLETE and again.value == first.value
    assert "final.json is damaged" in capsys.readouterr().err
    assert _final(tmp_path, run_id) == trained


def test_study_runs_measure_samples_only_at_the_end_unless_set():
    opts = TuneOptions(source="ema", trials=1, budget="quick", study="s")
    assert trial_overrides(opts, {"coef": 1.0})["eval.metrics_in_training"] is False
    assert baseline_overrides(opts) == {"eval.metrics_in_training": False}
    mine = TuneOptions(source="bidirectional", trials=1, budget="quick", study="s",
                       base={"eval.metrics_in_training": True})
    assert trial_overrides(mine, {"coef": 1.0})["eval.metrics_in_training"] is True
    assert configure(None, baseline_overrides(mine), "quick").eval.metrics_in_training is True


def test_a_resumed_study_does_not_draw_its_first_parameters_again(tmp_path):
    opts = TuneOptions(source="ema", trials=3, budget="smoke", study="resume")
    drawn = []
    for trials in (3, 3):  # two processes' worth: the second opens the stored study afresh
        study = open_study(opts, tmp_path)
        study.optimize(lambda t: drawn.append(t.suggest_float("coef", *COEF_RANGE, log=True)) or 0.0,
                       n_trials=trials)
    assert len(drawn) == 6 and len(set(drawn)) == 6
    fresh = open_study(TuneOptions(source="ema", trials=3, budget="smoke", study="again"), tmp_path)
    fresh.optimize(lambda t: t.suggest_float("coef", *COEF_RANGE, log=True), n_trials=3)
    assert [t.params["coef"] for t in fresh.trials] == drawn[:3]  # a new study is reproducible
