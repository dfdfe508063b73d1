"""Finished sweeps -> tables (md, csv, tex), figures, tidy CSVs and a report.md that ties them together.

The report states only what the files say: every number comes from a run's final.json or
curve.csv, a missing one is shown as "n/a", runs that failed or did not finish are listed,
and the verdicts, the noise-and-power paragraph and the "reading" lines are generated from
the statistics (analysis/stats.py), never written by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from mirai_lab.analysis.collect import done, frames, load_adaptive, load_manifests, read_optional
from mirai_lab.analysis.stats import ADJUSTMENTS, COMPARED, LEVEL, MARGINS, seeds_needed
from mirai_lab.errors import UserError
from mirai_lab.files.atomic import read_json, write_text
from mirai_lab.metrics import VAL_NLL
from mirai_lab.report.figures import (
    montage,
    plot_curves,
    plot_differences,
    plot_finals,
    plot_forest,
    plot_robustness,
)
from mirai_lab.report.orderings import check_orderings
from mirai_lab.report.records import as_given, copy_records
from mirai_lab.report.tables import (
    METRICS,
    build_table,
    display_table,
    format_interval,
    format_speedup,
    format_stat,
    format_verdict,
    latex_table,
    level_text,
    markdown_table,
    num,
    to_markdown,
)
from mirai_lab.results_dir import CONFIG, CONFIRM, ROBUST, SAMPLES, STRUCTURE, run_dir, sweep_dir
from mirai_lab.runs.state import RunState
from mirai_lab.timing import describe, read_calls

FLOORS = {"real_vs_real": "real vs real (two real sets of this size)",
          "tokenizer_ceiling": "tokenizer ceiling (reconstructions vs real)",
          "real_vs_noise": "real vs noise (the worst end)"}
RUN_KEYS = ["sweep", "label", "variant", "seed", "run_id", "state"]


def interval_settings(adaptive: dict[str, dict[str, Any] | None]) -> tuple[float, dict[str, float], str]:
    """(level, margins, sentence) for a report: the adaptive sweeps' adjusted level (the strictest
    when several are shown together) and margins, else 95% per interval."""
    designs = {name: a for name, a in adaptive.items() if a}
    margins = dict(MARGINS)
    if not designs:
        return LEVEL, margins, f"Intervals: {level_text(LEVEL)} per row (fixed-seed sweep, no adjustment)."
    for a in designs.values():
        margins[a["metric"]] = float(a["margin"])
    level = max(float(a["level"]) for a in designs.values())
    parts = [f"`{name}`: Bonferroni over {len(a['looks_planned'])} planned looks "
             f"({', '.join(map(str, a['looks_planned']))} seeds) at alpha {a['alpha']:g}"
             for name, a in designs.items()]
    return level, margins, (f"Intervals: {level_text(level)} per row, the level of the adaptive sweep's looks "
                            f"({'; '.join(parts)}), so each row's verdict keeps its error rate over the repeated "
                            "looks (per row: no split over the rows).")


# ---------------------------------------------------------------- report.md


def _sweep_lines(manifests: dict[str, dict[str, Any]], runs: pd.DataFrame,
                 adaptive: dict[str, dict[str, Any] | None]) -> list[str]:
    def _code(value: str | None) -> str:
        return f"`{value}`" if value else "none"

    lines = []
    for name, m in manifests.items():
        sel = runs[runs["sweep"] == name]
        states = ", ".join(f"{n} {s}" for s, n in sel["state"].value_counts().items())
        seeds = ", ".join(str(s) for s in m.get("seeds", [])) or "n/a"
        lines.append(f"- `{name}`: budget `{m.get('budget', 'n/a')}`, seeds {seeds}, axes "
                     f"{', '.join(m.get('axes', [])) or 'n/a'}, baseline {_code(m.get('baseline'))}; "
                     f"{len(sel)} runs ({states or 'none'})")
        if m.get("command"):
            lines.append(f"  - sweep command: `{m['command']}`")
        a = adaptive.get(name)
        if a:
            made = ", ".join(str(look["n"]) for look in a.get("looks", [])) or "none yet"
            lines.append(f"  - adaptive on {a['metric']} (margin ±{a['margin']:g}): looks made at {made} seeds of "
                         f"{', '.join(map(str, a['looks_planned']))} planned; stopped: {a.get('stopped') or 'running'}")
            for look in a.get("looks", [])[1:]:  # the first look trains every variant
                lines.append(f"  - the look at {look['n']} seeds added seeds to: "
                             f"{', '.join(_code(v) for v in look.get('grown', [])) or 'none'} (and the baseline)")
    return lines


def _measurement_lines(runs: pd.DataFrame) -> list[str]:
    """Sample counts, floors (from the baseline runs; from all done runs if no sweep has a baseline)."""
    finished = done(runs)
    base = finished[finished["is_baseline"]].drop_duplicates("run_id")
    source = "the baseline runs" if len(base) else "all done runs (no baseline)"
    base = base if len(base) else finished.drop_duplicates("run_id")
    counts = sorted({int(v) for v in finished.get("n_samples_final", pd.Series(dtype=float)).dropna()})
    lines = [f"- Final samples per run (`n_samples_final`): {', '.join(map(str, counts)) or 'n/a'}",
             f"- Noise floor, from {source} (mean ± std over seeds, same sample count):"]
    for kind, title in FLOORS.items():
        cols = [c for c in base.columns if c.startswith(f"floor.{kind}.")]
        values = [f"{c.split('.', 2)[2]} {_column_stat(base, c)}" for c in cols]
        lines.append(f"  - {title}: {'; '.join(values) or 'n/a'}")
    if any(c.startswith("floor.") for c in base.columns):
        lines.append("  - values at or near real vs real cannot be told apart from real data at this sample count; "
                     "the tokenizer ceiling is the best a model over these tokens can reach.")
    for key, title in (("tokenizer_mse", "Tokenizer reconstruction MSE"),
                       ("classifier_val_acc", "Domain classifier validation accuracy")):
        lines.append(f"- {title}: {_column_stat(base, key)}")
    return lines


def _column_stat(frame: pd.DataFrame, column: str) -> str:
    values = pd.to_numeric(frame[column], errors="coerce").dropna() if column in frame else pd.Series(dtype=float)
    return format_stat(values.mean(), values.std(ddof=1), len(values))


def _legend(table: pd.DataFrame, level_line: str, margins: dict[str, float]) -> str:
    paper = sorted({str(m) for m in table["paper_metric"].dropna()})
    margin_text = ", ".join(f"{m} ±{margins[m]:g}" for m in COMPARED if m in margins)
    return "\n".join([
        f"Mean ± std over the done seeds of each variant (n = done/total runs). Metrics: {', '.join(METRICS)}.",
        "Δ: variant minus baseline, paired by seed (marked 'unpaired' where the seeds did not match: Welch), "
        f"mean [interval]; ±: the interval's half-width; MDE: the smallest true difference the interval detects "
        f"with 80% power at this n. {level_line}",
        f"Verdict: better / worse when the interval excludes 0 (lower is better for both metrics); equivalent when "
        f"it lies inside the margin ({margin_text}); otherwise unresolved, with the seeds that would resolve it at "
        "the observed spread (the half-width reaching |Δ| or margin - |Δ|).",
        "Speed-up: per seed, steps the baseline needs to first reach its own final value divided by the steps the "
        "variant of the same seed needs to reach it (linear interpolation between evaluations); geometric mean over "
        "seeds with a t-interval on log speed-up; (k/n reached): seeds whose variant got there; 'not reached' only "
        "when no seed's variant did. Sample metrics evaluated during training use fewer samples than the final one.",
        "`*_domain` metrics use the in-project domain classifier's features: not comparable with ImageNet FID."
        + (f" paper: the paper's {', '.join(paper)} for the row (ImageNet 256; compare trends, not values)."
           if paper else ""),
    ])


def _span(values: pd.Series, fmt: Callable[[Any], str]) -> str:
    """'x' when all values agree, else 'min to max'."""
    lo, hi = values.min(), values.max()
    return fmt(lo) if lo == hi else f"{fmt(lo)} to {fmt(hi)}"


def _power_lines(table: pd.DataFrame, level: float, margins: dict[str, float]) -> list[str]:
    """The generated paragraph on noise and power: the measured spread of the differences, what it can resolve."""
    rows = table[~table["is_baseline"]]
    lines = []
    for metric in COMPARED:
        sel = rows[rows[f"delta_{metric}_n"] >= 2]
        if sel.empty:
            lines.append(f"- {metric}: fewer than two paired seeds in every row; no spread to measure.")
            continue
        sd, half, mde = (sel[f"delta_{metric}_{k}"] for k in ("sd", "half", "mde"))
        n = sel[f"delta_{metric}_n"]
        margin = margins.get(metric)
        need = [seeds_needed(s, margin, level) for s in sd] if margin else []
        counts = sel[f"verdict_{metric}"].value_counts()
        verdicts = ", ".join(f"{int(counts.get(v, 0))} {v}" for v in ("better", "worse", "equivalent", "unresolved"))
        text = (f"- {metric}: the per-seed difference against the baseline has sd {_span(sd, num)} (median "
                f"{num(sd.median())}) over {_span(n, str)} seeds; the {level_text(level)} intervals reach "
                f"half-widths {_span(half, num)}, and an effect of {num(mde.median())} (median MDE) would be "
                f"detected with 80% power. Verdicts: {verdicts}.")
        if need and all(k is not None for k in need):
            text += f" A half-width of {margin:g} (the margin) would need {_span(pd.Series(need), str)} seeds."
        lines.append(text)
    return lines


def _reading(row: pd.Series, margins: dict[str, float]) -> str:
    """One generated sentence per variant: the differences, verdicts and speed-ups, as computed."""
    parts = []
    for metric in COMPARED:
        n = row[f"delta_{metric}_n"]
        if n == 0:
            parts.append(f"{metric}: no seed paired with a finished baseline run")
            continue
        interval = format_interval(*(row[f"delta_{metric}{s}"] for s in ("", "_lo", "_hi", "_n", "_paired")))
        parts.append(f"{metric} {interval} vs baseline: {format_verdict(row, metric, margins.get(metric))}")
        speed = format_speedup(row, metric)
        if speed != "n/a":
            parts.append(f"speed-up to the baseline's final {metric}: {speed}")
    return f"- **{row['label']}**: " + "; ".join(parts)


def _ordering_lines(manifests: dict[str, dict[str, Any]], runs: pd.DataFrame, level: float,
                    margins: dict[str, float]) -> list[str]:
    lines = []
    for name, m in manifests.items():
        paper = m.get("paper") or {}
        if not paper.get("orderings"):
            continue
        checked = check_orderings(paper, runs[runs["sweep"] == name], f"sweep {name} [paper]", level, margins)
        if len(manifests) > 1:
            lines.append(f"`{name}`:")
        lines += ["| paper ordering | metric | left - right | n | here |", "|---|---|---:|---:|---|"]
        lines += [f"| {r.ordering} | {r.metric} | {format_interval(r.diff, r.lo, r.hi, r.n)} | {r.n} | {r.outcome} |"
                  for r in checked.itertuples(index=False)]
        counts = checked["outcome"].str.split(" ").str[0].value_counts()
        lines.append(f"\n{int(counts.get('holds', 0))} hold, {int(counts.get('contradicted', 0))} contradicted, "
                     f"{int(counts.get('unresolved', 0))} unresolved at {level_text(level)} (paired by seed).")
    return lines or ["No orderings stated in the spec's [paper] table."]


def _failed_lines(runs: pd.DataFrame) -> list[str]:
    bad = runs[runs["state"] != RunState.DONE.value]
    if bad.empty:
        return ["None: every run finished."]
    lines = ["| run | variant | seed | state | step | error |", "|---|---|---:|---|---:|---|"]
    for r in bad.itertuples(index=False):
        error = " ".join(str(r.error).split()) if isinstance(r.error, str) else ""
        error = (error[:300] + "…") if len(error) > 300 else error
        step = "" if pd.isna(r.fail_step) else f"{int(r.fail_step)}"
        lines.append(f"| `{r.run_id}` | {r.label} | {r.seed} | {r.state} | {step} | {error.replace('|', '/')} |")
    lines.append("\nFull errors: `runs/<run>/status.json`. These runs are not in the means above.")
    return lines


FIGURE_CAPTIONS = {"forest": "Paired differences to the baseline per variant: dots = seeds, diamond = mean, bar = the "
                             "table's interval, colour = its verdict, grey band = ± equivalence margin",
                   "curves": "Convergence of fid_domain and val_nll per variant (markers: evaluations; band: "
                             "interval over seeds; grey lines: floors)",
                   "differences": "Variant minus baseline over steps, paired by seed (thin: seeds; thick: mean and "
                                  "interval band; below 0 = better; colour = verdict)",
                   "finals": "Final values: dots = seeds, tick = mean, bar = baseline mean + the table's paired "
                             "interval, dashed line = baseline mean",
                   "samples": "Samples of each variant (a row per class; the run's own grid)",
                   "structure": "2D-structure maps (first finished seed of each variant)"}


def _figure_lines(written: list[str]) -> list[str]:
    blocks = []
    for stem, caption in FIGURE_CAPTIONS.items():
        if f"{stem}.png" in written:
            pdf = f" ([PDF]({stem}.pdf))" if f"{stem}.pdf" in written else ""
            blocks.append(f"**{caption}**{pdf}\n\n![{stem}]({stem}.png)")
    missing = [stem for stem in FIGURE_CAPTIONS if f"{stem}.png" not in written]
    if missing:
        blocks.append(f"Not drawn (no data in the runs): {', '.join(missing)}.")
    blocks.append("Data behind them as tidy CSV: [finals.csv](finals.csv) (a row per run and metric), "
                  "[curves.csv](curves.csv) (a row per run, step and metric).")
    return ["\n\n".join(blocks)]


def tidy_finals(runs: pd.DataFrame) -> pd.DataFrame:
    """A row per (run, metric) of the final values: run keys, metric, value."""
    metrics = [c for c in runs.columns if c not in RUN_KEYS and c not in ("paper", "fail_step")
               and pd.api.types.is_float_dtype(runs[c])]
    long = runs[RUN_KEYS + metrics].melt(id_vars=RUN_KEYS, var_name="metric", value_name="value")
    return long.dropna(subset=["value"]).reset_index(drop=True)


def render_report(sweeps: list[str], command: str, manifests: dict[str, dict[str, Any]], runs: pd.DataFrame,
                  table: pd.DataFrame, figures: list[str], level: float, margins: dict[str, float],
                  level_line: str, adaptive: dict[str, dict[str, Any] | None], orderings: list[str],
                  plumbing: str | None = None, confirmation: list[str] | None = None,
                  robustness: list[str] | None = None, timing: list[str] | None = None,
                  robust: dict[str, dict[str, Any] | None] | None = None) -> str:
    readings = [_reading(r, margins) for _, r in table.iterrows() if not r["is_baseline"]]
    has_baseline = table["is_baseline"].sum() > 0
    if not has_baseline:
        readings = ["No baseline in these sweeps: no comparisons."]
    sections = [
        [f"# mirai-lab report: {', '.join(sweeps)}", "", *([f"**No verdicts:** {plumbing}", ""] if plumbing else []),
         *[f"**Conditions:** {line}\n" for line in ([] if plumbing else conditions(manifests, robust or {}))],
         "Command:", "", "```", command, "```"],
        ["## Sweeps", "", *_sweep_lines(manifests, runs, adaptive)],
        ["## Measurement", "", *_measurement_lines(runs)],
        *([["## Time", "", *timing]] if timing else []),
        ["## Table", "", to_markdown(display_table(table, margins)), _legend(table, level_line, margins), "",
         "Also as [CSV](table.csv) and [LaTeX](table.tex)."],
        ["## Noise and power", "", *(_power_lines(table, level, margins) if has_baseline else readings)],
        ["## The paper's orderings, here", "", *orderings],
        ["## Figures", "", *_figure_lines(figures)],
        ["## Reading", "", *readings],
        *([["## Confirmation on fresh seeds", "", *confirmation]] if confirmation else []),
        *([["## Robustness at neighbouring settings", "", *robustness]] if robustness else []),
        ["## Failed and unfinished runs", "", *_failed_lines(runs)],
    ]
    return "\n\n".join("\n".join(s) for s in sections) + "\n"


ADJUST_TEXT = {"holm": "Holm-adjusted (the chance that any better/worse is wrong)",
               "bh": "Benjamini-Hochberg-adjusted (the expected share of wrong better/worse)"}
PLUMBING_BUDGETS = ("smoke",)
# A baseline whose final val_nll is above this share of the uniform guess (ln V nats per token) has
# learned almost nothing: differences between such runs are differences between near-random
# models. At the smoke budget the baseline ends at 0.99 of ln 512; at quick near 0.35.
LEARNED_BELOW = 0.9


def plumbing_reason(results: Path, manifests: dict[str, dict[str, Any]], runs: pd.DataFrame) -> str | None:
    """Why this table's budget can carry no verdict, or None when it can.

    A budget is plumbing when it is named so (`smoke`: it checks that the code runs), or when a
    sweep's baseline ends with a val_nll above LEARNED_BELOW x ln(codebook size), the loss of a
    uniform guess over the codebook."""
    for name, manifest in manifests.items():
        if manifest.get("budget") in PLUMBING_BUDGETS:
            return f"sweep {name} ran at the {manifest['budget']} budget, which checks the plumbing, not the science"
        base = done(runs[(runs["sweep"] == name) & runs["is_baseline"]])
        if not len(base) or VAL_NLL not in base or base[VAL_NLL].isna().all():
            continue
        try:
            vocab = int(read_json(run_dir(results, base["run_id"].iloc[0]) / CONFIG)["tokenizer"]
                        ["codebook_size"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        uniform = math.log(vocab)
        mean = float(base[VAL_NLL].mean())
        if mean > LEARNED_BELOW * uniform:
            return (f"sweep {name}'s baseline ends at val_nll {mean:.3f}, above {LEARNED_BELOW:g} x the uniform "
                    f"guess ({uniform:.3f} nats for {vocab} codes): it has not learned enough to compare variants")
    return None


def _confirmation(confirmations: dict[str, dict[str, Any]]) -> list[str]:
    """The confirmation lines of the sweeps that have one (experiments/confirm.py writes confirm.json)."""
    lines: list[str] = []
    for name, record in confirmations.items():
        if record.get("seeds"):
            lines += [f"`{name}`:", *confirmation_lines(record)]
    return lines


def confirmation_lines(record: dict[str, Any]) -> list[str]:
    """The report's reading of a confirmation: one line per row and metric."""
    lines = [f"Fresh seeds {record['seeds'][0]}..{record['seeds'][-1]} ({len(record['seeds'])} paired seeds), "
             f"a separate look at {100 * record['level']:.4g}% intervals, never pooled with the first."]
    for variant, metrics in record.get("rows", {}).items():
        for metric, row in metrics.items():
            first, fresh = row["first"], row["fresh"]
            text = (f"{fresh['mean']:+.3g} [{fresh['lo']:+.3g}, {fresh['hi']:+.3g}] {fresh['verdict']}"
                    if fresh else "no fresh result")
            lines.append(f"- **{variant}** {metric}: first {first['mean']:+.3g} [{first['lo']:+.3g}, "
                         f"{first['hi']:+.3g}] {first['verdict']} (n={first['n']}); fresh {text}: "
                         f"**{row['outcome']}**")
    if record.get("note"):
        lines.append(record["note"])
    return lines


