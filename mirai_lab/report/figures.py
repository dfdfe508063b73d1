"""Figures of finished sweeps: curves, paired differences over steps, finals, labelled montages.

Figures are built on `matplotlib.figure.Figure` objects rendered by Agg, never through pyplot:
the report may be written inside a long-lived process (a notebook, a sweep worker), where the
pyplot state machine would switch the user's backend and keep every figure alive.
Each writer returns the file names it wrote, so the report links only what exists.
Every line carries markers at its evaluation points and a distinct marker and dash, so two
identical variants stay visible; legends give each variant's seed count; bands and error bars
are t-intervals at the report's level (none with one seed, and the title says so).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import imread

from mirai_lab.analysis.collect import done
from mirai_lab.analysis.stats import COMPARED, curve_difference, t_halfwidth
from mirai_lab.files.atomic import atomic_path
from mirai_lab.report.tables import level_text
from mirai_lab.results_dir import run_dir

DPI = 150
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
DASHES = ("-", "--", "-.", ":")
# floor kind -> (legend text, line style); drawn where final.json has them for the metric
FLOOR_LINES = {"real_vs_real": ("real vs real", ":"), "tokenizer_ceiling": ("tokenizer ceiling", "--")}
MAX_PANELS_PER_ROW = 4


def save_figure(fig: Figure, out_dir: Path, stem: str, formats: Sequence[str] = ("png", "pdf")) -> list[str]:
    """Write `fig` atomically in each format; the temp file has no extension, hence the explicit format."""
    names = []
    for fmt in formats:
        name = f"{stem}.{fmt}"
        with atomic_path(out_dir / name) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI)
        names.append(name)
    return names


def _present(order: Sequence[str], labels: pd.Series) -> list[str]:
    have = set(labels)
    return [label for label in order if label in have]


def _style(i: int) -> dict[str, object]:
    return {"marker": MARKERS[i % len(MARKERS)], "linestyle": DASHES[(i // len(MARKERS)) % len(DASHES)],
            "color": f"C{i % 10}", "markersize": 4}


def _band_title(metric: str, n_max: int, level: float, what: str = "mean") -> str:
    if n_max <= 1:
        return f"{metric} (one seed, no interval)"
    return f"{metric}: {what} over seeds, band {level_text(level)} CI"


def _floors(runs: pd.DataFrame, metric: str) -> dict[str, float]:
    """Mean floor values of `metric` over the finished runs that recorded them."""
    out = {}
    for kind in FLOOR_LINES:
        column = f"floor.{kind}.{metric}"
        if column in runs:
            values = pd.to_numeric(done(runs)[column], errors="coerce").dropna()
            if len(values):
                out[kind] = float(values.mean())
    return out


def _draw_floors(ax: Axes, floors: Mapping[str, float]) -> None:
    for kind, value in floors.items():
        text, style = FLOOR_LINES[kind]
        ax.axhline(value, color="grey", linestyle=style, linewidth=1, label=f"{text} ({value:.3g})")


def _mean_band(group: pd.DataFrame, level: float) -> pd.DataFrame:
    g = group.groupby(["step", "seed"])["value"].mean().groupby("step")
    out = pd.DataFrame({"mean": g.mean(), "sd": g.std(ddof=1), "n": g.size()})
    half = np.where(out["n"] > 1, t_halfwidth(out["sd"].fillna(0.0), out["n"].clip(lower=2), level), np.nan)
    return out.assign(lo=out["mean"] - half, hi=out["mean"] + half)


def plot_curves(curves: pd.DataFrame, runs: pd.DataFrame, order: Sequence[str], out_dir: Path,
                level: float) -> list[str]:
    """curves.png/.pdf: each compared metric against step, a line per variant with markers at its
    evaluations, a band at the report's level, floors drawn where the runs measured them."""
    finished = done(curves)
    finished = finished[finished["metric"].isin(list(COMPARED))]
    if finished.empty:
        return []
    fig = Figure(figsize=(6 * len(COMPARED), 4.5), layout="constrained")
    for ax, metric in zip(fig.subplots(1, len(COMPARED), squeeze=False)[0], COMPARED, strict=True):
        data = finished[finished["metric"] == metric]
        if data.empty:
            ax.text(0.5, 0.5, f"no {metric} in any curve", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        n_max = 0
        for i, label in enumerate(_present(order, data["label"])):
            group = data[data["label"] == label]
            n = group["seed"].nunique()
            n_max = max(n_max, n)
            band = _mean_band(group, level)
            ax.plot(band.index, band["mean"], label=f"{label} (n={n})", **_style(i))
            ax.fill_between(band.index, band["lo"], band["hi"], color=f"C{i % 10}", alpha=0.12, linewidth=0)
        _draw_floors(ax, _floors(runs, metric))
        if (data["value"] > 0).all() and data["value"].max() > 100 * data["value"].min():
            ax.set_yscale("log")  # FID falls by orders of magnitude early on; a linear axis hides the end
        ax.set(title=_band_title(metric, n_max, level), xlabel="optimizer step", ylabel=f"{metric} (lower is better)")
        ax.legend(fontsize=7)
    return save_figure(fig, out_dir, "curves")


def plot_differences(curves: pd.DataFrame, order: Sequence[str], base_label: str | None, out_dir: Path,
                     level: float) -> list[str]:
    """differences.png/.pdf: variant - baseline per seed on the steps both evaluated, mean and band
    over seeds, zero line; one panel per compared metric. Below zero = better than the baseline."""
    finished = done(curves)
    if base_label is None or finished.empty:
        return []
    variants = [label for label in _present(order, finished["label"]) if label != base_label]
    panels = [(m, {v: curve_difference(finished, v, base_label, m, level) for v in variants}) for m in COMPARED]
    panels = [(m, diffs) for m, diffs in panels if any(len(d) for d in diffs.values())]
    if not panels:
        return []
    fig = Figure(figsize=(6 * len(panels), 4.5), layout="constrained")
    for ax, (metric, diffs) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        n_max = 0
        for i, (label, d) in enumerate(diffs.items(), start=1):  # colour 0 is the baseline's in curves.png
            if d.empty:
                continue
            n = int(d["n"].max())
            n_max = max(n_max, n)
            ax.plot(d["step"], d["mean"], label=f"{label} (n={n})", **_style(i))
            ax.fill_between(d["step"], d["lo"], d["hi"], color=f"C{i % 10}", alpha=0.12, linewidth=0)
        ax.axhline(0.0, color="black", linewidth=1)
        ax.set(title=_band_title(f"Δ {metric}", n_max, level, "paired mean"), xlabel="optimizer step",
               ylabel=f"Δ {metric} vs {base_label} (< 0: better)")
        ax.legend(fontsize=7)
    return save_figure(fig, out_dir, "differences")


def plot_finals(runs: pd.DataFrame, order: Sequence[str], base_label: str | None, out_dir: Path,
                level: float) -> list[str]:
    """finals.png/.pdf: final value per variant as mean with its t-interval and the seeds as dots,
    the baseline's mean as a line and the floors where measured; the axis is not forced to zero."""
    finished = done(runs)
    metrics = [m for m in COMPARED if m in finished and pd.to_numeric(finished[m], errors="coerce").notna().any()]
    if not metrics:
        return []
    labels = _present(order, finished["label"])
    fig = Figure(figsize=(max(5.0, 0.9 * len(labels) + 2.5) * len(metrics), 4.5), layout="constrained")
    for ax, metric in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics, strict=True):
        x = np.arange(len(labels))
        for i, label in enumerate(labels):
            values = pd.to_numeric(finished.loc[finished["label"] == label, metric], errors="coerce").dropna()
            if values.empty:
                continue
            jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(1)
            ax.scatter(x[i] + 0.18 + jitter, values, s=10, color="black", alpha=0.6, zorder=3)
            half = t_halfwidth(values.std(ddof=1), len(values), level) if len(values) > 1 else np.nan
            ax.errorbar(x[i], values.mean(), yerr=None if np.isnan(half) else half, capsize=4, color=f"C{i % 10}",
                        marker=MARKERS[i % len(MARKERS)], markersize=7, zorder=4)
            if label == base_label:
                ax.axhline(values.mean(), color=f"C{i % 10}", linewidth=1, linestyle="--",
                           label=f"baseline mean ({values.mean():.4g})")
        _draw_floors(ax, _floors(runs, metric))
        n = finished.groupby("label")["seed"].nunique()
        ax.set_xticks(x, [f"{label}\n(n={n.get(label, 0)})" for label in labels], rotation=30, ha="right", fontsize=8)
        title = (f"final {metric}: mean, {level_text(level)} t-interval, dots = seeds" if n.max() > 1
                 else f"final {metric} (one seed, no interval)")
        ax.set(title=title, ylabel=f"{metric} (lower is better)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return save_figure(fig, out_dir, "finals")


def _grey_bands(img: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of the pixel rows that are pure padding (the grid's separator colour)."""
    grey = img if img.ndim == 2 else img[..., 0]
    pad = grey[0, 0]
    is_pad = np.all(grey == pad, axis=1)
    bands, start = [], None
    for i, flag in enumerate([*is_pad, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            bands.append((start, i))
            start = None
    return bands


def _class_rows(img: np.ndarray) -> list[float]:
    """Centre pixel rows of the class rows of a sample grid (rows of images between padding bands)."""
    bands = _grey_bands(img)
    return [(a_stop + b_start) / 2 for (_, a_stop), (b_start, _) in zip(bands, bands[1:], strict=False)]


def montage(runs: pd.DataFrame, order: Sequence[str], results: Path, filename: str, out_dir: Path) -> list[str]:
    """<filename> in out_dir: the runs' own <filename> in a grid of panels, the first done seed of each variant.

    The images are read, not regenerated, so each panel is exactly what its run produced.
    Sample grids (a row per class) get their rows labelled with the class index (the embedded
    data sets carry no class names); structure maps get their block and a colour key.
    """
    panels = []
    finished = done(runs)
    for label in order:
        for run in finished[finished["label"] == label].itertuples(index=False):
            path = run_dir(results, run.run_id) / filename
            if path.exists():
                panels.append((label, run, imread(path)))
                break
    if not panels:
        return []
    is_samples = filename.startswith("samples")
    cols = min(len(panels), MAX_PANELS_PER_ROW)
    rows = -(-len(panels) // cols)
    width = 3.2
    height = width * max(img.shape[0] / img.shape[1] for _, _, img in panels)
    fig = Figure(figsize=(width * cols + (0.8 if is_samples else 0), (height + 0.6) * rows + 0.5),
                 layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        if i >= len(panels):
            ax.set_axis_off()
            continue
        label, run, img = panels[i]
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        title = f"{label}, seed {run.seed}"
        if not is_samples and pd.notna(getattr(run, "structure_block", np.nan)):
            title += f"\nblock {int(run.structure_block)}"
        ax.set_title(title, fontsize=8)
        centres = _class_rows(img) if is_samples else []
        if centres and i % cols == 0:
            ax.set_yticks(centres, [f"class {c}" for c in range(len(centres))], fontsize=7)
    if is_samples:
        fig.suptitle("samples: one row per class, columns = samples of that class", fontsize=9)
    else:
        fig.suptitle("structure maps: each cell's hidden state (batch mean) embedded in 3-D and shown as RGB; "
                     "similar colour = similar state, smooth regions = 2D structure", fontsize=8)
    return save_figure(fig, out_dir, Path(filename).stem, formats=("png",))
