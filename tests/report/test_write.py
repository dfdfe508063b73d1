"""Report: the interpolation by hand, then a fake results dir end to end (tables, verdicts, orderings,
speed-ups, tidy CSVs, LaTeX, the adaptive level) and the `plan` verb's arithmetic."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import refused
from matplotlib.image import imsave
from scipy import stats

from mirai_lab.analysis.collect import collect
from mirai_lab.analysis.stats import steps_to_reach
from mirai_lab.errors import UserError
from mirai_lab.experiments.spec import SPECS_DIR, load_plan
from mirai_lab.report.orderings import check_orderings
from mirai_lab.report.seed_plan import format_plan, plan_seeds
from mirai_lab.report.tables import format_interval, tex_escape
from mirai_lab.report.write import write_report

STEPS = [0, 100, 200, 300, 400]


# ---------------------------------------------------------------- steps_to_reach


def test_reached_at_the_first_point():
    assert steps_to_reach(STEPS, [5, 4, 3, 2, 1], target=6) == 0.0


def test_reached_between_points_is_interpolated():
    # 20 -> 10 between steps 100 and 200: 15 is reached half-way, 12 at 80%
    assert steps_to_reach(STEPS, [30, 20, 10, 5, 1], target=15) == pytest.approx(150.0)
    assert steps_to_reach(STEPS, [30, 20, 10, 5, 1], target=12) == pytest.approx(180.0)


def test_reached_exactly_at_a_point():
    assert steps_to_reach(STEPS, [30, 20, 10, 5, 1], target=10) == 200.0


def test_not_reached():
    assert steps_to_reach(STEPS, [30, 20, 10, 5, 1], target=0.5) is None


def test_first_crossing_counts_and_higher_is_better():
    # dips below 15 at 150, comes back up, dips again: the first crossing is the answer
    assert steps_to_reach(STEPS, [30, 10, 40, 10, 10], target=20) == pytest.approx(50.0)
    assert steps_to_reach(STEPS, [0.1, 0.3, 0.5, 0.7, 0.9], target=0.6, lower_is_better=False) == pytest.approx(250.0)


def test_unsorted_and_nan_points_are_ignored():
    assert steps_to_reach([200, 0, 100, 300], [10, 30, 20, float("nan")], target=15) == pytest.approx(150.0)


def test_format_interval():
    assert format_interval(0.5, np.nan, np.nan, 1) == "+0.5 (n=1, no CI)"
    assert format_interval(-0.02, -0.03, -0.01, 3, paired=False) == "-0.02 [-0.03, -0.01] (unpaired)"
    assert format_interval(0.0, np.nan, np.nan, 0) == "n/a"


def test_tex_escape():
    assert tex_escape("fid_domain ± 1 & 50%") == r"fid\_domain $\pm$ 1 \& 50\%"


# ---------------------------------------------------------------- end to end

# variant -> seed -> fid_domain curve; internal-2d reaches the baseline's final mean (9) exactly at step 200
FID = {"baseline": {0: [100, 50, 20, 10, 8], 1: [102, 52, 22, 12, 10]},
       "internal-2d": {0: [100, 30, 8, 7, 6], 1: [102, 30, 10, 7, 6]},
       "output-1d": {0: [100, 60, 40, 30, 25], 1: [100, 60, 40, 30, 25]}}
FAILED = ("output-1d", 1)


def _run_id(variant: str, seed: int) -> str:
    return f"{variant}-s{seed}"


def _write_run(root: Path, variant: str, seed: int) -> None:
    path = root / "runs" / _run_id(variant, seed)
    path.mkdir(parents=True)
    fid = FID[variant][seed]
    rows = [(_run_id(variant, seed), s, s * 64, s * 0.1, metric, v)
            for s, f in zip(STEPS, fid, strict=True)
            for metric, v in (("fid_domain", f), ("val_nll", 2 + f / 100), ("train_ntp", 2.0))]
    pd.DataFrame(rows, columns=["run_id", "step", "images_seen", "wall_s", "metric", "value"]).to_csv(
        path / "curve.csv", index=False)
    if (variant, seed) == FAILED:
        (path / "status.json").write_text(json.dumps({"state": "failed", "error": "loss diverged (nan)", "step": 250}))
        return
    (path / "status.json").write_text(json.dumps({"state": "done"}))
    final = {"val_nll": 2 + fid[-1] / 100, "fid_domain": fid[-1], "is_domain": 5.0 + seed, "kid_domain": 0.01,
             "precision_domain": 0.8, "recall_domain": 0.7 - 0.1 * seed, "class_acc": 0.9, "structure_score": 0.3,
             "n_samples_final": 200, "wall_s": 12.0, "steps": 400, "tokenizer_mse": 0.008, "classifier_val_acc": 0.95,
             "floors": {"real_vs_real": {"fid_domain": 1.5 + seed * 0.1}, "tokenizer_ceiling": {"fid_domain": 0.9}}}
    # kid is missing in one run on purpose: the table must say n=1 there, not invent a value
    if variant == "internal-2d" and seed == 1:
        del final["kid_domain"]
    (path / "final.json").write_text(json.dumps(final))
    image = np.linspace(0, 1, 40 * 30).reshape(40, 30)
    imsave(path / "samples.png", image, cmap="gray")
    imsave(path / "structure.png", image.T)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    runs = [{"run_id": _run_id(v, s), "variant": v, "seed": s, "overrides": {}} for v in FID for s in (0, 1)]
    runs = runs[2:4] + runs[:2] + runs[4:]  # the baseline is not first in the manifest: the table puts it first
    manifest = {"name": "injection", "budget": "quick", "seeds": [0, 1], "axes": ["injection"],
                "baseline": "baseline", "command": "mirai-lab sweep --axis injection", "created": 0.0, "runs": runs,
                "paper": {"metric": "fid", "rows": {"baseline": 6.36, "internal-2d": 5.22},
                          "orderings": ["internal-2d < baseline", "output-1d > baseline"],
                          "ordering_metrics": ["fid_domain"]}}
    (root / "sweeps" / "injection").mkdir(parents=True)
    (root / "sweeps" / "injection" / "manifest.json").write_text(json.dumps(manifest))
    for variant, seeds in FID.items():
        for seed in seeds:
            _write_run(root, variant, seed)
    return root


def test_collect(results: Path):
    runs, curves = collect(results, ["injection"])
    assert list(runs["variant"].unique()) == ["baseline", "internal-2d", "output-1d"]
    assert runs.set_index("run_id").loc["output-1d-s1", "state"] == "failed"
    assert set(curves["metric"]) == {"fid_domain", "val_nll", "train_ntp"}
    assert {"variant", "seed", "state"} <= set(curves.columns)


def test_missing_sweep_names_it_and_lists_existing(results: Path):
    with pytest.raises(UserError, match=r"'nope'.*existing: injection"):
        write_report(results, ["nope"], results / "out", "cmd")
    assert not (results / "out").exists()


def test_write_report_end_to_end(results: Path):
    out = results / "report-out"
    report = write_report(results, ["injection"], out, "mirai-lab report injection")
    assert report == out / "report.md"
    for name in ("table.md", "table.csv", "table.tex", "finals.csv", "curves.csv", "COMMAND", "curves.png",
                 "curves.pdf", "differences.png", "differences.pdf", "finals.png", "finals.pdf", "samples.png",
                 "structure.png"):
        assert (out / name).stat().st_size > 0, name

    table = pd.read_csv(out / "table.csv").set_index("variant")
    assert list(table.index) == ["baseline", "internal-2d", "output-1d"]
    numbers = table.select_dtypes("number").to_numpy(dtype=float)
    assert np.isfinite(numbers[~np.isnan(numbers)]).all()
    assert table.loc["output-1d", "n_failed"] == 1 and table.loc["output-1d", "n_done"] == 1
    assert table.loc["internal-2d", "kid_domain_n"] == 1

    # paired by seed: internal-2d minus baseline final fid = [6-8, 6-10] = [-2, -4]
    half = stats.t.ppf(0.975, 1) * np.std([-2.0, -4.0], ddof=1) / math.sqrt(2)
    row = table.loc["internal-2d"]
    assert row["delta_fid_domain"] == pytest.approx(-3.0)
    assert row["delta_fid_domain_lo"] == pytest.approx(-3.0 - half)
    assert row["delta_fid_domain_hi"] == pytest.approx(-3.0 + half)
    assert row["delta_fid_domain_half"] == pytest.approx(half) and row["delta_fid_domain_n"] == 2
    assert row["verdict_fid_domain"] == "unresolved" and row["level"] == 0.95
    # not resolved: the seeds that would bring the half-width to |mean| = 3 at sd(-2, -4)
    assert row["seeds_needed_fid_domain"] == 4  # t(.975, 3) * 1.414 / 2 = 2.25 <= 3 < t(.975, 2) * 1.414 / 1.732
    # per seed: each baseline first reaches its own final (8, 10) at step 400, internal-2d at step 200
    assert row["speedup_fid_domain"] == pytest.approx(2.0) and row["speedup_fid_domain_reached"] == 2
    assert table.loc["output-1d", ["speedup_fid_domain_reached", "speedup_fid_domain_n"]].tolist() == [0, 1]

    md = (out / "table.md").read_text()  # the verdicts only (tests/report/test_tables.py); the rest is in table.csv
    conditions, blank, header = md.splitlines()[:3]  # what the verdicts rest on, stated above the table
    assert conditions.startswith("**Conditions:** `") and "verdicts hold at budget `" in conditions and blank == ""
    assert "not checked at a neighbouring setting (`mirai-lab robust " in conditions
    assert header == ("| variant | n | Δ val_nll [95% CI] | verdict val_nll | Δ fid_domain [95% CI] | "
                                  "verdict fid_domain | speed-up val_nll | speed-up fid_domain |")
    assert "| output-1d | 1/2, 1 failed |" in md and "not reached (0/1)" in md
    assert "(n=1, no CI)" in md and "nan" not in md.lower()
    assert "2.00× [2.00, 2.00] (2/2 reached)" in md and "no verdict (n=2; needs >= 3 paired seeds)" in md

    tex = (out / "table.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"\caption{injection: final val\_nll" in tex and r"\label{tab:injection}" in tex
    assert r"fid\_domain" in tex and "fid_domain" not in tex.replace(r"fid\_domain", "")
    assert "structure" not in tex and "MDE" not in tex  # a chosen set of columns, not all of them

    finals = pd.read_csv(out / "finals.csv")
    assert set(finals.columns) == {"sweep", "label", "variant", "seed", "run_id", "state", "metric", "value"}
    got = finals[(finals["run_id"] == "internal-2d-s1") & (finals["metric"] == "fid_domain")]["value"]
    assert got.tolist() == [6.0]
    long = pd.read_csv(out / "curves.csv")
    assert len(long) == 6 * len(STEPS) * 3 and {"seed", "variant", "step", "metric", "value"} <= set(long.columns)

    text = report.read_text()
    assert "mirai-lab report injection" in text and "output-1d-s1" in text and "loss diverged" in text
    assert "![curves](curves.png)" in text and "![differences](differences.png)" in text and "real vs real" in text
    assert "- **internal-2d**: fid_domain -3 [" in text and ": no verdict (n=2; needs >= 3 paired seeds)" in text
    assert "## Noise and power" in text and "Intervals: 95% per row (fixed-seed sweep" in text
    assert "| internal-2d < baseline | fid_domain | -3 [" in text and "| output-1d > baseline |" in text


def test_adaptive_level_is_used_and_stated(results: Path):
    (results / "sweeps" / "injection" / "adaptive.json").write_text(json.dumps(
        {"metric": "val_nll", "margin": 0.02, "alpha": 0.05, "looks_planned": [3, 5],
         "level": 0.9875, "looks": [{"n": 3, "rows": {}}], "stopped": "seed cap (5 seeds) reached"}))
    out = results / "adaptive-out"
    text = write_report(results, ["injection"], out, "cmd").read_text()
    table = pd.read_csv(out / "table.csv").set_index("variant")
    half = stats.t.ppf(0.5 + 0.9875 / 2, 1) * np.std([-2.0, -4.0], ddof=1) / math.sqrt(2)
    assert table.loc["internal-2d", "delta_fid_domain_half"] == pytest.approx(half)
    assert "| Δ val_nll [98.75% CI] |" in (out / "table.md").read_text()
    assert "Bonferroni over 2 planned looks (3, 5 seeds) at alpha 0.05" in text and "per row" in text
    assert "looks made at 3 seeds of 3, 5 planned" in text and "val_nll ±0.02" in text


def test_two_sweeps_prefix_labels_and_keep_their_own_baseline(results: Path):
    manifest = json.loads((results / "sweeps" / "injection" / "manifest.json").read_text())
    manifest["runs"] = [r for r in manifest["runs"] if r["variant"] != "output-1d"]  # shares the baseline runs
    (results / "sweeps" / "layout").mkdir()
    (results / "sweeps" / "layout" / "manifest.json").write_text(json.dumps(manifest))
    runs, curves = collect(results, ["injection", "layout"])
    labels = list(runs["label"].unique())
    assert labels == ["injection: baseline", "injection: internal-2d", "injection: output-1d", "layout: baseline",
                      "layout: internal-2d"]
    assert runs.groupby("sweep")["is_baseline"].sum().to_dict() == {"injection": 2, "layout": 2}
    assert set(curves["label"]) == set(labels)


def test_missing_metrics_stay_missing(tmp_path: Path):
    """Metrics disabled, no curves, no baseline, an unfinished run: n/a everywhere, nothing invented."""
    runs = [{"run_id": f"{v}0", "variant": v, "seed": 0, "overrides": {}} for v in ("a", "b")]
    for run in runs:
        path = tmp_path / "runs" / run["run_id"]
        path.mkdir(parents=True)
        (path / "status.json").write_text(json.dumps({"state": "done" if run["variant"] == "a" else "running"}))
        (path / "final.json").write_text(json.dumps({"val_nll": 2.0, "floors": {}}))
    (tmp_path / "sweeps" / "s").mkdir(parents=True)
    (tmp_path / "sweeps" / "s" / "manifest.json").write_text(json.dumps(
        {"name": "s", "budget": "quick", "seeds": [0], "axes": ["x"], "baseline": None, "command": "c", "runs": runs}))
    text = write_report(tmp_path, ["s"], tmp_path / "out", "cmd").read_text()
    md = (tmp_path / "out" / "table.md").read_text().splitlines()
    assert md[0] == "| variant | n | val_nll |"  # nothing to compare with: the values, no empty columns
    assert md[2:] == ["| a | 1/1 | 2.0 (n=1) |", "| b | 0/1 | n/a |"]
    assert "No baseline" in text and "| `b0` | b | 0 | running |" in text
    assert not (tmp_path / "out" / "curves.png").exists() and "Not drawn" in text


# ---------------------------------------------------------------- orderings


def _runs_frame(values: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"variant": v, "seed": s, "state": "done", "val_nll": x}
                         for v, xs in values.items() for s, x in enumerate(xs)])


def test_orderings_hold_contradicted_unresolved():
    runs = _runs_frame({"baseline": [2.10, 2.14, 2.12, 2.16], "good": [2.00, 2.05, 2.01, 2.06],
                        "bad": [2.30, 2.33, 2.31, 2.37], "same": [2.1001, 2.1398, 2.1203, 2.1599]})
    paper = {"orderings": ["good < baseline", "bad < baseline", "bad > good", "same < baseline"],
             "ordering_metrics": "val_nll"}
    got = check_orderings(paper, runs, "spec", 0.95, {"val_nll": 0.01}).set_index("ordering")
    assert got["outcome"].to_dict() == {"good < baseline": "holds", "bad < baseline": "contradicted",
                                        "bad > good": "holds",
                                        "same < baseline": "unresolved (equivalent within ±0.01)"}
    ci = stats.ttest_rel([2.00, 2.05, 2.01, 2.06], [2.10, 2.14, 2.12, 2.16]).confidence_interval(0.95)
    assert (got.loc["good < baseline", "lo"], got.loc["good < baseline", "hi"]) == (pytest.approx(ci.low),
                                                                                    pytest.approx(ci.high))


@pytest.mark.parametrize(("orderings", "message"), [
    (["good << baseline"], r"ordering 'good << baseline': expected 'VARIANT < VARIANT'"),
    (["nope < baseline"], r"'nope' is not a variant \(baseline, good\)"),
    (["good < good"], r"compares a variant with itself"),
])
def test_bad_orderings_are_one_line(orderings: list[str], message: str):
    runs = _runs_frame({"baseline": [1.0, 1.1], "good": [0.9, 1.0]})
    with pytest.raises(UserError, match=message):
        check_orderings({"orderings": orderings}, runs, "spec", 0.95, {})


def test_builtin_table_orderings_name_their_variants():
    for table in ("table1", "table2"):
        plan = load_plan(SPECS_DIR / f"{table}.toml", budget="smoke", seeds=1)
        runs = pd.DataFrame([{"variant": r.variant, "seed": r.seed, "state": "pending"} for r in plan.runs])
        checked = check_orderings(plan.paper, runs, table, 0.95, {})
        assert len(checked) == 2 * len(plan.paper["orderings"]) and set(checked["outcome"]) == {"unresolved"}


# ---------------------------------------------------------------- plan


def test_plan_arithmetic(results: Path):
    # add a third seed so that both variants have spread; output-1d keeps one failed seed
    for variant, fid in (("baseline", [100, 50, 20, 10, 9]), ("internal-2d", [100, 30, 8, 7, 7.5])):
        FID[variant][2] = fid
        _write_run(results, variant, 2)
        del FID[variant][2]
    manifest_path = results / "sweeps" / "injection" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["runs"] += [{"run_id": _run_id(v, 2), "variant": v, "seed": 2, "overrides": {}}
                         for v in ("baseline", "internal-2d")]
    manifest_path.write_text(json.dumps(manifest))

    info = plan_seeds(results, "injection", halfwidth=0.5, metric="fid_domain", workers=2)
    rows = {r["variant"]: r for r in info["rows"]}
    d = np.array([6 - 8, 6 - 10, 7.5 - 9])
    sd = d.std(ddof=1)
    row = rows["internal-2d"]
    assert row["n"] == 3 and row["sd"] == pytest.approx(sd)
    lo, hi = stats.t.interval(0.95, 2, loc=d.mean(), scale=sd / math.sqrt(3))
    assert row["half"] == pytest.approx((hi - lo) / 2)
    need = next(n for n in range(2, 10_000) if stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) <= 0.5)
    assert row["seeds_needed"] == need and row["extra_runs"] == need - 3
    assert info["median_wall_s"] == 12.0  # every run recorded 12 s
    assert row["minutes"] == pytest.approx((need - 3) * 12.0 / 2 / 60)
    assert rows["output-1d"]["n"] == 1 and rows["output-1d"]["seeds_needed"] is None
    assert info["total_runs"] is None  # output-1d has no spread to plan from
    text = format_plan(info)
    assert f"| internal-2d | 3 | {sd:.4g} |" in text and "median 12 s per run" in text


@pytest.mark.parametrize(("args", "message"), [
    (["--halfwidth", "0"], "--halfwidth 0.0: expected a positive number"),
    (["--metric", "is_domain"], "--metric 'is_domain': expected one of fid_domain, val_nll"),
    ([], "no sweep 'nope'"),
])
def test_plan_bad_input_is_one_line_exit_2(results: Path, args: list[str], message: str):
    sweep = "nope" if not args else "injection"
    assert message in refused(["plan", sweep, *args, "--results-dir", str(results)], results.parent)


def test_a_smoke_table_carries_no_verdicts_and_says_so_once(results: Path, tmp_path: Path):
    manifest_path = results / "sweeps" / "injection" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "budget": "smoke"}))
    text = write_report(results, ["injection"], tmp_path / "out", "cmd").read_text()
    md = (tmp_path / "out" / "table.md").read_text()
    assert md.startswith("**No verdicts:** sweep injection ran at the smoke budget")
    assert text.count("**No verdicts:**") == 1
    table = pd.read_csv(tmp_path / "out" / "table.csv")
    assert table["verdict_fid_domain"].isna().all() and table["verdict_val_nll"].isna().all()
    for word in ("better", "worse", "equivalent"):
        assert word not in md


def test_a_baseline_near_the_uniform_guess_is_plumbing(results: Path, tmp_path: Path):
    """quick budget, but the baseline's val_nll (2.09 here) sits above 0.9 x ln(V) for V = 8 codes."""
    from mirai_lab.analysis.collect import collect
    from mirai_lab.config import build_config
    from mirai_lab.report.write import plumbing_reason

    runs, _ = collect(results, ["injection"])
    manifests = {"injection": json.loads((results / "sweeps" / "injection" / "manifest.json").read_text())}
    for seed in (0, 1):
        cfg = build_config(None, {"tokenizer.codebook_size": 8}).to_dict()
        (results / "runs" / f"baseline-s{seed}" / "config.json").write_text(json.dumps(cfg))
    reason = plumbing_reason(results, manifests, runs)
    assert reason is not None and "2.090" in reason and "2.079 nats for 8 codes" in reason
    for seed in (0, 1):
        cfg = build_config(None, {"tokenizer.codebook_size": 512}).to_dict()
        (results / "runs" / f"baseline-s{seed}" / "config.json").write_text(json.dumps(cfg))
    assert plumbing_reason(results, manifests, runs) is None  # 2.09 < 0.9 x ln 512 = 5.61
