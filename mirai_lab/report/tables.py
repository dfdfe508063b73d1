"""Tables of finished sweeps: per-variant statistics, paired deltas against the baseline, speed-ups.

Numbers are computed once into a raw frame (written as table.csv, for machines) and only then
formatted into strings (table.md, table.tex, the report's reading lines). A value that is
missing stays missing ("n/a", an empty CSV cell) instead of being filled in, and a run that
did not finish is counted, not dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

# Final metrics shown per variant, in column order.
METRICS = ("fid_domain", "is_domain", "kid_domain", "precision_domain", "recall_domain", "class_acc", "val_nll",
           "structure_score")
# Metrics compared against the baseline (delta and speed-up); value = lower is better.
COMPARED = {"fid_domain": True, "val_nll": True}
LEVEL = 0.95
NA = "n/a"


def steps_to_reach(steps: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray, target: float,
                   lower_is_better: bool = True) -> float | None:
    """First step at which a curve reaches `target`, linearly interpolated between eval points.

    The speed-up compares how soon two curves get to the same value; evaluations are sparse,
    so the crossing is placed on the segment between the first pair of points that brackets
    the target. A point that equals the target (or the first point already past it) gives its
    own step exactly; a curve that never gets there gives None, never an extrapolation.
    """
    s = np.asarray(steps, dtype=float)
    v = np.asarray(values, dtype=float)
    keep = np.isfinite(s) & np.isfinite(v)
    order = np.argsort(s[keep], kind="stable")
    s, v = s[keep][order], v[keep][order]
    gap = (v - target) if lower_is_better else (target - v)  # <= 0: reached
    hits = np.flatnonzero(gap <= 0)
    if hits.size == 0:
        return None
    i = int(hits[0])
    if i == 0 or gap[i] == 0:
        return float(s[i])
    return float(s[i - 1] + (s[i] - s[i - 1]) * gap[i - 1] / (gap[i - 1] - gap[i]))


@dataclass(frozen=True)
class Interval:
    """Mean of paired differences with its t-interval; lo/hi are None when n < 2 (no spread to estimate)."""

    mean: float
    lo: float | None
    hi: float | None
    n: int

    @property
    def significant(self) -> bool:
        """True when the interval excludes zero."""
        return self.lo is not None and self.hi is not None and (self.lo > 0 or self.hi < 0)


def paired_interval(diffs: Sequence[float] | np.ndarray, level: float = LEVEL) -> Interval | None:
    """Student-t interval of the mean of per-seed differences (variant seed s minus baseline seed s).

    Pairing by seed removes the seed-to-seed variation the two runs share (same data order,
    same initial sampling noise), so a few seeds can resolve a real difference.
    """
    d = np.asarray(diffs, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return None
    mean = float(d.mean())
    if d.size < 2:
        return Interval(mean, None, None, 1)
    half = float(stats.t.ppf(0.5 + level / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
    return Interval(mean, mean - half, mean + half, int(d.size))


def mean_curve(curves: pd.DataFrame, label: str, metric: str) -> pd.Series:
    """Mean over the done seeds of one variant's curve of `metric`, indexed by step."""
    sel = curves[(curves["label"] == label) & (curves["metric"] == metric) & (curves["state"] == "done")]
    return sel.groupby("step")["value"].mean().sort_index()


