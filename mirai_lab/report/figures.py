"""Figures of finished sweeps: the forest plot of paired differences, curves, differences over
steps, finals with the paired interval, labelled montages.

The forest plot (forest.png) is the headline: each compared row's per-seed paired differences,
mean and interval, coloured by verdict. Its intervals, and the ones finals.png draws, are the
table frame's own (`delta_<metric>_lo/hi`, from report/tables.py), never recomputed here, so a
figure cannot disagree with the verdict beside it. finals.png is kept for the raw final values
(what the seeds reached), with the paired interval placed at baseline mean + Δ.

Figures are built on `matplotlib.figure.Figure` objects rendered by Agg, never through pyplot:
the report may be written inside a long-lived process (a notebook, a sweep worker), where the
pyplot state machine would switch the user's backend and keep every figure alive.
Each writer returns the file names it wrote, so the report links only what exists.
A metric with a single evaluation step (the sample metrics, measured at the end only) has no
curve: a one-point panel says nothing the forest plot does not say better.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.image import imread
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from mirai_lab.analysis.collect import done
from mirai_lab.analysis.stats import COMPARED, by_seed, t_halfwidth
from mirai_lab.files.atomic import atomic_path
from mirai_lab.report.tables import level_text
from mirai_lab.results_dir import run_dir

DPI = 150
MAX_WIDTH_IN = 10.5  # 1575 px at DPI: the width a reader sees a figure at, without zooming
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
DASHES = ("-", "--", "-.", ":")
# floor kind -> (legend text, line style); drawn where final.json has them for the metric
FLOOR_LINES = {"real_vs_real": ("real vs real", ":"), "tokenizer_ceiling": ("tokenizer ceiling", "--")}
MAX_PANELS_PER_ROW = 4
NO_VERDICT = "no verdict"  # verdicts withheld (a plumbing budget), or a sweep without a baseline
# verdict -> colour, the same in every figure (colour-blind safe: blue/orange carry better/worse)
VERDICT_COLOURS = {"better": "#0072B2", "worse": "#D55E00", "equivalent": "#009E73", "unresolved": "#9a9a9a",
                   NO_VERDICT: "#4d4d4d"}
RESOLVED = ("better", "worse", "equivalent")
# an axis is narrowed to the resolved rows when some other row reaches further than this many times
# their span beyond them: one wide n=3 interval must not flatten the effects the table did resolve
CLIP_FACTOR = 1.0
INTERVAL_GID = "interval"  # the gid of the LineCollection of a forest panel's intervals (tests read it back)


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


def _integer_steps(ax: Axes) -> None:
    """Steps are counts: ticks at 7.5 or 12.5 read as a bug."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _stepped(curves: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The curve rows of `metric`, empty when it was evaluated at fewer than two steps."""
    data = curves[curves["metric"] == metric]
    return data if data["step"].nunique() >= 2 else data.iloc[:0]


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
    """Per step: mean, t band and n over seeds of a frame with step, seed and value columns."""
    g = group.groupby(["step", "seed"])["value"].mean().groupby("step")
    out = pd.DataFrame({"mean": g.mean(), "sd": g.std(ddof=1), "n": g.size()})
    half = np.where(out["n"] > 1, t_halfwidth(out["sd"].fillna(0.0), out["n"].clip(lower=2), level), np.nan)
    return out.assign(lo=out["mean"] - half, hi=out["mean"] + half)


def _focus(anchors: Sequence[float], every: Sequence[float], always: Sequence[float]
           ) -> tuple[float, float] | None:
    """Axis limits (one set for panels that must compare): around the anchor rows' values (and
    `always`: zero, the margins) when some value reaches CLIP_FACTOR spans past them, else around
    every value; None when there is nothing to show."""
    def _finite(values: Sequence[float]) -> np.ndarray:
        out = np.asarray([*values], dtype=float)
        return out[np.isfinite(out)]

    keep, every_, always_ = _finite(anchors), _finite(every), _finite(always)
    if not len(every_):
        return None
    keep = np.concatenate([keep if len(keep) else every_, always_])
    lo, hi = float(keep.min()), float(keep.max())
    span = (hi - lo) or 1.0
    if every_.min() >= lo - CLIP_FACTOR * span and every_.max() <= hi + CLIP_FACTOR * span:
        lo, hi = min(lo, float(every_.min())), max(hi, float(every_.max()))
        span = (hi - lo) or 1.0
    return lo - 0.08 * span, hi + 0.08 * span


