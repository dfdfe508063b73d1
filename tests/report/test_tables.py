"""table.md and table.tex: the verdict columns only, one number of decimals per column, no empty
column, booktabs rules, and the notes every verdict rests on, on a hand-made table frame."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mirai_lab.report.tables import decimals, latex_table, markdown_table, signed, verdict_table

MARGINS = {"val_nll": 0.01, "fid_domain": 0.5}
METRICS = ("val_nll", "fid_domain")


def _row(label: str, deltas: dict[str, tuple[float, float, int, str | None, float]] | None = None,
         speedup: tuple[float, float, float, int, int] | None = None, failed: int = 0) -> dict:
    """A row of build_table's frame. deltas: metric -> (mean, half-width, n, verdict, seeds needed);
    speedup (val_nll): (mean, lo, hi, reached, n). The baseline has no deltas."""
    row = {"sweep": "s", "variant": label, "label": label, "is_baseline": deltas is None, "n_runs": 5,
           "n_done": 5 - failed, "n_failed": failed, "level": 0.9875, "verdicts_withheld": False, "adjust": "none"}
    for metric in METRICS:
        mean, half, n, found, needed = (deltas or {}).get(metric, (np.nan, np.nan, 0, None, np.nan))
        row |= {f"{metric}_mean": 2.0, f"{metric}_std": 0.02, f"{metric}_n": 5 - failed,
                f"delta_{metric}": mean, f"delta_{metric}_lo": mean - half, f"delta_{metric}_hi": mean + half,
                f"delta_{metric}_n": n, f"delta_{metric}_paired": True if n else None, f"delta_{metric}_half": half,
                f"verdict_{metric}": found, f"seeds_needed_{metric}": needed}
        reached = speedup if metric == "val_nll" and speedup else (np.nan, np.nan, np.nan, 0, 0)
        row |= dict(zip([f"speedup_{metric}{s}" for s in ("", "_lo", "_hi", "_reached", "_n")], reached, strict=True))
    return row


@pytest.fixture
def table() -> pd.DataFrame:
    """Half-widths 0.0287 / 0.01065 / 0.1512 for val_nll (3 decimals) and 0.357 / 1.252 for fid_domain
    (2 decimals); fid_domain has no speed-up anywhere (a column of n/a); C has 2 fid_domain pairs."""
    return pd.DataFrame([
        _row("baseline"),
        _row("A", {"val_nll": (-0.0534, 0.0287, 5, "better", np.nan),
                   "fid_domain": (-0.47, 0.357, 5, "better", np.nan)}, speedup=(1.13, 1.05, 1.21, 5, 5)),
        _row("B", {"val_nll": (0.0154, 0.01065, 5, "worse", np.nan),
                   "fid_domain": (0.308, 1.252, 5, "unresolved", 32)}, speedup=(np.nan, np.nan, np.nan, 0, 5)),
        _row("C", {"val_nll": (-0.00481, 0.1512, 4, "unresolved", 207), "fid_domain": (0.004, 1.9, 2, "unresolved", 9)},
             failed=1),
    ])


def test_decimals_follow_the_narrowest_interval():
    assert [decimals(w) for w in ([0.01065, 0.1515], [0.357, 2.9], [2.9], [35.0], [], [np.nan, 0.0], [1e-9])] == \
        [3, 2, 1, 0, 3, 3, 6]
    assert (signed(-0.0534, 3), signed(0.0154, 3), signed(-0.0001, 3), signed(0.305)) == \
        ("-0.053", "+0.015", "+0.000", "+0.305")


def test_table_md_shows_the_verdict_columns_to_one_precision_per_column(table: pd.DataFrame):
    md = markdown_table(table, MARGINS, ["**Verdicts Holm-adjusted** at alpha 0.05 over each sweep's rows."])
    assert md == (
        "**Verdicts Holm-adjusted** at alpha 0.05 over each sweep's rows.\n\n"
        "| variant | n | Δ val_nll [98.75% CI] | verdict val_nll | Δ fid_domain [98.75% CI] | verdict fid_domain "
        "| speed-up val_nll |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        "| baseline | 5/5 | ref | ref | ref | ref | ref |\n"
        "| A | 5/5 | -0.053 [-0.082, -0.025] | better | -0.47 [-0.83, -0.11] | better "
        "| 1.13× [1.05, 1.21] (5/5 reached) |\n"
        "| B | 5/5 | +0.015 [+0.005, +0.026] | worse | +0.31 [-0.94, +1.56] | unresolved (needs 32 seeds) "
        "| not reached (0/5) |\n"
        "| C | 4/5, 1 failed | -0.005 [-0.156, +0.146] | unresolved (needs 207 seeds) | +0.00 [-1.90, +1.90] "
        "| no verdict (n=2; needs >= 3 paired seeds) | n/a |\n")


def test_no_column_is_all_n_a(table: pd.DataFrame):
    shown = verdict_table(table, MARGINS)
    assert "speed-up fid_domain" not in shown.columns  # every row n/a (and the baseline's ref)
    for column in shown.columns:
        assert not shown[column].isin(["n/a", "ref"]).all(), column


def test_table_tex_is_booktabs_and_narrow(table: pd.DataFrame):
    tex = latex_table(table, MARGINS, "s: differences to the baseline.", "tab:s")
    caption = (r"\caption{s: differences to the baseline. $\Delta$ $\pm$ the half-width of its 98.75\% interval; "
               r"$n$: seeds done. Bold: the interval excludes 0, so the variant is better or worse (lower is better "
               r"for val\_nll, fid\_domain); otherwise unresolved, and no verdict below 3 paired seeds.}")
    assert tex == r"""\begin{table}[t]