def _finite(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame:
        return pd.Series(dtype=float)
    values = pd.to_numeric(frame[column], errors="coerce")
    return values[np.isfinite(values)]


def _stat_columns(done: pd.DataFrame, metric: str) -> dict[str, float]:
    values = _finite(done, metric)
    return {f"{metric}_mean": values.mean() if len(values) else np.nan,
            f"{metric}_std": values.std(ddof=1) if len(values) > 1 else np.nan,
            f"{metric}_n": len(values)}


def _delta_columns(done: pd.DataFrame, base_done: pd.DataFrame | None, metric: str) -> dict[str, float]:
    """Paired difference to the baseline; base_done is None for the baseline itself or a sweep without one."""
    if base_done is None or metric not in done or metric not in base_done:
        interval = None
    else:
        paired = pd.merge(done[["seed", metric]], base_done[["seed", metric]], on="seed", suffixes=("", "_base"))
        interval = paired_interval(pd.to_numeric(paired[metric], errors="coerce")
                                   - pd.to_numeric(paired[f"{metric}_base"], errors="coerce"))
    return {f"delta_{metric}": interval.mean if interval else np.nan,
            f"delta_{metric}_lo": interval.lo if interval and interval.lo is not None else np.nan,
            f"delta_{metric}_hi": interval.hi if interval and interval.hi is not None else np.nan,
            f"delta_{metric}_n": interval.n if interval else 0,
            f"delta_{metric}_significant": interval.significant if interval else False}


def _speedup_columns(curves: pd.DataFrame, label: str, base_label: str | None, metric: str,
                     lower_is_better: bool) -> dict[str, float]:
    """Baseline steps to its own final mean-curve value / this variant's steps to the same value."""
    base = mean_curve(curves, base_label, metric) if base_label is not None else pd.Series(dtype=float)
    if base.empty:
        return {f"target_{metric}": np.nan, f"steps_to_target_{metric}": np.nan, f"speedup_{metric}": np.nan}
    target = float(base.iloc[-1])
    base_steps = steps_to_reach(base.index, base.values, target, lower_is_better)
    own = mean_curve(curves, label, metric)
    steps = steps_to_reach(own.index, own.values, target, lower_is_better) if not own.empty else None
    speedup = base_steps / steps if steps and base_steps else np.nan  # a step of 0 gives no ratio
    return {f"target_{metric}": target, f"steps_to_target_{metric}": np.nan if steps is None else steps,
            f"speedup_{metric}": speedup}


def build_table(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """One row per variant (in the order of `runs`, baseline first within each sweep), raw numbers."""
    rows = []
    for (sweep, label), group in runs.groupby(["sweep", "label"], sort=False):
        done = group[group["state"] == "done"]
        in_sweep = runs[(runs["sweep"] == sweep) & runs["is_baseline"]]
        base_label = in_sweep["label"].iloc[0] if len(in_sweep) else None
        is_baseline = bool(group["is_baseline"].iloc[0])
        row: dict[str, object] = {
            "sweep": sweep, "variant": group["variant"].iloc[0], "label": label, "is_baseline": is_baseline,
            "n_runs": len(group), "n_done": len(done), "n_failed": int((group["state"] == "failed").sum()),
            "paper": group["paper"].iloc[0], "paper_metric": group["paper_metric"].iloc[0],
        }
        for metric in METRICS:
            row.update(_stat_columns(done, metric))
        base_done = in_sweep[in_sweep["state"] == "done"] if base_label is not None and not is_baseline else None
        for metric, lower in COMPARED.items():
            row.update(_delta_columns(done, base_done, metric))
            row.update(_speedup_columns(curves, label, base_label, metric, lower))
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- formatting


def num(value: float) -> str:
    """Four significant digits, or n/a for a missing value."""
    return f"{value:.4g}" if pd.notna(value) and math.isfinite(value) else NA


def format_stat(mean: float, std: float, n: int, n_expected: int | None = None) -> str:
    """`mean ± std`; n is shown when it is 1 (no spread) or short of the runs that finished."""
    if n == 0:
        return NA
    text = num(mean) if n == 1 else f"{num(mean)} ± {num(std)}"
    return f"{text} (n={n})" if n == 1 or (n_expected is not None and n != n_expected) else text


def format_interval(mean: float, lo: float, hi: float, n: int) -> str:
    """`+d [lo, hi]` for a paired difference; with one pair there is no interval and it says so."""
    if n == 0:
        return NA
    if n == 1:
        return f"{mean:+.3g} (n=1, no CI)"
    return f"{mean:+.3g} [{lo:+.3g}, {hi:+.3g}]"


def format_speedup(row: pd.Series, metric: str) -> str:
    """`1.8× (560 steps)`; "not reached" when the variant's mean curve never gets to the target."""
    if pd.isna(row[f"target_{metric}"]):
        return NA
    steps = row[f"steps_to_target_{metric}"]
    if pd.isna(steps):
        return "not reached"
    ratio = row[f"speedup_{metric}"]
    return f"{ratio:.2f}× ({steps:.0f} steps)" if pd.notna(ratio) else f"n/a ({steps:.0f} steps)"


def _delta_cell(row: pd.Series, metric: str) -> str:
    if row["is_baseline"]:
        return "ref"
    text = format_interval(*(row[f"delta_{metric}{s}"] for s in ("", "_lo", "_hi", "_n")))
    return text + "*" if row[f"delta_{metric}_significant"] else text


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """Strings for table.md / table.tex: each metric as mean ± std, the comparisons beside their metric."""
    with_paper = table["paper"].notna().any()
    out = pd.DataFrame({"variant": table["label"],
                        "n": [f"{d}/{r}" for d, r in zip(table["n_done"], table["n_runs"], strict=True)],
                        "failed": table["n_failed"].astype(int).astype(str)})
    for metric in METRICS:
        out[metric] = [format_stat(r[f"{metric}_mean"], r[f"{metric}_std"], r[f"{metric}_n"], r["n_done"])
                       for _, r in table.iterrows()]
        if metric == "fid_domain" and with_paper:
            out["paper"] = [num(v) for v in table["paper"]]
        if metric in COMPARED:
            out[f"Δ {metric} [95% CI]"] = [_delta_cell(r, metric) for _, r in table.iterrows()]
            out[f"speed-up {metric}"] = [format_speedup(r, metric) for _, r in table.iterrows()]
    return out


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (no tabulate dependency); pipes in cells are escaped."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    align = ["---"] + ["---:"] * (frame.shape[1] - 1)
    return "\n".join([line(frame.columns), line(align), *(line(r) for r in frame.itertuples(index=False))]) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$",
        "×": r"$\times$", "*": r"$^{*}$"}


def tex_escape(text: str) -> str:
    """Escape LaTeX specials (underscores in metric names above all) and map the few unicode symbols used."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def to_latex(frame: pd.DataFrame) -> str:
    """A booktabs tabular (\\toprule/\\midrule/\\bottomrule) to \\input into a paper."""
    def line(cells: Sequence[str]) -> str:
        return " & ".join(tex_escape(c) for c in cells) + r" \\"

    spec = "l" + "r" * (frame.shape[1] - 1)
    body = [line(r) for r in frame.itertuples(index=False)]
    return "\n".join([rf"\begin{{tabular}}{{{spec}}}", r"\toprule", line(frame.columns), r"\midrule", *body,
                      r"\bottomrule", r"\end{tabular}"]) + "\n"