# ---------------------------------------------------------------- paired differences (forest, finals)


def _verdict(value: object) -> str:
    return str(value) if isinstance(value, str) and value else NO_VERDICT


def forest_rows(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per compared variant and metric that has a difference: the table's own mean, interval,
    n and verdict (copied, never recomputed), the per-seed paired differences (none when the seeds
    did not pair: the table's interval is then Welch's) and the baseline's mean over seeds."""
    finished = done(runs)
    several = table["sweep"].nunique() > 1
    rows = []
    for _, row in table[~table["is_baseline"]].iterrows():
        base = table[(table["sweep"] == row["sweep"]) & table["is_baseline"]]
        if base.empty:
            continue
        in_sweep = finished[finished["sweep"] == row["sweep"]]
        mine = in_sweep[in_sweep["label"] == row["label"]]
        theirs = in_sweep[in_sweep["label"] == base["label"].iloc[0]]
        for metric in COMPARED:
            n = int(row[f"delta_{metric}_n"])
            if n == 0:
                continue
            v, b = by_seed(mine, metric), by_seed(theirs, metric)
            paired = bool(row[f"delta_{metric}_paired"])
            seeds = tuple(v[s] - b[s] for s in sorted(v.keys() & b.keys())) if paired else ()
            rows.append({"sweep": row["sweep"], "label": row["label"],
                         "name": f"{row['sweep']}: {row['label']}" if several else row["label"],
                         "metric": metric, "mean": float(row[f"delta_{metric}"]),
                         "lo": float(row[f"delta_{metric}_lo"]), "hi": float(row[f"delta_{metric}_hi"]),
                         "n": n, "paired": paired, "verdict": _verdict(row[f"verdict_{metric}"]),
                         "seeds": seeds, "base_mean": float(np.mean(list(b.values()))) if b else np.nan})
    return pd.DataFrame(rows, columns=["sweep", "label", "name", "metric", "mean", "lo", "hi", "n", "paired",
                                       "verdict", "seeds", "base_mean"])


def _anchors(verdicts: pd.Series, widths: pd.Series) -> pd.Series:
    """Which rows set an axis's limits: the resolved ones; where none is (too few seeds, or verdicts
    withheld at a plumbing budget), the rows at most 3x as wide as the narrowest, so one wide row
    still cannot flatten the rest."""
    resolved = verdicts.isin(RESOLVED)
    return resolved if resolved.any() else widths <= 3 * widths.min()


def _verdict_handles(verdicts: Sequence[str]) -> list[Patch]:
    return [Patch(color=VERDICT_COLOURS[v], label=v) for v in VERDICT_COLOURS if v in set(verdicts)]


def _clip_marks(ax: Axes, rows: pd.DataFrame, positions: Sequence[float], limits: tuple[float, float] | None,
                vertical: bool) -> bool:
    """Triangles at the axis edge where an interval runs past it; whether any did."""
    if limits is None:
        return False
    clipped = False
    for pos, r in zip(positions, rows.itertuples(index=False), strict=True):
        for end, edge, marker in ((r.lo, limits[0], "v" if vertical else "<"),
                                  (r.hi, limits[1], "^" if vertical else ">")):
            if np.isfinite(end) and (end < edge if edge == limits[0] else end > edge):
                xy = (pos, edge) if vertical else (edge, pos)
                ax.plot(*xy, marker=marker, color=VERDICT_COLOURS[r.verdict], markersize=8, clip_on=False,
                        zorder=5)
                clipped = True
    return clipped


def forest_figure(rows: pd.DataFrame, margins: Mapping[str, float], level: float) -> Figure:
    """A panel per compared metric, a line per variant: per-seed paired differences (dots), the mean
    (diamond) and the table's interval (bar), coloured by verdict; the ±margin band and zero."""
    metrics = [m for m in COMPARED if m in set(rows["metric"])]
    names = list(dict.fromkeys(rows["name"]))
    fig = Figure(figsize=(min(MAX_WIDTH_IN, 3.0 + 4.0 * len(metrics)), 1.9 + 0.42 * len(names)),
                 layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False, sharey=True)[0]
    any_clipped = False
    for ax, metric in zip(axes, metrics, strict=True):
        sel = rows[rows["metric"] == metric].set_index("name").reindex(names).dropna(subset=["metric"])
        y = np.array([names.index(name) for name in sel.index], dtype=float)
        margin = margins.get(metric)
        if margin:
            ax.axvspan(-margin, margin, color="0.9", zorder=0)
        ax.axvline(0.0, color="black", linewidth=0.8, zorder=1)
        colours = [VERDICT_COLOURS[v] for v in sel["verdict"]]
        for yi, seeds, colour in zip(y, sel["seeds"], colours, strict=True):
            if seeds:
                jitter = np.linspace(-0.14, 0.14, len(seeds)) if len(seeds) > 1 else np.zeros(1)
                ax.scatter(seeds, yi + jitter, s=9, color=colour, alpha=0.55, linewidths=0, zorder=2)
        bars = LineCollection([[(lo, yi), (hi, yi)] for lo, hi, yi in zip(sel["lo"], sel["hi"], y, strict=True)],
                              colors=colours, linewidths=3, zorder=3, gid=INTERVAL_GID)
        ax.add_collection(bars)
        ax.scatter(sel["mean"], y, marker="D", s=32, color=colours, edgecolors="black", linewidths=0.6, zorder=4)
        for yi, r in zip(y, sel.itertuples(index=False), strict=True):
            ci = f"[{r.lo:+.3g}, {r.hi:+.3g}]" if np.isfinite(r.lo) else "no CI"
            ax.annotate(f"{r.mean:+.3g} {ci} n={r.n}{'' if r.paired else ' unpaired'}", xy=(0.99, yi - 0.3),
                        xycoords=("axes fraction", "data"), ha="right", va="center", fontsize=6.5, color="0.25")
        seeds = [s for t in sel["seeds"] for s in t]
        resolved = sel[_anchors(sel["verdict"], sel["hi"] - sel["lo"])]
        limits = _focus([*resolved["lo"], *resolved["hi"], *[s for t in resolved["seeds"] for s in t]],
                        [*sel["lo"], *sel["hi"], *sel["mean"], *seeds],
                        [0.0, *((-margin, margin) if margin else ())])
        if limits is not None:
            ax.set_xlim(*limits)
        any_clipped |= _clip_marks(ax, sel, y, limits, vertical=False)
        ax.set(title=f"Δ {metric} vs baseline, paired by seed", xlabel=f"Δ {metric} (< 0: better)",
               ylim=(len(names) - 0.5, -0.7))
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.grid(axis="x", color="0.85", linewidth=0.5)
    handles = [*_verdict_handles(list(rows["verdict"])),
               Line2D([], [], marker="o", linestyle="", color="0.4", markersize=3, label="one seed's Δ"),
               Line2D([], [], marker="D", linestyle="-", color="0.4", markeredgecolor="black",
                      label=f"mean, {level_text(level)} interval (table.csv)"),
               Patch(color="0.9", label="± equivalence margin")]
    if any_clipped:
        handles.append(Line2D([], [], marker=">", linestyle="", color="0.4",
                              label="interval runs past the axis (numbers on the row)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5), fontsize=7, frameon=False)
    return fig


def plot_forest(table: pd.DataFrame, runs: pd.DataFrame, margins: Mapping[str, float], out_dir: Path,
                level: float) -> list[str]:
    """forest.png/.pdf, the headline figure: every compared row's paired difference to its baseline
    with the table's interval and verdict (forest_figure)."""
    rows = forest_rows(table, runs)
    if rows.empty:
        return []
    return save_figure(forest_figure(rows, margins, level), out_dir, "forest")


def plot_finals(runs: pd.DataFrame, table: pd.DataFrame, order: Sequence[str], base_label: str | None,
                out_dir: Path, level: float) -> list[str]:
    """finals.png/.pdf: final value per variant, the seeds as dots and their mean as a tick; beside
    each variant the table's paired interval of Δ, placed at baseline mean + Δ and coloured by its
    verdict, so a bar wholly below the baseline's line is a row the table calls better (lower is
    better). An unpaired t-interval of the variant alone is not drawn: it overlaps the baseline
    whenever the seeds vary together, and would contradict the verdict. Floors drawn where measured."""
    finished = done(runs)
    metrics = [m for m in COMPARED if m in finished and pd.to_numeric(finished[m], errors="coerce").notna().any()]
    if not metrics:
        return []
    labels = _present(order, finished["label"])
    rows = forest_rows(table, runs) if base_label is not None else forest_rows(table.iloc[:0], runs)
    width = min(MAX_WIDTH_IN / len(metrics), max(3.5, 0.45 * len(labels) + 1.5))
    fig = Figure(figsize=(width * len(metrics), 4.2), layout="constrained")
    for ax, metric in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics, strict=True):
        x = np.arange(len(labels))
        seeds: dict[str, pd.Series] = {}
        for i, label in enumerate(labels):
            seeds[label] = values = pd.to_numeric(finished.loc[finished["label"] == label, metric],
                                                  errors="coerce").dropna()
            if values.empty:
                continue
            jitter = np.linspace(-0.1, 0.1, len(values)) if len(values) > 1 else np.zeros(1)
            ax.scatter(x[i] - 0.12 + jitter, values, s=9, color="black", alpha=0.5, zorder=3)
            ax.plot([x[i] - 0.25, x[i] + 0.01], [values.mean()] * 2, color="black", linewidth=1.2, zorder=3)
            if label == base_label:
                ax.axhline(values.mean(), color="black", linewidth=0.8, linestyle="--",
                           label=f"baseline mean ({values.mean():.4g})")
        sel = rows[rows["metric"] == metric]
        placed = sel.assign(mean=sel["base_mean"] + sel["mean"], lo=sel["base_mean"] + sel["lo"],
                            hi=sel["base_mean"] + sel["hi"])
        xs = [x[labels.index(label)] + 0.15 for label in sel["label"]]
        for xi, r in zip(xs, placed.itertuples(index=False), strict=True):
            colour = VERDICT_COLOURS[r.verdict]
            if np.isfinite(r.lo):
                ax.plot([xi, xi], [r.lo, r.hi], color=colour, linewidth=3, zorder=4)
            ax.plot(xi, r.mean, marker="D", color=colour, markeredgecolor="black", markersize=5, zorder=5)
        resolved = placed[_anchors(placed["verdict"], placed["hi"] - placed["lo"])]
        limits = _focus([*resolved["lo"], *resolved["hi"], *(v for label in resolved["label"] for v in seeds[label]),
                         *(seeds.get(base_label or "", []) if len(resolved) else [])],
                        [*placed["lo"], *placed["hi"], *(v for values in seeds.values() for v in values)], [])
        if limits is not None:
            ax.set_ylim(*limits)
            if _clip_marks(ax, placed, xs, limits, vertical=True):
                ax.set_title(f"final {metric} (triangles: bar runs past the axis)", fontsize=8)
        _draw_floors(ax, _floors(runs, metric))
        n = finished.groupby("label")["seed"].nunique()
        ax.set_xticks(x, [f"{label}\n(n={n.get(label, 0)})" for label in labels], rotation=30, ha="right", fontsize=7)
        if not ax.get_title():
            ax.set_title(f"final {metric}", fontsize=8)
        ax.set_ylabel(f"{metric} (lower is better)")
        ax.legend(fontsize=6.5)
    fig.suptitle(f"dots = seeds, tick = their mean; bar = baseline mean + the table's paired Δ interval "
                 f"({level_text(level)}), colour = its verdict", fontsize=8)
    handles = _verdict_handles(list(rows["verdict"]))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=7, frameon=False)
    return save_figure(fig, out_dir, "finals")


# ---------------------------------------------------------------- robustness at neighbouring settings


def robustness_points(record: dict[str, Any]) -> pd.DataFrame:
    """A row per (variant, metric, position) of a robust.json record (experiments/robust.py): position 0
    is the sweep's own setting (its first look), then each varied setting in the record's order. A
    setting without a result for the row is left out; its position stays, so columns line up."""
    settings = record.get("settings") or []
    names = [str(record.get("original", "original")), *(s["name"] for s in settings)]
    rows = []
    for row in record.get("rows") or []:
        variant, metric = row["variant"], row["metric"]
        found = [row.get("original"), *(s["rows"].get(variant, {}).get(metric) for s in settings)]
        for x, (name, point) in enumerate(zip(names, found, strict=True)):
            if point:
                rows.append({"variant": variant, "metric": metric, "x": x, "setting": name,
                             "mean": float(point["mean"]), "lo": float(point["lo"]), "hi": float(point["hi"]),
                             "n": int(point["n"]), "verdict": _verdict(point["verdict"])})
    return pd.DataFrame(rows, columns=["variant", "metric", "x", "setting", "mean", "lo", "hi", "n", "verdict"])


def robustness_figure(points: pd.DataFrame, names: Sequence[str], margins: Mapping[str, float],
                      first_level: float, level: float) -> Figure:
    """A column of panels per compared metric, a row per variant; x = the sweep's own setting, then
    each varied one: the paired difference to the baseline (dot) and its interval (bar), coloured by
    verdict, with zero and the ±margin band."""
    metrics = [m for m in COMPARED if m in set(points["metric"])]
    variants = list(dict.fromkeys(points["variant"]))
    width = min(MAX_WIDTH_IN, max(6.0, 1.4 + len(metrics) * (1.4 + 0.9 * len(names))))
    fig = Figure(figsize=(width, 1.3 + 1.9 * len(variants)), layout="constrained")
    axes = fig.subplots(len(variants), len(metrics), squeeze=False, sharex=True)
    for j, metric in enumerate(metrics):
        margin = margins.get(metric)
        for i, variant in enumerate(variants):
            ax = axes[i, j]
            sel = points[(points["variant"] == variant) & (points["metric"] == metric)]
            if margin:
                ax.axhspan(-margin, margin, color="0.9", zorder=0)
            ax.axhline(0.0, color="black", linewidth=0.8, zorder=1)
            ax.axvline(0.5, color="0.6", linestyle=":", linewidth=0.8)
            for r in sel.itertuples(index=False):
                colour = VERDICT_COLOURS[r.verdict]
                if np.isfinite(r.lo) and np.isfinite(r.hi):
                    ax.errorbar(r.x, r.mean, yerr=[[r.mean - r.lo], [r.hi - r.mean]], fmt="none", ecolor=colour,
                                elinewidth=2.5, capsize=4, zorder=3)
                ax.plot(r.x, r.mean, marker="o", color=colour, markeredgecolor="black", markersize=6, zorder=4)
                ax.annotate(f"n={r.n}", xy=(r.x, r.hi if np.isfinite(r.hi) else r.mean), xytext=(0, 3),
                            textcoords="offset points", ha="center", va="bottom", fontsize=6.5, color="0.3")
            for x in sorted(set(range(len(names))) - set(sel["x"])):  # a setting with no result for the row
                ax.annotate("no result", xy=(x, 0.5), xycoords=("data", "axes fraction"), ha="center", fontsize=7,
                            color="0.4", style="italic")
            ax.set_xlim(-0.5, len(names) - 0.5)
            ax.margins(y=0.18)
            ax.grid(axis="y", color="0.85", linewidth=0.5)
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_title(f"Δ {metric} vs baseline (< 0: better)", fontsize=8.5)
            if j == 0:
                ax.set_ylabel(f"{variant}", fontsize=8.5, fontweight="bold")
        labels = [f"{names[0]}\n(first look)", *names[1:]]
        axes[-1, j].set_xticks(range(len(names)), labels, rotation=20, ha="right", fontsize=7.5)
    handles = [*_verdict_handles(list(points["verdict"])), Patch(color="0.9", label="± equivalence margin")]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=7, frameon=False)
    fig.suptitle(f"Paired Δ to the baseline at each setting: dot = mean, bar = interval, colour = verdict\n"
                 f"({level_text(first_level)} at the first look, {level_text(level)} at each varied setting, "
                 "a look of its own)", fontsize=8)
    return fig