def _robustness(records: dict[str, dict[str, Any]], out_dir: Path, margins: dict[str, float]) -> list[str]:
    """The robustness lines and figure of the sweeps whose robust.json holds a setting."""
    lines: list[str] = []
    for name, record in records.items():
        if not record.get("settings"):
            continue
        stem = "robustness" if len(records) == 1 else f"robustness-{name}"
        lines += [f"`{name}`:", "", *robustness_lines(record, plot_robustness(record, margins, out_dir, stem))]
    return lines


def _cell(point: dict[str, Any] | None) -> str:
    if not point:
        return "n/a"
    return f"{point['mean']:+.3g} [{point['lo']:+.3g}, {point['hi']:+.3g}] {point['verdict']}"


def _n_span(points: list[dict[str, Any] | None]) -> str:
    n = sorted({int(p["n"]) for p in points if p})
    return "none" if not n else str(n[0]) if len(n) == 1 else f"{n[0]}-{n[-1]}"


def robustness_lines(record: dict[str, Any], figure: list[str]) -> list[str]:
    """The report's reading of robust.json: a table of rows x settings (each cell the paired Δ,
    its interval and verdict), the summary per row and metric, and what each column rests on."""
    settings, original = record["settings"], record["original"]
    lines = [f"| row | metric | {original} (first look) | " + " | ".join(f"`{s['name']}`" for s in settings)
             + " | summary |", "|---|---|" + "---|" * (len(settings) + 2)]
    for row in record.get("rows", []):
        variant, metric = row["variant"], row["metric"]
        cells = [_cell(row["original"]),
                 *(_cell(s["rows"].get(variant, {}).get(metric)) if variant in s["variants"] else "not run"
                   for s in settings)]
        lines.append(f"| {variant} | {metric} | " + " | ".join(cells) + f" | {row['summary']} |")
    lines += ["", f"- {original} (first look): the sweep's own runs at {level_text(record['first_level'])} intervals "
                  f"(n = {_n_span([r['original'] for r in record.get('rows', [])])} paired seeds per row)."]
    for s in settings:
        seeds = s["seeds"]
        lines.append(f"- `{s['name']}`: sweep `{s['sweep']}`, budget `{s['budget']}`, seeds {seeds[0]}..{seeds[-1]} "
                     f"(n = {_n_span([p for ms in s['rows'].values() for p in ms.values()])} paired seeds per row), "
                     f"plain {level_text(record['level'])} intervals, one look of its own, never pooled with another "
                     "setting.")
    plumbing = sorted({b for b in (original, *(s["budget"] for s in settings)) if b in PLUMBING_BUDGETS})
    if plumbing:
        lines.append(f"- Runs at the {', '.join(plumbing)} budget check the plumbing: their verdicts say nothing "
                     "about the method.")
    lines.append("\nSummary: holds at every setting (the same settled verdict at each), holds at some (settings), "
                 "holds at no setting, flips at (settings: the opposite verdict, better <-> worse), or no verdict to "
                 "hold (the first look settled nothing: each setting's verdict is listed).")
    png = next((f for f in figure if f.endswith(".png")), None)
    if png:
        pdf = next((f" ([PDF]({f}))" for f in figure if f.endswith(".pdf")), "")
        lines.append(f"\n**Paired Δ to the baseline at each setting, coloured by verdict**{pdf}\n\n"
                     f"![robustness]({png})")
    return lines


