"""Figures of finished sweeps: convergence curves, final fid_domain bars, montages of the runs' images.

Figures are built on `matplotlib.figure.Figure` objects rendered by Agg, never through pyplot:
the report may be written inside a long-lived process (a notebook, a sweep worker), where the
pyplot state machine would switch the user's backend and keep every figure alive.
Each writer returns the file names it wrote, so the report links only what exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.image import imread

from mirai_lab.report.tables import COMPARED
from mirai_lab.runs.store import atomic_path, run_dir

DPI = 150


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


def plot_curves(curves: pd.DataFrame, order: Sequence[str], out_dir: Path) -> list[str]:
    """curves.png/.pdf: each compared metric against step, a line per variant, band = mean ± std over seeds."""
    done = curves[(curves["state"] == "done") & curves["metric"].isin(list(COMPARED))]
    if done.empty:
        return []
    fig = Figure(figsize=(5.5 * len(COMPARED), 4), layout="constrained")
    for ax, metric in zip(fig.subplots(1, len(COMPARED), squeeze=False)[0], COMPARED, strict=True):
        data = done[done["metric"] == metric]
        if data.empty:
            ax.text(0.5, 0.5, f"no {metric} in any curve", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        sns.lineplot(data=data, x="step", y="value", hue="label", hue_order=_present(order, data["label"]),
                     errorbar="sd", ax=ax)
        if (data["value"] > 0).all() and data["value"].max() > 100 * data["value"].min():
            ax.set_yscale("log")  # FID falls by orders of magnitude early on; a linear axis hides the end
        ax.set(title=f"{metric} (mean ± std over seeds)", xlabel="optimizer step", ylabel=metric)
        ax.legend(title=None, fontsize=8)
    return save_figure(fig, out_dir, "curves")


def plot_bars(runs: pd.DataFrame, order: Sequence[str], out_dir: Path) -> list[str]:
    """bars.png/.pdf: final fid_domain per variant, bar = mean, error bar = std, dots = the seeds."""
    if "fid_domain" not in runs:
        return []
    data = runs[(runs["state"] == "done") & np.isfinite(pd.to_numeric(runs["fid_domain"], errors="coerce"))]
    if data.empty:
        return []
    labels = _present(order, data["label"])
    fig = Figure(figsize=(max(4.0, 1.2 * len(labels) + 2), 4), layout="constrained")
    ax = fig.subplots()
    sns.barplot(data=data, x="label", y="fid_domain", order=labels, errorbar="sd", capsize=0.2, alpha=0.7, ax=ax)
    sns.stripplot(data=data, x="label", y="fid_domain", order=labels, color="black", size=4, ax=ax)
    ax.set(xlabel=None, ylabel="final fid_domain (lower is better)")
    ax.tick_params(axis="x", labelrotation=30)
    return save_figure(fig, out_dir, "bars")


def montage(runs: pd.DataFrame, order: Sequence[str], results: Path, filename: str, out_dir: Path) -> list[str]:
    """<filename> in out_dir: the runs' own <filename> side by side, the first done seed of each variant.

    The images are read, not regenerated, so each panel is exactly what its run produced
    (same classes per row, the seed named under the variant).
    """
    panels = []
    for label in order:
        done = runs[(runs["label"] == label) & (runs["state"] == "done")]
        for run in done.itertuples(index=False):
            path = run_dir(results, run.run_id) / filename
            if path.exists():
                panels.append((f"{label}\nseed {run.seed}", imread(path)))
                break
    if not panels:
        return []
    # a panel as wide as its image at DPI (so small grids are not blurred), within 2.5-8 inches
    width = min(max(2.5, max(img.shape[1] for _, img in panels) / DPI), 8.0)
    height = width * max(img.shape[0] / img.shape[1] for _, img in panels)
    fig = Figure(figsize=(width * len(panels), height + 0.5), layout="constrained")
    for ax, (title, img) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    return save_figure(fig, out_dir, Path(filename).stem, formats=("png",))
