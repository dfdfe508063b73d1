"""Figures: a fake sweep with a row of each verdict, drawn end to end; the forest plot's intervals are
read back from the figure and must be table.csv's, in the verdict's colour, so a figure cannot
contradict the verdict beside it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.image import imread, imsave
from matplotlib.transforms import Bbox

from mirai_lab.analysis.collect import collect
from mirai_lab.analysis.stats import COMPARED, LEVEL, MARGINS
from mirai_lab.report.figures import (
    DPI,
    INTERVAL_GID,
    MAX_WIDTH_IN,
    VERDICT_COLOURS,
    forest_figure,
    forest_rows,
    montage,
    plot_curves,
    plot_differences,
    plot_finals,
    plot_forest,
    structure_montage_figure,
)
from mirai_lab.report.tables import build_table
from mirai_lab.report.write import write_report
from mirai_lab.results_dir import STRUCTURE, run_dir

STEPS = [0, 100, 200, 300, 400]
SEEDS = (0, 1, 2, 3)
# the baseline's seed-to-seed spread is wider than the effects: only pairing by seed resolves them
BASE_NLL = {0: 2.00, 1: 2.03, 2: 1.98, 3: 2.05}
# variant -> per-seed (val_nll, fid_domain) difference to the baseline's seed, and the verdict it must get
EFFECTS = {"better": ([-0.042, -0.037, -0.041, -0.040], [-1.0, -1.1, -0.9, -1.05], "better"),
           "worse": ([0.050, 0.055, 0.047, 0.052], [1.5, 1.4, 1.6, 1.5], "worse"),
           "same": ([0.001, -0.001, 0.002, -0.0015], [0.05, -0.05, 0.0, 0.02], "equivalent"),
           "noisy": ([0.30, -0.25, 0.10, -0.20], [8.0, -6.0, 3.0, -5.0], "unresolved")}


def _final(variant: str, seed: int) -> tuple[float, float]:
    nll, fid = (0.0, 0.0) if variant == "baseline" else (EFFECTS[variant][0][seed], EFFECTS[variant][1][seed])
    return BASE_NLL[seed] + nll, 10.0 + 20 * (BASE_NLL[seed] - 2.0) + fid


def _write_run(root: Path, variant: str, seed: int) -> None:
    """val_nll at every step (its effect grows with training), fid_domain at the final step only,
    as the sample metrics are in real runs."""
    path = root / "runs" / f"{variant}-s{seed}"
    path.mkdir(parents=True)
    nll, fid = _final(variant, seed)
    base = BASE_NLL[seed]
    rows = [(f"{variant}-s{seed}", s, s * 64, s * 0.1, "val_nll", base + (nll - base) * s / STEPS[-1]
             + 1.5 * (1 - s / STEPS[-1])) for s in STEPS]
    rows.append((f"{variant}-s{seed}", STEPS[-1], STEPS[-1] * 64, 40.0, "fid_domain", fid))
    pd.DataFrame(rows, columns=["run_id", "step", "images_seen", "wall_s", "metric", "value"]).to_csv(
        path / "curve.csv", index=False)
    (path / "status.json").write_text(json.dumps({"state": "done"}))
    (path / "final.json").write_text(json.dumps({"val_nll": nll, "fid_domain": fid, "n_samples_final": 200,
                                                 "floors": {"real_vs_real": {"fid_domain": 1.5}}}))


@pytest.fixture
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    variants = ["baseline", *EFFECTS]
    runs = [{"run_id": f"{v}-s{s}", "variant": v, "seed": s, "overrides": {}} for v in variants for s in SEEDS]
    manifest = {"name": "fig", "budget": "quick", "seeds": list(SEEDS), "axes": ["variant"],
                "baseline": "baseline", "command": "mirai-lab sweep fig", "created": 0.0, "runs": runs}
    (root / "sweeps" / "fig").mkdir(parents=True)
    (root / "sweeps" / "fig" / "manifest.json").write_text(json.dumps(manifest))
    for variant in variants:
        for seed in SEEDS:
            _write_run(root, variant, seed)
    return root


def _drawn_intervals(fig: Figure) -> pd.DataFrame:
    """The forest plot's intervals as drawn: a row per (metric panel, row name) with lo, hi and colour."""
    found = []
    first = fig.axes[0]  # the panels share y: the row names are the first panel's tick labels
    names = {round(t): label.get_text() for t, label in zip(first.get_yticks(), first.get_yticklabels(), strict=True)}
    for ax in fig.axes:
        metric = next((m for m in COMPARED if f"Δ {m} " in ax.get_title()), None)
        bars = [c for c in ax.collections if c.get_gid() == INTERVAL_GID]
        if metric is None or not bars:
            continue
        for segment, colour in zip(bars[0].get_segments(), bars[0].get_colors(), strict=True):
            (lo, y), (hi, _) = segment
            found.append({"metric": metric, "label": names[round(y)], "lo": lo, "hi": hi, "colour": tuple(colour)})
    return pd.DataFrame(found)