def check_one_precision(results: Path, runs: pd.DataFrame) -> None:
    """Refuse a table whose rows were trained in different precisions: a paired difference
    between a bf16 run and an fp32 run measures the precision as much as the variant."""
    found: dict[str, set[str]] = {}
    for label, run_id in zip(runs["label"], runs["run_id"], strict=True):
        try:
            precision = read_json(run_dir(results, run_id) / CONFIG)["train"]["precision"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a run without a readable config has no result in the table either
        found.setdefault(str(precision), set()).add(str(label))
    if len(found) > 1:
        parts = "; ".join(f"{p}: {', '.join(sorted(labels))}" for p, labels in sorted(found.items()))
        raise UserError(f"the table pairs runs trained in different precisions ({parts}); train them in one "
                        "precision (--set train.precision=fp32) and report again")


def write_report(results: Path, sweeps: list[str], out_dir: Path, command: str, adjust: str = "none") -> Path:
    """Write table.{md,csv,tex}, finals.csv, curves.csv, the figures, COMMAND, the sweeps' records
    (report/records.py) and report.md into out_dir.

    Inputs are read and checked before anything is written, so a bad sweep name (or a bad
    ordering in the spec) leaves out_dir untouched; each file is then written atomically.
    `adjust` (none | holm | bh): table-wide error control of the verdicts (stats.adjusted_verdicts).
    """
    if adjust not in ADJUSTMENTS:
        raise UserError(f"--adjust {adjust!r}: expected one of {', '.join(ADJUSTMENTS)}")
    results, out_dir = Path(results), Path(out_dir)
    manifests = load_manifests(results, sweeps)
    adaptive = {name: load_adaptive(results, name) for name in manifests}
    level, margins, level_line = interval_settings(adaptive)
    alpha = max((float(a["alpha"]) for a in adaptive.values() if a), default=1 - LEVEL)
    if adjust != "none":
        level_line += (f" Table-wide: verdicts {ADJUST_TEXT[adjust]} over each sweep's compared rows at "
                       f"alpha {alpha:g} (statsmodels multipletests).")
    runs, curves = frames(results, manifests)
    check_one_precision(results, runs)
    plumbing = plumbing_reason(results, manifests, runs)
    table = build_table(runs, curves, level, margins, withheld=plumbing is not None, adjust=adjust, alpha=alpha)
    orderings = _ordering_lines(manifests, runs, level, margins)  # checks the spec's orderings before any write
    robust = {name: read_optional(sweep_dir(results, name) / ROBUST) for name in manifests}  # read before any write
    write_text(out_dir / "table.csv", table.to_csv(index=False))
    header = []  # what every verdict of the table rests on, stated once above it
    if plumbing:
        header.append(f"**No verdicts:** {plumbing}")
    else:
        header += [f"**Conditions:** {line}" for line in conditions(manifests, robust)]
        if adjust != "none":
            header.append(f"**Verdicts {ADJUST_TEXT[adjust]}** at alpha {alpha:g} over each sweep's rows.")
    confirmations = {name: read_optional(sweep_dir(results, name) / CONFIRM) for name in sweeps}
    write_text(out_dir / "table.md", markdown_table(table, margins, header, confirmations))
    caption = (f"{', '.join(sweeps)}: final val_nll and fid_domain per variant, difference to the baseline paired "
               f"by seed with its {level_text(level)} interval and verdict.")
    write_text(out_dir / "table.tex", latex_table(table, margins, caption, f"tab:{'+'.join(sweeps)}", header,
                                                  confirmations))
    write_text(out_dir / "finals.csv", tidy_finals(runs).to_csv(index=False))
    write_text(out_dir / "curves.csv", curves[RUN_KEYS + ["step", "images_seen", "wall_s", "metric", "value"]]
               .to_csv(index=False))
    order = list(runs["label"].unique())
    base_labels = runs.loc[runs["is_baseline"], "label"]
    base_label = base_labels.iloc[0] if len(base_labels) and len(manifests) == 1 else None
    figures = [*plot_forest(table, runs, margins, out_dir, level),
               *plot_curves(curves, runs, order, out_dir, level),
               *plot_differences(curves, table, order, base_label, out_dir, level, margins),
               *plot_finals(runs, table, order, base_label, out_dir, level),
               *montage(runs, order, results, SAMPLES, out_dir),
               *montage(runs, order, results, STRUCTURE, out_dir)]
    write_text(out_dir / "COMMAND", command + "\n")
    copy_records(results, sweeps, out_dir)
    report = out_dir / "report.md"
    text = render_report(sweeps, command, manifests, runs, table, figures, level, margins, level_line, adaptive,
                         orderings, plumbing, _confirmation(confirmations), _robustness(robust, out_dir, margins),
                         _time_lines(results, sweeps), robust)
    write_text(report, as_given(text, results))
    return report


def conditions(manifests: dict[str, dict[str, Any]], robust: dict[str, dict[str, Any] | None]) -> list[str]:
    """Per sweep, what its verdicts rest on: the training setting they were found at, and whether they
    were checked at a neighbouring one (experiments/robust.py) or how to check them."""
    lines = []
    for name, m in manifests.items():
        if not m.get("baseline"):
            continue  # no comparison, no verdict to qualify
        cfg = next((r.get("config") for r in m.get("runs", []) if r.get("config")), None)
        seeds = m.get("seeds") or []
        where = f"budget `{m.get('budget', 'n/a')}`"
        if cfg:
            t = cfg["train"]
            where += (f" ({t['steps']} steps, batch {t['batch_size']}, lr {t['lr']:g} {t['lr_schedule']}, "
                      f"{t['precision']})")
        record = robust.get(name) or {}
        checked = [s["name"] for s in record.get("settings", [])]
        check = (f"checked at {', '.join(f'`{c}`' for c in checked)} (section Robustness)" if checked else
                 f"not checked at a neighbouring setting (`mirai-lab robust {name} --vary budget=standard`)")
        span = f"seeds {min(seeds)}-{max(seeds)}" if seeds else "its seeds"
        lines.append(f"`{name}`: verdicts hold at {where} on {span}; {check}.")
    return lines


def _time_lines(results: Path, sweeps: list[str]) -> list[str]:
    """Where each sweep's wall time went, from its timing.json (experiments/timing_record.py)."""
    lines = []
    for name in sweeps:
        text = describe(read_calls(sweep_dir(results, name)))
        if text:
            lines.append(f"`{name}`: {text}")
    if lines:
        lines += ["", "Parts are exclusive (a cache built during a run's set-up counts as a cache build); "
                  "`idle workers` is a worker's time with no run to take while others still train (the end of "
                  "a round, a teacher run not yet done), and the sweep's timing.json has every round."]
    return lines

