"""Report: the interpolation and the paired interval by hand, then a fake results dir end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imsave
from scipy import stats

from mirai_lab.errors import UserError
from mirai_lab.report.tables import format_interval, paired_interval, steps_to_reach, tex_escape
from mirai_lab.report.write import collect, write_report

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


# ---------------------------------------------------------------- paired interval


def test_paired_interval_by_hand():
    got = paired_interval([1.0, 2.0, 3.0])
    half = stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)  # sd of [1, 2, 3] is 1
    assert got.mean == pytest.approx(2.0)
    assert got.lo == pytest.approx(2.0 - half)
    assert got.hi == pytest.approx(2.0 + half)
    assert got.n == 3


def test_paired_interval_significance_and_single_pair():
    assert not paired_interval([1.0, 2.0, 3.0]).significant  # [-0.48, 4.48] contains 0
    assert paired_interval([-1.0, -1.1, -0.9, -1.05]).significant
    one = paired_interval([0.5])
    assert (one.mean, one.lo, one.hi, one.n, one.significant) == (0.5, None, None, 1, False)
    assert format_interval(0.5, np.nan, np.nan, 1) == "+0.5 (n=1, no CI)"
    assert paired_interval([]) is None


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
    manifest = {"name": "injection", "budget": "smoke", "seeds": [0, 1], "axes": ["injection"],
                "baseline": "baseline", "command": "mirai-lab sweep --axis injection", "created": 0.0, "runs": runs,
                "paper": {"metric": "fid", "rows": {"baseline": 6.36, "internal-2d": 5.22}}}
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
    for name in ("table.md", "table.csv", "table.tex", "COMMAND", "curves.png", "curves.pdf", "bars.png", "bars.pdf",
                 "samples.png", "structure.png"):
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
    # baseline mean curve ends at 9 and first gets there at step 400; internal-2d's mean curve hits 9 at step 200
    assert table.loc["baseline", "target_fid_domain"] == pytest.approx(9.0)
    assert row["steps_to_target_fid_domain"] == pytest.approx(200.0)
    assert row["speedup_fid_domain"] == pytest.approx(2.0)
    assert np.isnan(table.loc["output-1d", "speedup_fid_domain"])

    md = (out / "table.md").read_text()
    header = md.splitlines()[0]
    for column in ("variant", "failed", "fid_domain", "paper", "Δ fid_domain [95% CI]", "speed-up fid_domain",
                   "val_nll", "structure_score"):
        assert f"| {column} |" in header, column
    assert "not reached" in md and "(n=1, no CI)" in md and "nan" not in md.lower()
    assert "2.00× (200 steps)" in md

    tex = (out / "table.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"fid\_domain" in tex and "fid_domain" not in tex.replace(r"fid\_domain", "")

    text = report.read_text()
    assert "mirai-lab report injection" in text and "output-1d-s1" in text and "loss diverged" in text
    assert "![curves](curves.png)" in text and "real vs real" in text
    assert "- **internal-2d**: fid_domain -3 [" in text


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
        {"name": "s", "budget": "smoke", "seeds": [0], "axes": ["x"], "baseline": None, "command": "c", "runs": runs}))
    text = write_report(tmp_path, ["s"], tmp_path / "out", "cmd").read_text()
    md = (tmp_path / "out" / "table.md").read_text().splitlines()
    assert md[2].startswith("| a | 1/1 | 0 | n/a |") and "| 2 (n=1) |" in md[2]
    assert md[3].startswith("| b | 0/1 | 0 | n/a |")
    assert "No baseline" in text and "| `b0` | b | 0 | running |" in text
    assert not (tmp_path / "out" / "curves.png").exists() and "Not drawn" in text