\centering
\small
""" + caption + r"""
\label{tab:s}
\begin{tabular}{lrrr}
\toprule
variant & $n$ & $\Delta$ val\_nll & $\Delta$ fid\_domain \\
\midrule
baseline & 5 & ref & ref \\
A & 5 & \boldmath$-0.053 \pm 0.029$ & \boldmath$-0.47 \pm 0.36$ \\
B & 5 & \boldmath$+0.015 \pm 0.011$ & $+0.31 \pm 1.25$ \\
C & 4/5 & $-0.005 \pm 0.151$ & $+0.00 \pm 1.90$ \\
\bottomrule
\end{tabular}
\end{table}
"""
    assert "|" not in tex.split(r"\begin{tabular}")[1]  # no vertical rules
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert {line.count("&") + 1 for line in body} == {4}  # variant, n and one column per compared metric


def test_equivalent_unpaired_and_confirmed_rows_are_marked_and_explained(table: pd.DataFrame):
    table.loc[2, "verdict_val_nll"] = "equivalent"  # the cells' format only: not B's true verdict
    table.loc[1, "delta_fid_domain_paired"] = False
    outcomes = {"val_nll": {"outcome": "replicated"}, "fid_domain": {"outcome": "inconclusive"}}
    confirmed = {"s": {"rows": {"A": outcomes}}}
    tex = latex_table(table, MARGINS, "s.", "tab:s", confirmations=confirmed)
    assert r"A & 5 & \boldmath$-0.053 \pm 0.029$$^\dagger$ & \boldmath$-0.47 \pm 0.36$$^*$$^\circ$ \\" in tex
    assert r"B & 5 & $+0.015 \pm 0.011$$^{=}$ & $+0.31 \pm 1.25$ \\" in tex
    assert (r"$^{=}$: equivalent, the interval inside $\pm$0.01 (val\_nll), $\pm$0.5 (fid\_domain). "
            r"$^*$: unpaired (Welch). On fresh seeds: $^\dagger$ replicated, $^\circ$ inconclusive.}") in tex
    md = markdown_table(table, MARGINS, confirmations=confirmed)
    assert md.splitlines()[0].endswith("| speed-up val_nll | fresh seeds |")
    assert md.splitlines()[3].endswith("| val_nll replicated; fid_domain inconclusive |")
    assert md.splitlines()[4].endswith("| n/a |") and "-0.47 [-0.83, -0.11] (unpaired)" in md


def test_withheld_verdicts_drop_the_verdict_columns_and_keep_the_note(table: pd.DataFrame):
    table["verdicts_withheld"] = True
    note = "**No verdicts:** sweep s ran at the smoke budget, which checks the plumbing, not the science"
    md = markdown_table(table, MARGINS, [note])
    assert md.startswith(f"{note}\n\n| variant | n | Δ val_nll [98.75% CI] | Δ fid_domain [98.75% CI] | "
                         "speed-up val_nll |")
    tex = latex_table(table, MARGINS, "s.", "tab:s", [note])
    assert r"\boldmath" not in tex and "Bold" not in tex
    assert (r"\caption{s. $\Delta$ $\pm$ the half-width of its 98.75\% interval; $n$: seeds done. \textbf{No "
            r"verdicts:} sweep s ran at the smoke budget, which checks the plumbing, not the science}") in tex


def test_a_table_without_baseline_shows_the_values(table: pd.DataFrame):
    rows = table[~table["is_baseline"]].copy()
    for metric in METRICS:
        rows[f"delta_{metric}_n"] = 0
        rows[f"verdict_{metric}"] = None
        rows[f"speedup_{metric}_n"] = 0
    rows["val_nll_mean"] = [2.1093, 2.0551, math.nan]
    rows["val_nll_n"] = [5, 5, 0]
    rows["fid_domain_n"] = 0
    assert markdown_table(rows, MARGINS).splitlines()[2:] == \
        ["| A | 5/5 | 2.109 ± 0.020 |", "| B | 5/5 | 2.055 ± 0.020 |", "| C | 4/5, 1 failed | n/a |"]
    tex = latex_table(rows, MARGINS, "s.", "tab:s")
    assert r"variant & $n$ & val\_nll \\" in tex and r"A & 5 & 2.109 $\pm$ 0.020 \\" in tex


def test_an_interval_end_just_short_of_zero_keeps_its_sign_and_first_digit():
    from mirai_lab.report.tables import format_interval
    assert format_interval(-0.278, -0.554, -0.0023, 5, places=2) == "-0.28 [-0.55, -0.002]"
    assert format_interval(0.3, 0.0004, 0.6, 5, places=2) == "+0.30 [+0.0004, +0.60]"
    assert format_interval(0.3, 0.0, 0.6, 5, places=2) == "+0.30 [+0.00, +0.60]"