def plot_robustness(record: dict[str, Any], margins: Mapping[str, float], out_dir: Path,
                    stem: str = "robustness") -> list[str]:
    """robustness.png/.pdf from a robust.json record (robustness_figure); nothing when it holds no row."""
    points = robustness_points(record)
    if points.empty:
        return []
    names = [str(record.get("original", "original")), *(s["name"] for s in record.get("settings") or [])]
    figure = robustness_figure(points, names, margins, float(record["first_level"]), float(record["level"]))
    return save_figure(figure, out_dir, stem)


# ---------------------------------------------------------------- over steps


def plot_curves(curves: pd.DataFrame, runs: pd.DataFrame, order: Sequence[str], out_dir: Path,
                level: float) -> list[str]:
    """curves.png/.pdf: each compared metric evaluated at two steps or more against step, a line per
    variant with markers at its evaluations and distinct dashes (two identical variants stay
    visible), a t band at the report's level, floors drawn where the runs measured them."""
    finished = done(curves)
    panels = [(m, _stepped(finished, m)) for m in COMPARED]
    panels = [(m, data) for m, data in panels if not data.empty]
    if not panels:
        return []
    fig = Figure(figsize=(min(MAX_WIDTH_IN, 5.5 * len(panels)), 4.2), layout="constrained")
    for ax, (metric, data) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
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
        ax.set(title=_band_title(metric, n_max, level) + "\n(unpaired; the paired Δ: differences.png)",
               xlabel="optimizer step", ylabel=f"{metric} (lower is better)")
        _integer_steps(ax)
        ax.legend(fontsize=7)
    return save_figure(fig, out_dir, "curves")


