"""train.precision: "auto" is one choice per sweep, made by a stated rule, held in every run id.

The hardware probe is forced to each branch ($MIRAI_LAB_BF16_PROBE), so an AVX2-only machine
exercises what an AVX512-BF16 or AMX machine decides, and the step timings are fake clocks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import SMALL_ARGS, run_main

from mirai_lab.config import build_config
from mirai_lab.errors import UserError
from mirai_lab.experiments.spec import SPECS_DIR, load_plan
from mirai_lab.experiments.sweep_precision import sweep_precision
from mirai_lab.report.write import write_report
from mirai_lab.runs.identity import COMPUTE_VERSION, run_id_of
from mirai_lab.training import precision


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_trainers(clock: FakeClock, seconds: dict[str, list[float]], built: list[str]):
    """Trainers whose step advances the fake clock by the next of `seconds[precision]`."""

    class FakeTrainer:
        def __init__(self, cfg, root, progress=None, threads=None) -> None:
            self.precision = cfg.train.precision
            self.times = iter(seconds[self.precision])
            built.append(self.precision)

        def setup(self) -> None:
            pass

        def train_step(self, step: int) -> None:
            clock.now += next(self.times)

    return FakeTrainer


NATIVE = {"fp32_gflops": 100.0, "bf16_gflops": 190.0}
WARM = [9.0, 9.0]  # the warm-up rounds: never counted


@pytest.mark.parametrize("fp32, bf16, expected", [
    ([1.0] * 5, [0.875] * 5, "bf16"),                       # 12.5% shorter in every round
    ([1.0] * 5, [0.9375] * 5, "fp32"),                      # 6.25% shorter: inside the margin
    ([1.0] * 5, [0.5, 0.5, 0.5, 0.5, 1.5], "fp32"),         # much faster at the median, slower in one round
    ([1.0] * 5, [1.0] * 5, "fp32"),                         # a tie keeps fp32, which is exact
])
def test_the_timing_rule_needs_a_margin_in_every_round(fp32, bf16, expected):
    assert ("bf16" if precision.bf16_wins(fp32, bf16) else "fp32") == expected


def test_native_bf16_times_interleaved_rounds_then_caches(tmp_path, monkeypatch):
    monkeypatch.delenv(precision.PROBE_ENV, raising=False)
    clock, built = FakeClock(), []
    monkeypatch.setattr(precision.time, "perf_counter", clock)
    monkeypatch.setattr(precision, "probe", lambda device: NATIVE)
    make = fake_trainers(clock, {"fp32": WARM + [0.5] * 5, "bf16": WARM + [0.25] * 5}, built)
    cfg = build_config(None, {"model.preset": "tiny", "train.precision": "auto"})
    choice = precision.auto_precision(cfg, tmp_path, make, threads=2)
    assert choice["precision"] == "bf16" and built == ["fp32", "bf16"]
    assert choice["fp32_step_s"] == [0.5] * 5 and choice["bf16_step_s"] == [0.25] * 5  # warm-up dropped
    monkeypatch.setattr(precision, "probe", lambda device: pytest.fail("the cached choice must not re-measure"))
    assert precision.auto_precision(cfg, tmp_path, make, threads=2)["precision"] == "bf16"


def test_emulated_bf16_is_fp32_without_timing_a_step(tmp_path, monkeypatch):
    monkeypatch.delenv(precision.PROBE_ENV, raising=False)
    monkeypatch.setattr(precision, "probe", lambda device: {"fp32_gflops": 110.0, "bf16_gflops": 1.0})
    cfg = build_config(None, {"model.preset": "tiny", "train.precision": "auto"})
    choice = precision.auto_precision(cfg, tmp_path, lambda *a: pytest.fail("no step is timed"), threads=2)
    assert choice["precision"] == "fp32" and "emulated" in choice["reason"]


def test_torchrun_on_a_cpu_is_fp32_without_timing(tmp_path, monkeypatch):
    monkeypatch.setenv(precision.PROBE_ENV, "native-bf16-faster")
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = build_config(None, {"model.preset": "tiny", "train.precision": "auto"})
    choice = precision.auto_precision(cfg, tmp_path, lambda *a: pytest.fail("no step is timed"), threads=2)
    assert choice["precision"] == "fp32" and "torchrun" in choice["reason"]


@pytest.mark.parametrize("branch, baseline, ema", [
    ("emulated", "fp32", "fp32"),
    ("native-fp32-faster", "fp32", "fp32"),
    ("native-bf16-faster", "bf16", "bf16"),
    ("native-bf16-faster-ema", "fp32", "bf16"),  # what a per-variant choice would have split
])
def test_each_forced_branch_decides_per_reference(tmp_path, monkeypatch, branch, baseline, ema):
    monkeypatch.setenv(precision.PROBE_ENV, branch)
    no_trainer = lambda *a: pytest.fail("a forced branch builds no trainer")  # noqa: E731
    for source, expected in (("none", baseline), ("ema", ema)):
        cfg = build_config(None, {"model.preset": "tiny", "train.precision": "auto", "foresight.source": source})
        assert precision.auto_precision(cfg, tmp_path, no_trainer, threads=1)["precision"] == expected


def test_a_bad_forced_branch_is_one_error(monkeypatch):
    monkeypatch.setenv(precision.PROBE_ENV, "fast")
    with pytest.raises(UserError, match="MIRAI_LAB_BF16_PROBE='fast': expected one of emulated"):
        precision.forced()


def test_explicit_precisions_are_kept_and_nothing_is_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "probe", lambda device: pytest.fail("nothing to measure"))
    for value in ("fp32", "bf16"):
        cfg = build_config(None, {"train.precision": value})
        assert precision.resolved(cfg, tmp_path).train.precision == value


def test_the_cache_key_separates_machines_shapes_batches_heads_and_forced_branches(monkeypatch):
    monkeypatch.delenv(precision.PROBE_ENV, raising=False)  # measured, whatever the suite's environment forces
    keys = [precision.cache_key(build_config(None, over), 1, 2) for over in
            ({}, {"model.preset": "cpu-m"}, {"train.batch_size": 32}, {"foresight.source": "ema"})]
    monkeypatch.setenv(precision.PROBE_ENV, "emulated")
    keys.append(precision.cache_key(build_config(None, {}), 1, 2))
    assert len({json.dumps(k, sort_keys=True) for k in keys}) == len(keys)


def test_run_ids_hold_the_precision_the_compute_version_and_the_world():
    fp32, bf16 = (build_config(None, {"train.precision": p}) for p in ("fp32", "bf16"))
    assert run_id_of(fp32) != run_id_of(bf16)
    assert run_id_of(fp32, world=1) == run_id_of(fp32) != run_id_of(fp32, world=2)
    assert COMPUTE_VERSION == 3
    with pytest.raises(ValueError, match="resolve it first"):
        run_id_of(build_config(None, {"train.precision": "auto"}))


def test_the_default_is_fp32():
    assert build_config(None, {}).train.precision == "fp32"


def test_a_table2_plan_resolves_auto_once_on_its_baseline(tmp_path, monkeypatch):
    """Forced "native bf16, faster for Mirai-E only": every row, Mirai-E included, gets the
    baseline's choice, and the ids are those of runs configured with it explicitly."""
    monkeypatch.setenv(precision.PROBE_ENV, "native-bf16-faster-ema")
    plan = load_plan(SPECS_DIR / "table2.toml", budget="smoke", seeds=1, overrides={"train.precision": "auto"},
                     resolve_auto=sweep_precision(tmp_path, quiet=True))
    explicit = load_plan(SPECS_DIR / "table2.toml", budget="smoke", seeds=1, overrides={"train.precision": "fp32"})
    assert plan.precision == "fp32" and {r.cfg.train.precision for r in plan.runs} == {"fp32"}
    assert [r.run_id for r in plan.runs] == [r.run_id for r in explicit.runs]
    with pytest.raises(UserError, match="train.precision=auto needs a machine"):
        load_plan(SPECS_DIR / "table2.toml", budget="smoke", seeds=1, overrides={"train.precision": "auto"})