def test_the_report_draws_the_forest_plot_first(results: Path):
    out = results / "out"
    report = write_report(results, ["fig"], out, "mirai-lab report fig")
    for name in ("forest.png", "forest.pdf", "curves.png", "differences.png", "finals.png"):
        assert (out / name).stat().st_size > 0, name
    text = report.read_text()
    assert text.index("![forest](forest.png)") < text.index("![curves](curves.png)")
    table = pd.read_csv(out / "table.csv").set_index("label")
    for variant, (_, _, expected) in EFFECTS.items():  # the fake runs give each verdict, or the test is moot
        assert table.loc[variant, "verdict_val_nll"] == expected, variant
        assert table.loc[variant, "verdict_fid_domain"] == expected, variant


def test_forest_intervals_are_the_tables_and_agree_with_the_verdicts(results: Path):
    write_report(results, ["fig"], results / "out", "cmd")
    written = pd.read_csv(results / "out" / "table.csv").set_index("label")
    runs, curves = collect(results, ["fig"])
    table = build_table(runs, curves, LEVEL, MARGINS)
    drawn = _drawn_intervals(forest_figure(forest_rows(table, runs), MARGINS, LEVEL))
    assert len(drawn) == len(EFFECTS) * len(COMPARED)  # every compared row, in both panels
    for r in drawn.itertuples(index=False):
        row = written.loc[r.label]
        assert (r.lo, r.hi) == pytest.approx((row[f"delta_{r.metric}_lo"], row[f"delta_{r.metric}_hi"]), abs=1e-12)
        verdict = row[f"verdict_{r.metric}"]
        assert r.colour == pytest.approx(to_rgba(VERDICT_COLOURS[verdict]))
        if verdict == "better":
            assert r.hi < 0, (r.label, r.metric)  # a row called better never crosses zero as drawn
        if verdict == "worse":
            assert r.lo > 0, (r.label, r.metric)
        if verdict == "equivalent":
            assert -MARGINS[r.metric] < r.lo and r.hi < MARGINS[r.metric]


def test_forest_rows_carry_the_paired_seeds(results: Path):
    runs, curves = collect(results, ["fig"])
    rows = forest_rows(build_table(runs, curves, LEVEL, MARGINS), runs).set_index(["label", "metric"])
    seeds = rows.loc[("better", "val_nll"), "seeds"]
    assert seeds == pytest.approx(EFFECTS["better"][0])
    assert rows.loc[("better", "val_nll"), "mean"] == pytest.approx(np.mean(EFFECTS["better"][0]))


def test_each_writer_returns_what_it_wrote_and_skips_one_point_curves(results: Path, tmp_path: Path):
    runs, curves = collect(results, ["fig"])
    table = build_table(runs, curves, LEVEL, MARGINS)
    order = list(runs["label"].unique())
    out = tmp_path / "figs"
    out.mkdir()
    assert plot_forest(table, runs, MARGINS, out, LEVEL) == ["forest.png", "forest.pdf"]
    assert plot_finals(runs, table, order, "baseline", out, LEVEL) == ["finals.png", "finals.pdf"]
    assert plot_curves(curves, runs, order, out, LEVEL) == ["curves.png", "curves.pdf"]
    assert plot_differences(curves, table, order, "baseline", out, LEVEL, MARGINS) == [
        "differences.png", "differences.pdf"]
    # fid_domain exists at the final step only: no curve to draw, the forest plot carries it
    only_final = curves[curves["metric"] == "fid_domain"]
    assert plot_curves(only_final, runs, order, out, LEVEL) == []
    assert plot_differences(only_final, table, order, "baseline", out, LEVEL, MARGINS) == []
    assert all((out / name).stat().st_size > 0 for name in ("forest.png", "finals.png", "differences.png"))


