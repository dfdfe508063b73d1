"""Tables of finished sweeps: per-variant statistics, paired differences with verdicts, speed-ups.

Numbers are computed once into a raw frame (written as table.csv, for machines) and only then
formatted into strings (table.md, table.tex, the report's reading lines). A value that is
missing stays missing ("n/a", an empty CSV cell) instead of being filled in, and a run that
did not finish is counted, not dropped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from mirai_lab.analysis.collect import done
from mirai_lab.analysis.stats import (
    COMPARED,
    LEVEL,
    MIN_SEEDS,
    Difference,
    Verdict,
    adjusted_verdicts,
    by_seed,
    curves_by_seed,
    paired_difference,
    seeds_to_resolve,
    speedup,
    verdict,
)
from mirai_lab.metrics import FID, SHOWN
from mirai_lab.runs.state import RunState

METRICS = SHOWN  # final metrics shown per variant, in column order (mirai_lab/metrics.py)
NA = "n/a"


def _stat_columns(finished: pd.DataFrame, metric: str) -> dict[str, float]:
    values = pd.Series(list(by_seed(finished, metric).values()), dtype=float)
    return {f"{metric}_mean": values.mean() if len(values) else np.nan,
            f"{metric}_std": values.std(ddof=1) if len(values) > 1 else np.nan,
            f"{metric}_n": len(values)}


def _difference(finished: pd.DataFrame, base_done: pd.DataFrame | None, metric: str, level: float
                ) -> Difference | None:
    if base_done is None:
        return None
    return paired_difference(by_seed(finished, metric), by_seed(base_done, metric), level)


def _delta_columns(diff: Difference | None, compared: bool, metric: str, margin: float | None,
                   found: Verdict | None = None) -> dict[str, object]:
    """Difference to the baseline (`compared` is False for the baseline itself or a sweep without
    one); `found` replaces the row's own verdict when a table-wide adjustment decided it."""
    if compared and found is None:
        found = verdict(diff, COMPARED[metric], margin)
    if not compared:
        found = None
    needed = seeds_to_resolve(diff, margin) if found is Verdict.UNRESOLVED else None
    return {f"delta_{metric}": diff.mean if diff else np.nan,
            f"delta_{metric}_lo": diff.lo if diff else np.nan,
            f"delta_{metric}_hi": diff.hi if diff else np.nan,
            f"delta_{metric}_n": diff.n if diff else 0,
            f"delta_{metric}_paired": diff.paired if diff else None,
            f"delta_{metric}_sd": diff.sd if diff else np.nan,
            f"delta_{metric}_half": diff.half if diff else np.nan,
            f"delta_{metric}_mde": diff.mde if diff else np.nan,
            f"verdict_{metric}": found.value if found else None,
            f"seeds_needed_{metric}": needed if needed is not None else np.nan}


def _speedup_columns(curves: pd.DataFrame, label: str, base_label: str | None, metric: str,
                     level: float) -> dict[str, float]:
    result = None
    if base_label is not None and label != base_label:
        result = speedup(curves_by_seed(curves, base_label, metric), curves_by_seed(curves, label, metric),
                         COMPARED[metric], level)
    return {f"speedup_{metric}": result.mean if result else np.nan,
            f"speedup_{metric}_lo": result.lo if result else np.nan,
            f"speedup_{metric}_hi": result.hi if result else np.nan,
            f"speedup_{metric}_reached": result.reached if result else 0,
            f"speedup_{metric}_n": result.n if result else 0}