def _seed_differences(wide: pd.DataFrame, label: str, base_label: str) -> pd.DataFrame:
    """Variant minus baseline per seed on the steps both evaluated (columns seed, step, value)."""
    if label not in wide or base_label not in wide:
        return pd.DataFrame(columns=["seed", "step", "value"])
    return (wide[label] - wide[base_label]).dropna().rename("value").reset_index()


def plot_differences(curves: pd.DataFrame, table: pd.DataFrame, order: Sequence[str], base_label: str | None,
                     out_dir: Path, level: float, margins: Mapping[str, float]) -> list[str]:
    """differences.png/.pdf: a small panel per variant and metric (two steps or more): variant minus
    baseline per seed on the steps both evaluated (thin lines), their mean and t band, zero and the
    ±margin band; colour = the row's verdict in the table. Below zero = better than the baseline.

    The panels of a metric share y-limits set by the rows the table resolved, so their effects are
    readable; a row that reaches much further is clipped (triangles at the edge, "clipped" in its title)."""
    finished = done(curves)
    if base_label is None or finished.empty:
        return []
    variants = [label for label in _present(order, finished["label"]) if label != base_label]
    verdicts = {(r["label"], m): _verdict(r[f"verdict_{m}"]) for _, r in table.iterrows() for m in COMPARED}
    panels = []  # (metric, label, per-seed differences, mean and band)
    for metric in COMPARED:
        data = _stepped(finished, metric)
        wide = data.pivot_table(index=["seed", "step"], columns="label", values="value", aggfunc="mean")
        for label in variants:
            seeds = _seed_differences(wide, label, base_label)
            if not seeds.empty:
                panels.append((metric, label, seeds, _mean_band(seeds, level)))
    if not panels:
        return []
    cols = min(MAX_PANELS_PER_ROW, max(sum(p[0] == m for p in panels) for m in COMPARED))
    grid = [(m, [p for p in panels if p[0] == m]) for m in COMPARED]
    grid = [(m, ps) for m, ps in grid if ps]
    n_rows = sum(-(-len(ps) // cols) for _, ps in grid)
    fig = Figure(figsize=(min(MAX_WIDTH_IN, 2.6 * cols + 0.6), 2.3 * n_rows + 0.4), layout="constrained")
    axes = fig.subplots(n_rows, cols, squeeze=False)
    row = 0
    for metric, ps in grid:
        margin = margins.get(metric)
        rows = table.set_index("label").reindex([label for _, label, _, _ in ps])
        anchors = set(rows.index[_anchors(rows[f"verdict_{metric}"].map(_verdict),
                                          rows[f"delta_{metric}_hi"] - rows[f"delta_{metric}_lo"])])
        resolved = [v for _, label, s, b in ps if label in anchors
                    for v in (*s["value"], *b["lo"], *b["hi"])]
        every = [v for _, _, s, b in ps for v in (*s["value"], *b["lo"], *b["hi"])]
        limits = _focus(resolved, every, [0.0, *((-margin, margin) if margin else ())])
        cells = list(axes[row:row + -(-len(ps) // cols)].ravel())
        row += -(-len(ps) // cols)
        for ax, (_, label, seeds, band) in zip(cells, ps, strict=False):
            colour = VERDICT_COLOURS[verdicts.get((label, metric), NO_VERDICT)]
            if margin:
                ax.axhspan(-margin, margin, color="0.92", zorder=0)
            ax.axhline(0.0, color="black", linewidth=0.8)
            for _, one in seeds.groupby("seed"):
                ax.plot(one["step"], one["value"], color=colour, linewidth=0.6, alpha=0.45)
            ax.plot(band.index, band["mean"], color=colour, linewidth=1.8, marker="o", markersize=3)
            ax.fill_between(band.index, band["lo"], band["hi"], color=colour, alpha=0.15, linewidth=0)
            clipped = False
            if limits is not None:
                ax.set_ylim(*limits)
                outside = (band["lo"] < limits[0]) | (band["hi"] > limits[1])
                for step in band.index[outside]:
                    ax.plot(step, limits[0] if band.loc[step, "lo"] < limits[0] else limits[1], marker="v"
                            if band.loc[step, "lo"] < limits[0] else "^", color=colour, clip_on=False, zorder=5)
                clipped = bool(outside.any() | ~seeds["value"].between(*limits).all())
            n = int(band["n"].max())
            ax.set_title(f"Δ {metric}: {label}\n(n={n}, {verdicts.get((label, metric), NO_VERDICT)}"
                         f"{', clipped' if clipped else ''})", fontsize=7.5)
            ax.tick_params(labelsize=7)
            _integer_steps(ax)
        for ax in cells[len(ps):]:
            ax.set_axis_off()
        cells[0].set_ylabel(f"Δ {metric} (< 0: better)", fontsize=8)
    fig.suptitle(f"variant - {base_label} over steps\nthin = one seed, thick = mean, band {level_text(level)} CI,\n"
                 "grey = ± margin; colour = the table's verdict", fontsize=8)  # lines short enough for 2 panels
    fig.supxlabel("optimizer step", fontsize=8)
    return save_figure(fig, out_dir, "differences")


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


def _first_images(runs: pd.DataFrame, order: Sequence[str], results: Path, filename: str
                  ) -> list[tuple[str, Any, np.ndarray]]:
    """(label, run, image) of the first done seed of each variant that wrote `filename`, in `order`."""
    panels = []
    finished = done(runs)
    for label in order:
        for run in finished[finished["label"] == label].itertuples(index=False):
            path = run_dir(results, run.run_id) / filename
            if path.exists():
                panels.append((label, run, imread(path)))
                break
    return panels


def _samples_figure(panels: Sequence[tuple[str, Any, np.ndarray]]) -> Figure:
    """Sample grids side by side, MAX_PANELS_PER_ROW to a row, the class rows of the first column labelled
    with the class index (the embedded data sets carry no class names)."""
    cols = min(len(panels), MAX_PANELS_PER_ROW)
    rows = -(-len(panels) // cols)
    width = 3.2
    height = width * max(img.shape[0] / img.shape[1] for _, _, img in panels)
    fig = Figure(figsize=(width * cols + 0.8, (height + 0.6) * rows + 0.5), layout="constrained")
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
        ax.set_title(f"{label}, seed {run.seed}", fontsize=8)
        centres = _class_rows(img)
        if centres and i % cols == 0:
            ax.set_yticks(centres, [f"class {c}" for c in range(len(centres))], fontsize=7)
    fig.suptitle("samples: one row per class, columns = samples of that class", fontsize=9)
    return fig


# The structure montage is laid out in pixels at DPI: each run's structure.png (two panels, a colour bar,
# its own title; 1200 x 660 px) is copied 1:1 onto a row of its own, so its text stays as sharp as it is
# in the run's folder (shrunk into a grid cell, that text would be unreadable).
STRUCTURE_PAD_PX = 24  # the margins, and the gap between one map and the next variant's label
STRUCTURE_LABEL_PX = 40  # the band above each map for its variant's label
STRUCTURE_MIN_WIDTH_PX = 1000  # the title's width where the maps are narrower, so it keeps to a few lines
STRUCTURE_TITLE_PT, STRUCTURE_LABEL_PT = 10.0, 11.0
STRUCTURE_TITLE = ("2D-structure maps: one row per variant (its first finished seed), each map at its run's own size.",
                   "Left: the block's cell states (mean over the images) embedded in 3-D and shown as RGB: similar "
                   "colour = similar state, smooth colour regions = 2D structure.",
                   "Right: each cell's cosine similarity to its neighbouring cells minus the mean over all pairs of "
                   "cells, on the colour bar beside it (red: more like its neighbours than a random cell).")


def _wrap(paragraphs: Sequence[str], width_px: float, points: float) -> list[str]:
    """Each paragraph broken into lines no wider than `width_px` at `points` as Agg draws them at DPI (measured,
    so a line is neither cut off at the figure's edge nor broken early); a paragraph starts on a line of its own."""
    renderer = FigureCanvasAgg(Figure(dpi=DPI)).get_renderer()
    font = FontProperties(size=points)
    lines = []
    for text in paragraphs:
        line = ""
        for word in text.split():
            longer = f"{line} {word}" if line else word
            if line and renderer.get_text_width_height_descent(longer, font, ismath=False)[0] > width_px:
                lines.append(line)
                longer = word
            line = longer
        lines.append(line)
    return lines


def structure_montage_figure(panels: Sequence[tuple[str, Any, np.ndarray]]) -> Figure:
    """The runs' structure maps one below the other, each at its own pixel size (figimage, no resampling),
    each under a label with its variant, seed and block, below a title saying what the panels show."""
    line_px = 1.3 * STRUCTURE_TITLE_PT * DPI / 72
    width = max(STRUCTURE_MIN_WIDTH_PX, *(img.shape[1] for _, _, img in panels)) + 2 * STRUCTURE_PAD_PX
    title = _wrap(STRUCTURE_TITLE, width - 2 * STRUCTURE_PAD_PX, STRUCTURE_TITLE_PT)
    title_px = int(np.ceil(len(title) * line_px)) + STRUCTURE_PAD_PX
    height = title_px + sum(STRUCTURE_LABEL_PX + img.shape[0] + STRUCTURE_PAD_PX for _, _, img in panels)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    fig.text(0.5, 1 - (STRUCTURE_PAD_PX / 2) / height, "\n".join(title), ha="center", va="top",
             fontsize=STRUCTURE_TITLE_PT, linespacing=1.3)
    top = height - title_px  # pixels from the bottom edge, as figimage and figure fractions count them
    for label, run, img in panels:
        name = f"{label}, seed {run.seed}"
        if pd.notna(getattr(run, "structure_block", np.nan)):
            name += f", block {int(run.structure_block)}"
        fig.text(STRUCTURE_PAD_PX / width, (top - STRUCTURE_LABEL_PX / 2) / height, name, ha="left", va="center",
                 fontsize=STRUCTURE_LABEL_PT, fontweight="bold")
        top -= STRUCTURE_LABEL_PX + img.shape[0]
        x = (width - img.shape[1]) // 2
        fig.figimage(img, xo=x, yo=top, origin="upper", cmap="gray" if img.ndim == 2 else None)
        top -= STRUCTURE_PAD_PX
    return fig


def montage(runs: pd.DataFrame, order: Sequence[str], results: Path, filename: str, out_dir: Path) -> list[str]:
    """<filename> in out_dir: the runs' own <filename>, the first done seed of each variant.

    The images are read, not regenerated, so each panel is exactly what its run produced. Sample grids
    (small) share a grid of panels with their class rows labelled (_samples_figure); structure maps
    (two panels with a colour bar and text) are kept at their own pixel size (structure_montage_figure).
    """
    panels = _first_images(runs, order, results, filename)
    if not panels:
        return []
    is_samples = filename.startswith("samples")
    fig = _samples_figure(panels) if is_samples else structure_montage_figure(panels)
    return save_figure(fig, out_dir, Path(filename).stem, formats=("png",))