def test_withheld_verdicts_are_drawn_as_no_verdict(results: Path):
    manifest = results / "sweeps" / "fig" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "budget": "smoke"}))
    out = results / "out"
    write_report(results, ["fig"], out, "cmd")
    assert pd.read_csv(out / "table.csv")["verdict_val_nll"].isna().all()
    runs, curves = collect(results, ["fig"])
    table = build_table(runs, curves, LEVEL, MARGINS, withheld=True)
    drawn = _drawn_intervals(forest_figure(forest_rows(table, runs), MARGINS, LEVEL))
    assert len(drawn) == len(EFFECTS) * len(COMPARED)
    assert all(colour == pytest.approx(to_rgba(VERDICT_COLOURS["no verdict"])) for colour in drawn["colour"])


STRUCTURE_PX = (660, 1200)  # the size of the structure.png evaluate/structure.py writes (rows, columns)


def _structure_png(path: Path, k: int) -> np.ndarray:
    """A structure.png stand-in, read back as the montage reads it: a gradient (green below 255) whose
    top-left pixel (0, 255, 60 k) occurs nowhere else in a montage (its text is grey, its ground white)."""
    y, x = np.indices(STRUCTURE_PX)
    image = np.stack([x % 256, y % 200, np.full(STRUCTURE_PX, 60 * k)], axis=-1).astype(np.uint8)
    image[0, 0] = (0, 255, 60 * k)
    imsave(path, image)
    return imread(path)


def _find(drawn: np.ndarray, source: np.ndarray) -> tuple[int, int]:
    """Where `source` lies in `drawn` pixel for pixel (top-left row, column); fails when not exactly once."""
    corners = np.argwhere(np.all(drawn[..., :3] == source[0, 0, :3], axis=-1))
    assert len(corners) == 1, corners
    top, left = corners[0]
    crop = drawn[top:top + source.shape[0], left:left + source.shape[1], :3]
    assert np.array_equal(crop, source[..., :3])
    return int(top), int(left)


def test_the_structure_montage_keeps_each_map_at_its_own_pixels(results: Path, tmp_path: Path):
    runs, _ = collect(results, ["fig"])
    order = list(runs["label"].unique())
    sizes = []
    sources = []
    for n in (1, 2, 3):
        sources.append(_structure_png(run_dir(results, f"{order[n - 1]}-s0") / STRUCTURE, n - 1))
        out = tmp_path / f"montage-{n}"
        out.mkdir()
        assert montage(runs, order, results, STRUCTURE, out) == ["structure.png"]
        drawn = imread(out / "structure.png")
        tops = [_find(drawn, source)[0] for source in sources]  # copied 1:1: no resampling, no blur
        assert tops == sorted(tops)  # one map per row, in the report's order
        sizes.append(drawn.shape[:2])
    (h1, w1), (h2, w2), (h3, w3) = sizes
    assert w1 == w2 == w3 and STRUCTURE_PX[1] < w1 <= MAX_WIDTH_IN * DPI  # readable without zooming
    assert h3 - h2 == h2 - h1 > STRUCTURE_PX[0]  # each variant adds a row: its map and its label


def test_the_structure_montage_labels_every_map_and_cuts_no_text(results: Path, tmp_path: Path):
    runs, _ = collect(results, ["fig"])
    runs = runs.assign(structure_block=3)
    first = runs[runs["seed"] == 0].sort_values("label")
    panels = [(run.label, run, _structure_png(tmp_path / f"{k}.png", k))
              for k, run in enumerate(first.itertuples(index=False))]
    fig = structure_montage_figure(panels)
    renderer = FigureCanvasAgg(fig).get_renderer()
    texts = [t.get_text() for t in fig.texts]
    assert texts[1:] == [f"{label}, seed 0, block 3" for label, _, _ in panels]
    title = texts[0].replace("\n", " ")
    assert "RGB" in title and "colour bar" in title and "batch mean" not in title
    page = fig.bbox
    maps = [Bbox.from_extents(x0, y0, x1, y1) for x0, x1, y0, y1 in (image.get_extent() for image in fig.images)]
    assert [(m.width, m.height) for m in maps] == [STRUCTURE_PX[::-1]] * len(panels)
    for text in fig.texts:
        box = text.get_window_extent(renderer)
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, text
        assert not any(box.overlaps(m) for m in maps), text