def build_table(runs: pd.DataFrame, curves: pd.DataFrame, level: float, margins: Mapping[str, float],
                withheld: bool = False, adjust: str = "none", alpha: float = 1 - LEVEL) -> pd.DataFrame:
    """One row per variant (in the order of `runs`, baseline first within each sweep), raw numbers.

    `withheld`: the budget is plumbing only (report/write.py, `plumbing_reason`): the intervals stay,
    the verdicts and seed counts are left out. `adjust` (stats.ADJUSTMENTS): verdicts with
    table-wide error control at `alpha` over each sweep's compared rows."""
    rows = []
    diffs: dict[tuple[int, str], Difference | None] = {}
    for (sweep, label), group in runs.groupby(["sweep", "label"], sort=False):
        finished = done(group)
        in_sweep = runs[(runs["sweep"] == sweep) & runs["is_baseline"]]
        base_label = in_sweep["label"].iloc[0] if len(in_sweep) else None
        is_baseline = bool(group["is_baseline"].iloc[0])
        row: dict[str, object] = {
            "sweep": sweep, "variant": group["variant"].iloc[0], "label": label, "is_baseline": is_baseline,
            "n_runs": len(group), "n_done": len(finished),
            "n_failed": int((group["state"] == RunState.FAILED.value).sum()),
            "paper": group["paper"].iloc[0], "paper_metric": group["paper_metric"].iloc[0], "level": level,
        }
        for metric in METRICS:
            row.update(_stat_columns(finished, metric))
        base_done = done(in_sweep) if base_label is not None and not is_baseline else None
        for metric in COMPARED:
            diffs[len(rows), metric] = diff = _difference(finished, base_done, metric, level)
            row.update(_delta_columns(diff, base_done is not None, metric, margins.get(metric)))
            row.update(_speedup_columns(curves, label, base_label, metric, level))
        if withheld:
            for metric in COMPARED:
                row[f"verdict_{metric}"], row[f"seeds_needed_{metric}"] = None, np.nan
        row["verdicts_withheld"] = withheld
        row["adjust"] = adjust
        rows.append(row)
    if adjust != "none" and not withheld:
        _adjust(rows, diffs, margins, adjust, alpha)
    return pd.DataFrame(rows)


def _adjust(rows: list[dict[str, object]], diffs: Mapping[tuple[int, str], Difference | None],
            margins: Mapping[str, float], adjust: str, alpha: float) -> None:
    """Replace each compared row's verdict by the table-wide one, one family per sweep and metric."""
    for sweep in dict.fromkeys(r["sweep"] for r in rows):
        family = [i for i, r in enumerate(rows) if r["sweep"] == sweep and r[f"verdict_{next(iter(COMPARED))}"]]
        for metric in COMPARED:
            found = adjusted_verdicts([diffs[i, metric] for i in family], COMPARED[metric], margins.get(metric),
                                      alpha, adjust)
            for i, verdict_ in zip(family, found, strict=True):
                rows[i].update(_delta_columns(diffs[i, metric], True, metric, margins.get(metric), verdict_))


# ---------------------------------------------------------------- formatting


def num(value: float) -> str:
    """Four significant digits, or n/a for a missing value."""
    return f"{value:.4g}" if pd.notna(value) and math.isfinite(value) else NA


def level_text(level: float) -> str:
    """0.95 -> '95%', 0.99643 -> '99.64%'."""
    return f"{100 * level:.4g}%"


def format_stat(mean: float, std: float, n: int, n_expected: int | None = None) -> str:
    """`mean ± std`; n is shown when it is 1 (no spread) or short of the runs that finished."""
    if n == 0:
        return NA
    text = num(mean) if n == 1 else f"{num(mean)} ± {num(std)}"
    return f"{text} (n={n})" if n == 1 or (n_expected is not None and n != n_expected) else text


def format_interval(mean: float, lo: float, hi: float, n: int, paired: bool | None = True) -> str:
    """`+d [lo, hi]` for a difference; one pair gives no interval and says so; unpaired is marked."""
    if n == 0:
        return NA
    if n == 1:
        return f"{mean:+.3g} (n=1, no CI)"
    return f"{mean:+.3g} [{lo:+.3g}, {hi:+.3g}]" + ("" if paired is not False else " (unpaired)")


def format_verdict(row: pd.Series, metric: str, margin: float | None) -> str:
    """better / worse / equivalent (±margin) / unresolved (needs N seeds)."""
    found = row[f"verdict_{metric}"]
    if row.get("verdicts_withheld"):
        return "none (plumbing budget)"
    if not isinstance(found, str):
        return NA
    n = row[f"delta_{metric}_n"]
    if found == Verdict.UNRESOLVED and 0 < n < MIN_SEEDS:
        return f"no verdict (n={n:.0f}; needs >= {MIN_SEEDS} paired seeds)"
    if found == Verdict.EQUIVALENT:
        return f"equivalent (±{margin:g})"
    if found == Verdict.UNRESOLVED:
        needed = row[f"seeds_needed_{metric}"]
        return f"unresolved (needs {needed:.0f} seeds)" if pd.notna(needed) else "unresolved"
    return found