def test_a_later_plan_of_the_sweep_keeps_the_manifests_precision(tmp_path, monkeypatch):
    monkeypatch.setenv(precision.PROBE_ENV, "native-bf16-faster")
    first = load_plan(SPECS_DIR / "table2.toml", budget="smoke", seeds=1, overrides={"train.precision": "auto"},
                      resolve_auto=sweep_precision(tmp_path, quiet=True))
    assert first.precision == "bf16"
    manifest = tmp_path / "sweeps" / first.name / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"precision": "fp32"}))  # made on a machine that chose fp32
    again = load_plan(SPECS_DIR / "table2.toml", budget="smoke", seeds=1, overrides={"train.precision": "auto"},
                      resolve_auto=sweep_precision(tmp_path, quiet=True))
    assert again.precision == "fp32"


@pytest.mark.slow
def test_a_sweep_trains_every_run_in_one_recorded_precision(warm_results: Path, tmp_path: Path):
    """A baseline and a Mirai-E row through the CLI, probe forced to "bf16 faster for Mirai-E
    only": both train in fp32, as config.json, provenance.json and the manifest say."""
    spec = tmp_path / "pair.toml"
    spec.write_text('[experiment]\nname = "pair"\nbudget = "smoke"\nseeds = 1\nbaseline = "baseline"\n\n'
                    '[axes.v]\nbaseline = { baseline = true }\nema = { foresight = { source = "ema", k = 3 } }\n')
    ran = run_main(["sweep", "--experiment", spec, *SMALL_ARGS, "--set", "train.precision=auto",
                    "--name", "pair", "--results-dir", warm_results], tmp_path,
                   env={precision.PROBE_ENV: "native-bf16-faster-ema"})
    assert ran.code == 0, ran.err
    manifest = json.loads((warm_results / "sweeps" / "pair" / "manifest.json").read_text())
    assert manifest["precision"] == "fp32" and len(manifest["runs"]) == 2
    for run in manifest["runs"]:
        folder = warm_results / "runs" / run["run_id"]
        assert json.loads((folder / "config.json").read_text())["train"]["precision"] == "fp32"
        assert json.loads((folder / "provenance.json").read_text())["precision"] == "fp32"


