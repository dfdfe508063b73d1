"""Tables of finished sweeps: per-variant statistics, paired differences with verdicts, speed-ups.

Numbers are computed once into a raw frame (written as table.csv, for machines, with every
detail) and only then formatted into strings: table.md and table.tex show only what a verdict
rests on (`verdict_table`, `markdown_table`, `latex_table`), the report's full table and reading
lines the rest. A value that is missing stays missing ("n/a", an empty CSV cell) instead of
being filled in, and a run that did not finish is counted, not dropped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

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
    difference_to_baseline,
    seeds_to_resolve,
    speedup,
    verdict,
)
from mirai_lab.metrics import FID, SHOWN, VAL_NLL
from mirai_lab.runs.state import RunState

METRICS = SHOWN  # final metrics shown per variant, in column order (mirai_lab/metrics.py)
NA = "n/a"


def _stat_columns(finished: pd.DataFrame, metric: str) -> dict[str, float]:
    values = pd.Series(list(by_seed(finished, metric).values()), dtype=float)
    return {f"{metric}_mean": values.mean() if len(values) else np.nan,
            f"{metric}_std": values.std(ddof=1) if len(values) > 1 else np.nan,
            f"{metric}_n": len(values)}


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
            diffs[len(rows), metric] = diff = difference_to_baseline(finished, base_done, metric, level)
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


def format_stat(mean: float, std: float, n: int, n_expected: int | None = None, places: int | None = None) -> str:
    """`mean ± std` (four significant digits, or `places` decimals); n is shown when it is 1 (no spread)
    or short of the runs that finished."""
    if n == 0:
        return NA

    def fmt(value: float) -> str:
        return num(value) if places is None else f"{value:.{places}f}"

    text = fmt(mean) if n == 1 else f"{fmt(mean)} ± {fmt(std)}"
    return f"{text} (n={n})" if n == 1 or (n_expected is not None and n != n_expected) else text


def decimals(widths: Iterable[float], digits: int = 2) -> int:
    """Decimals that show the smallest positive width with `digits` significant digits (0 to 6).

    A column of differences printed with the decimals of its narrowest interval shows every row
    to the same place, and no row with more digits than its interval supports. No usable width
    gives 3."""
    usable = [abs(w) for w in widths if pd.notna(w) and math.isfinite(w) and w != 0]
    if not usable:
        return 3
    return min(6, max(0, digits - 1 - math.floor(math.log10(min(usable)))))


def signed(value: float, places: int | None = None) -> str:
    """`+0.053` / `-0.47`: three significant digits, or `places` decimals (a value that rounds to 0 is `+0...`)."""
    if places is None:
        return f"{value:+.3g}"
    text = f"{value:+.{places}f}"
    return "+" + text[1:] if float(text) == 0 else text


def format_interval(mean: float, lo: float, hi: float, n: int, paired: bool | None = True,
                    places: int | None = None) -> str:
    """`+d [lo, hi]` for a difference (three significant digits, or `places` decimals); one pair gives
    no interval and says so; unpaired is marked."""
    if n == 0:
        return NA
    if n == 1:
        return f"{signed(mean, places)} (n=1, no CI)"
    return (f"{signed(mean, places)} [{endpoint(lo, places)}, {endpoint(hi, places)}]"
            + (" (unpaired)" if unpaired(paired) else ""))


def endpoint(value: float, places: int | None) -> str:
    """An interval's end: as `signed`, but one that is not 0 and rounds to 0 at `places` gets the
    decimals that show its first digit (`-0.002`), so an interval that ends just short of zero never
    reads as one that touches it."""
    if places is not None and value != 0:
        while float(f"{value:.{places}f}") == 0 and places < 12:
            places += 1
        return f"{value:+.{places}f}"
    return signed(value, places)


def unpaired(paired: object) -> bool:
    """Whether a `delta_<metric>_paired` cell says unpaired (False, numpy's too; None and NaN: no difference)."""
    return paired is not None and not (isinstance(paired, float) and math.isnan(paired)) and not bool(paired)


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


def _delta_cell(row: pd.Series, metric: str, places: int | None = None) -> str:
    if row["is_baseline"]:
        return "ref"
    return format_interval(*(row[f"delta_{metric}{s}"] for s in ("", "_lo", "_hi", "_n", "_paired")), places=places)


def _ref_or(row: pd.Series, text: str) -> str:
    return "ref" if row["is_baseline"] else text


def display_table(table: pd.DataFrame, margins: Mapping[str, float]) -> pd.DataFrame:
    """Strings for the report's full table: every shown metric, the compared ones with their statistics
    (table.md and table.tex show only the verdicts: `verdict_table`, `latex_table`)."""
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


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (no tabulate dependency); pipes in cells are escaped."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    align = ["---"] + ["---:"] * (frame.shape[1] - 1)
    return "\n".join([line(frame.columns), line(align), *(line(r) for r in frame.itertuples(index=False))]) + "\n"


# ---------------------------------------------------------------- table.md and table.tex: the verdicts


def verdict_metrics() -> list[str]:
    """The compared metrics in the order the compact tables show them: val_nll first."""
    return sorted(COMPARED, key=lambda metric: metric != VAL_NLL)


def _places(table: pd.DataFrame, prefix: str) -> int:
    """Decimals of one column of differences or statistics (`decimals`): from the compared rows'
    interval half-widths, else (no interval anywhere) from the values themselves."""
    delta = prefix.startswith("delta_")
    rows = table[~table["is_baseline"]] if delta else table
    half = rows[f"{prefix}_half" if delta else f"{prefix}_std"]
    return decimals(half) if half.notna().any() else decimals(rows[prefix if delta else f"{prefix}_mean"])


def _outcomes(row: pd.Series, confirmations: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """metric -> replicated / not replicated / inconclusive for this row (experiments/confirm.py)."""
    record = confirmations.get(row["sweep"]) or {}
    found = (record.get("rows") or {}).get(row["variant"]) or {}
    return {metric: found[metric]["outcome"] for metric in verdict_metrics() if metric in found}


def _informative(frame: pd.DataFrame, keep: Sequence[str]) -> pd.DataFrame:
    """The frame without its columns that say nothing (every cell n/a, ref or empty), `keep` excepted."""
    empty = {NA, "ref", ""}
    return frame[[c for c in frame.columns if c in keep or not frame[c].isin(empty).all()]]


def verdict_table(table: pd.DataFrame, margins: Mapping[str, float],
                  confirmations: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Strings for table.md: variant, n, then per compared metric (val_nll first) the difference to
    the baseline with its interval and its verdict, the speed-ups, and the confirmation on fresh seeds.

    Each difference column has one number of decimals (`decimals` of its half-widths). A column
    with nothing in it is left out (a speed-up never reached, verdicts withheld: the note above the
    table says why, a sweep without a baseline: its rows show their compared metrics instead).
    Everything else is in table.csv."""
    confirmations = confirmations or {}
    level = level_text(float(table["level"].iloc[0])) if len(table) else level_text(LEVEL)
    rows = [r for _, r in table.iterrows()]
    withheld = bool(table["verdicts_withheld"].any()) if len(table) else False
    out = pd.DataFrame({"variant": table["label"],
                        "n": [f"{r['n_done']}/{r['n_runs']}" + (f", {r['n_failed']} failed" if r["n_failed"] else "")
                              for r in rows]})
    for metric in verdict_metrics():
        places = _places(table, f"delta_{metric}")
        out[f"Δ {metric} [{level} CI]"] = [_delta_cell(r, metric, places) for r in rows]
        if not withheld:
            out[f"verdict {metric}"] = [_ref_or(r, format_verdict(r, metric, margins.get(metric))) for r in rows]
    for metric in verdict_metrics():
        out[f"speed-up {metric}"] = [_ref_or(r, format_speedup(r, metric)) for r in rows]
    found = [_outcomes(r, confirmations) for r in rows]
    if any(found):
        out["fresh seeds"] = [_ref_or(r, "; ".join(f"{m} {o}" for m, o in f.items()) or NA)
                              for r, f in zip(rows, found, strict=True)]
    out = _informative(out, ["variant", "n"])
    if not any(c.startswith("Δ ") for c in out.columns):  # no comparison at all: the values themselves
        for metric in verdict_metrics():
            places = _places(table, metric)
            out[metric] = [format_stat(r[f"{metric}_mean"], r[f"{metric}_std"], r[f"{metric}_n"], places=places)
                           for r in rows]
        out = _informative(out, ["variant", "n"])
    return out.reset_index(drop=True)


def markdown_table(table: pd.DataFrame, margins: Mapping[str, float], notes: Sequence[str] = (),
                   confirmations: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """table.md: the notes every verdict rests on (precision, budget, adjustment), one paragraph each,
    then `verdict_table`."""
    return "".join(f"{note}\n\n" for note in notes) + to_markdown(verdict_table(table, margins, confirmations))


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$",
        "×": r"$\times$"}


def tex_escape(text: str) -> str:
    """Escape LaTeX specials (underscores in metric names above all) and map the few unicode symbols used."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def tex_from_markdown(text: str) -> str:
    """A note written for table.md in LaTeX: `**bold**` and `code` kept as \textbf and \texttt, the rest escaped."""
    parts = re.split(r"(\*\*[^*]+\*\*|`[^`]+`)", text)
    out = []
    for part in parts:
        if part.startswith("**") and part.endswith("**") and len(part) > 4:
            out.append(rf"\textbf{{{tex_escape(part[2:-2])}}}")
        elif part.startswith("`") and part.endswith("`") and len(part) > 2:
            out.append(rf"\texttt{{{tex_escape(part[1:-1])}}}")
        else:
            out.append(tex_escape(part))
    return "".join(out)


# verdicts and confirmations as marks on the difference (explained in the caption, which lists only the marks used)
EQUIVALENT_MARK = r"$^{=}$"
CONFIRM_MARKS = {"replicated": r"$^\dagger$", "not replicated": r"$^\ddagger$", "inconclusive": r"$^\circ$"}
UNPAIRED_MARK = r"$^*$"


def _tex_delta(row: pd.Series, metric: str, places: int, withheld: bool, outcome: str | None) -> str:
    r"""`$-0.053 \pm 0.029$`, bold when better or worse, marked when equivalent, unpaired or confirmed."""
    if row["is_baseline"]:
        return "ref"
    n = row[f"delta_{metric}_n"]
    if n == 0:
        return NA
    mean = signed(row[f"delta_{metric}"], places)
    text = f"${mean}$ (n=1)" if n == 1 else rf"${mean} \pm {row[f'delta_{metric}_half']:.{places}f}$"
    found = None if withheld else row[f"verdict_{metric}"]
    if found in (Verdict.BETTER, Verdict.WORSE):
        text = r"\boldmath" + text
    marks = [EQUIVALENT_MARK if found == Verdict.EQUIVALENT else "",
             UNPAIRED_MARK if unpaired(row[f"delta_{metric}_paired"]) else "",
             CONFIRM_MARKS[outcome] if outcome else ""]
    return text + "".join(marks)


def _tex_legend(table: pd.DataFrame, margins: Mapping[str, float], metrics: list[str], withheld: bool,
                outcomes: list[dict[str, str]]) -> list[str]:
    """The caption's sentences on what the cells mean: only the marks that occur."""
    level = level_text(float(table["level"].iloc[0]))
    compared = table[~table["is_baseline"]]
    legend = [rf"$\Delta$ $\pm$ the half-width of its {tex_escape(level)} interval; $n$: seeds done."]
    if not withheld:
        lower = [m for m in metrics if COMPARED[m]]
        higher = [m for m in metrics if not COMPARED[m]]
        direction = "; ".join(f"{word} is better for {', '.join(map(tex_escape, names))}"
                              for word, names in (("lower", lower), ("higher", higher)) if names)
        text = (f"Bold: the interval excludes 0, so the variant is better or worse ({direction}); otherwise "
                f"unresolved, and no verdict below {MIN_SEEDS} paired seeds.")
        if any((compared[f"verdict_{m}"] == Verdict.EQUIVALENT).any() for m in metrics):
            margin_text = ", ".join(rf"$\pm${margins[m]:g} ({tex_escape(m)})" for m in metrics if m in margins)
            text += rf" {EQUIVALENT_MARK}: equivalent, the interval inside {margin_text}."
        legend.append(text)
    if any(unpaired(r[f"delta_{m}_paired"]) for _, r in compared.iterrows() for m in metrics):
        legend.append(rf"{UNPAIRED_MARK}: unpaired (Welch).")
    used = {o for found in outcomes for o in found.values()}
    if used:
        legend.append("On fresh seeds: " + ", ".join(f"{CONFIRM_MARKS[o]} {o}" for o in CONFIRM_MARKS if o in used)
                      + ".")
    return legend


def latex_table(table: pd.DataFrame, margins: Mapping[str, float], caption: str, label: str,
                notes: Sequence[str] = (), confirmations: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """table.tex: a booktabs float narrow enough for one column of a two-column paper.

    Columns: variant, n and, per compared metric (val_nll first), the difference to the baseline as
    `mean ± half-width`: the intervals are symmetric, so ± states them in half the width of [lo, hi].
    Each difference column has one number of decimals (`decimals` of its half-widths). The verdict
    is the cell's weight (bold: better or worse, which the sign tells) or mark (equivalent), so that
    it costs no column; a confirmation on fresh seeds marks it too. The caption states the level,
    the marks used and the table's notes; a sweep without a baseline shows the compared metrics'
    values instead."""
    confirmations = confirmations or {}
    rows = [r for _, r in table.iterrows()]
    withheld = bool(table["verdicts_withheld"].any()) if len(table) else False
    metrics = [m for m in verdict_metrics() if (table[f"delta_{m}_n"] > 0).any()]
    values = [] if metrics else [m for m in verdict_metrics() if (table[f"{m}_n"] > 0).any()]
    outcomes = [_outcomes(r, confirmations) for r in rows]
    body = []
    for row, found in zip(rows, outcomes, strict=True):
        done = f"{row['n_done']}" if row["n_done"] == row["n_runs"] else f"{row['n_done']}/{row['n_runs']}"
        cells = [tex_escape(row["label"]), done]
        cells += [_tex_delta(row, m, _places(table, f"delta_{m}"), withheld, found.get(m)) for m in metrics]
        cells += [tex_escape(format_stat(row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_n"],
                                          places=_places(table, m))) for m in values]  # no baseline: the values
        body.append(" & ".join(cells) + r" \\")
    names = [r"variant", r"$n$", *(rf"$\Delta$ {tex_escape(m)}" for m in metrics), *map(tex_escape, values)]
    legend = [tex_escape(caption), *(_tex_legend(table, margins, metrics, withheld, outcomes) if metrics else []),
              *(tex_from_markdown(note) for note in notes)]
    return "\n".join([r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{' '.join(legend)}}}",
                      rf"\label{{{label}}}", rf"\begin{{tabular}}{{l{'r' * (len(names) - 1)}}}", r"\toprule",
                      " & ".join(names) + r" \\", r"\midrule", *body, r"\bottomrule", r"\end{tabular}",
                      r"\end{table}"]) + "\n"