def format_speedup(row: pd.Series, metric: str) -> str:
    """`1.8× [1.2, 2.6] (3/3)`: geometric mean over seeds, t-interval on log speed-up, seeds reached of compared."""
    n, reached = int(row[f"speedup_{metric}_n"]), int(row[f"speedup_{metric}_reached"])
    if n == 0:
        return NA
    if reached == 0:
        return f"not reached (0/{n})"
    text = f"{row[f'speedup_{metric}']:.2f}×"
    if reached > 1:
        text += f" [{row[f'speedup_{metric}_lo']:.2f}, {row[f'speedup_{metric}_hi']:.2f}]"
    return f"{text} ({reached}/{n} reached)"


def _delta_cell(row: pd.Series, metric: str) -> str:
    if row["is_baseline"]:
        return "ref"
    return format_interval(*(row[f"delta_{metric}{s}"] for s in ("", "_lo", "_hi", "_n", "_paired")))


def _ref_or(row: pd.Series, text: str) -> str:
    return "ref" if row["is_baseline"] else text


def display_table(table: pd.DataFrame, margins: Mapping[str, float]) -> pd.DataFrame:
    """Strings for table.md / table.tex: the compared metrics with their statistics, then the rest."""
    with_paper = table["paper"].notna().any()
    level = level_text(float(table["level"].iloc[0])) if len(table) else level_text(0.95)
    rows = list(table.iterrows())
    out = pd.DataFrame({"variant": table["label"],
                        "n": [f"{d}/{r}" for d, r in zip(table["n_done"], table["n_runs"], strict=True)],
                        "failed": table["n_failed"].astype(int).astype(str)})
    for metric in METRICS:
        out[metric] = [format_stat(r[f"{metric}_mean"], r[f"{metric}_std"], r[f"{metric}_n"], r["n_done"])
                       for _, r in rows]
        if metric == FID and with_paper:
            out["paper"] = [num(v) for v in table["paper"]]
        if metric in COMPARED:
            out[f"Δ {metric} [{level} CI]"] = [_delta_cell(r, metric) for _, r in rows]
            out[f"± {metric}"] = [_ref_or(r, num(r[f"delta_{metric}_half"])) for _, r in rows]
            out[f"MDE {metric}"] = [_ref_or(r, num(r[f"delta_{metric}_mde"])) for _, r in rows]
            out[f"verdict {metric}"] = [_ref_or(r, format_verdict(r, metric, margins.get(metric))) for _, r in rows]
            out[f"speed-up {metric}"] = [_ref_or(r, format_speedup(r, metric)) for _, r in rows]
    return out


# Columns of table.tex: what a paper table shows (the full set stays in table.md and table.csv).
LATEX_COLUMNS = ("variant", "n", "val_nll", "Δ val_nll", "verdict val_nll", "speed-up val_nll", "fid_domain",
                 "paper", "Δ fid_domain", "verdict fid_domain")


def latex_columns(frame: pd.DataFrame) -> list[str]:
    """The LATEX_COLUMNS present in a display frame (a Δ column is matched by prefix: its name holds the level)."""
    chosen = []
    for wanted in LATEX_COLUMNS:
        chosen += [c for c in frame.columns if c == wanted or (wanted.startswith("Δ") and c.startswith(wanted + " ["))]
    return chosen


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (no tabulate dependency); pipes in cells are escaped."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    align = ["---"] + ["---:"] * (frame.shape[1] - 1)
    return "\n".join([line(frame.columns), line(align), *(line(r) for r in frame.itertuples(index=False))]) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$",
        "×": r"$\times$"}


def tex_escape(text: str) -> str:
    """Escape LaTeX specials (underscores in metric names above all) and map the few unicode symbols used."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def to_latex(frame: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs table float (caption, label) to \\input into a paper."""
    def line(cells: Sequence[str]) -> str:
        return " & ".join(tex_escape(c) for c in cells) + r" \\"

    spec = "l" + "r" * (frame.shape[1] - 1)
    body = [line(r) for r in frame.itertuples(index=False)]
    return "\n".join([r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{tex_escape(caption)}}}",
                      rf"\label{{{label}}}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule", line(frame.columns),
                      r"\midrule", *body, r"\bottomrule", r"\end{tabular}", r"\end{table}"]) + "\n"