def test_report_refuses_to_pair_runs_of_different_precision(tmp_path: Path):
    root = tmp_path / "results"
    runs = []
    for variant, prec in (("baseline", "fp32"), ("mirai-e-b3", "bf16")):
        for seed in range(3):
            run_id = f"{variant}-s{seed}"
            folder = root / "runs" / run_id
            folder.mkdir(parents=True)
            cfg = build_config(None, {"train.precision": prec, "train.seed": seed}).to_dict()
            (folder / "config.json").write_text(json.dumps(cfg))
            (folder / "status.json").write_text(json.dumps({"state": "done"}))
            (folder / "final.json").write_text(json.dumps({"val_nll": 2.0 + seed / 10, "steps": 4}))
            runs.append({"run_id": run_id, "variant": variant, "seed": seed, "overrides": {}})
    (root / "sweeps" / "mixed").mkdir(parents=True)
    (root / "sweeps" / "mixed" / "manifest.json").write_text(json.dumps(
        {"name": "mixed", "budget": "quick", "seeds": [0, 1, 2], "axes": ["v"], "baseline": "baseline",
         "command": "hand-made", "created": 0.0, "runs": runs, "paper": None}))
    out = tmp_path / "report"
    with pytest.raises(UserError, match=r"different precisions \(bf16: mirai-e-b3; fp32: baseline\)"):
        write_report(root, ["mixed"], out, "mirai-lab report mixed")
    assert not out.exists()
