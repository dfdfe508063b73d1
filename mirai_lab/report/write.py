"""Finished sweeps -> tables (md, csv, tex), figures and a report.md that ties them together.

The report states only what the files say: every number comes from a run's final.json or
curve.csv, a missing one is shown as "n/a", runs that failed or did not finish are listed,
and the "reading" lines are generated from the paired intervals, never written by hand.
The statistics live in `report_tables`, the plots in `report_figures`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mirai_lab.errors import UserError
from mirai_lab.report.figures import montage, plot_bars, plot_curves
from mirai_lab.report.tables import (
    COMPARED,
    METRICS,
    build_table,
    display_table,
    format_interval,
    format_speedup,
    format_stat,
    num,
    paired_interval,
    steps_to_reach,
    to_latex,
    to_markdown,
)
from mirai_lab.runs.state import run_state
from mirai_lab.runs.store import read_json, run_dir, write_text

__all__ = ["collect", "load_manifests", "paired_interval", "steps_to_reach", "write_report"]

FLOORS = {"real_vs_real": "real vs real (two real sets of this size)",
          "tokenizer_ceiling": "tokenizer ceiling (reconstructions vs real)",
          "real_vs_noise": "real vs noise (the worst end)"}
CURVE_COLUMNS = ["run_id", "step", "images_seen", "wall_s", "metric", "value"]


def _sweeps_dir(results: Path) -> Path:
    return Path(results) / "sweeps"


def load_manifests(results: Path, sweeps: list[str]) -> dict[str, dict[str, Any]]:
    """The manifests of the named sweeps, in the order given; a missing one is a one-line UserError."""
    if not sweeps:
        raise UserError("no sweep named: give at least one sweep to report")
    manifests = {}
    for name in sweeps:
        path = _sweeps_dir(results) / name / "manifest.json"
        if not path.exists():
            found = sorted(p.parent.name for p in _sweeps_dir(results).glob("*/manifest.json"))
            raise UserError(f"no sweep {name!r} in {_sweeps_dir(results)} (existing: {', '.join(found) or 'none'})")
        try:
            manifest = read_json(path)
        except ValueError as exc:
            raise UserError(f"{path} is not valid JSON: {exc}") from None
        runs = manifest.get("runs") if isinstance(manifest, dict) else None
        if not isinstance(runs, list) or not runs:
            raise UserError(f"{path} has no runs: expected a sweep manifest with a non-empty 'runs' list")
        bad = [r for r in runs if not (isinstance(r, dict) and {"run_id", "variant", "seed"} <= r.keys())]
        if bad:
            raise UserError(f"{path}: run entry {bad[0]!r} lacks run_id, variant or seed")
        manifests[name] = manifest
    return manifests


def _read_optional(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return read_json(path)
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None


def _flatten_final(final: dict[str, Any]) -> dict[str, float]:
    """Numeric scalars of final.json; floors become columns named floor.<kind>.<metric>."""
    flat = {key: float(v) for key, v in final.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}
    for kind, values in (final.get("floors") or {}).items():
        flat.update({f"floor.{kind}.{m}": float(v) for m, v in (values or {}).items()
                     if isinstance(v, int | float) and not isinstance(v, bool)})
    return flat


def _variant_order(manifest: dict[str, Any]) -> list[str]:
    """Manifest order of first appearance, the baseline moved to the front."""
    variants = list(dict.fromkeys(run["variant"] for run in manifest["runs"]))
    baseline = manifest.get("baseline")
    return [baseline, *(v for v in variants if v != baseline)] if baseline in variants else variants


def _run_rows(results: Path, manifests: dict[str, dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for sweep, manifest in manifests.items():
        paper = manifest.get("paper") or {}
        for variant in _variant_order(manifest):
            for run in (r for r in manifest["runs"] if r["variant"] == variant):
                path = run_dir(results, run["run_id"])
                state = run_state(path)
                status = _read_optional(path / "status.json")
                rows.append({
                    "sweep": sweep, "label": f"{sweep}: {variant}" if len(manifests) > 1 else variant,
                    "variant": variant, "seed": run["seed"], "run_id": run["run_id"],
                    "is_baseline": variant == manifest.get("baseline"), "state": state,
                    "error": status.get("error") if state == "failed" else None,
                    "fail_step": status.get("step") if state == "failed" else None,
                    "paper": (paper.get("rows") or {}).get(variant, np.nan), "paper_metric": paper.get("metric"),
                    **(_flatten_final(_read_optional(path / "final.json")) if state == "done" else {}),
                })
    runs = pd.DataFrame(rows)
    runs["paper"] = pd.to_numeric(runs["paper"], errors="coerce")
    return runs


def _curve_rows(results: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """All curve.csv files joined with their runs (a run shared by two sweeps appears under both)."""
    frames = []
    for run_id in runs["run_id"].unique():
        path = run_dir(results, run_id) / "curve.csv"
        try:
            # the run directory is the identity; a copied curve.csv may still carry another id
            frames.append(pd.read_csv(path).drop(columns="run_id", errors="ignore").assign(run_id=run_id))
        except (FileNotFoundError, pd.errors.EmptyDataError):
            continue
    curves = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CURVE_COLUMNS)
    info = runs[["run_id", "sweep", "label", "variant", "seed", "state"]]
    return curves.merge(info, on="run_id", how="inner")


def collect(results: Path, sweeps: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, curves) of the named sweeps.

    runs: a row per (sweep, run) with sweep, label, variant, seed, run_id, is_baseline, state,
    error, fail_step, paper, paper_metric and the numeric keys of final.json (floors as
    floor.<kind>.<metric>), ordered baseline first, then manifest order. curves: the tidy
    curve rows with sweep, label, variant, seed and state. `label` is the variant name, prefixed
    with the sweep when several sweeps share one report.
    """
    results = Path(results)
    return _frames(results, load_manifests(results, sweeps))


def _frames(results: Path, manifests: dict[str, dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs = _run_rows(results, manifests)
    return runs, _curve_rows(results, runs)


# ---------------------------------------------------------------- report.md


def _sweep_lines(manifests: dict[str, dict[str, Any]], runs: pd.DataFrame) -> list[str]:
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
    return lines


def _measurement_lines(runs: pd.DataFrame) -> list[str]:
    """Sample counts, floors (from the baseline runs; from all done runs if no sweep has a baseline)."""
    done = runs[runs["state"] == "done"]
    base = done[done["is_baseline"]].drop_duplicates("run_id")
    source = "the baseline runs" if len(base) else "all done runs (no baseline)"
    base = base if len(base) else done.drop_duplicates("run_id")
    counts = sorted({int(v) for v in done.get("n_samples_final", pd.Series(dtype=float)).dropna()})
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


def _legend(table: pd.DataFrame) -> str:
    targets = "; ".join(f"{r['label']}: " + ", ".join(f"{m} {num(r[f'target_{m}'])}" for m in COMPARED)
                        for _, r in table[table["is_baseline"]].iterrows())
    paper = sorted({str(m) for m in table["paper_metric"].dropna()})
    return "\n".join([
        f"Mean ± std over the done seeds of each variant (n = done/total runs). Metrics: {', '.join(METRICS)}.",
        "Δ: variant minus baseline, paired by seed, mean [95% t-interval]; `*` marks an interval that excludes 0; "
        "one pair gives no interval.",
        "Speed-up: steps the baseline's mean curve needs to reach its own final value, divided by the steps the "
        "variant's mean curve needs to reach it (linear interpolation between evaluations); 'not reached' = "
        "never within the run. Curve evaluations may use fewer samples than the final metrics."
        + (f" Targets: {targets}." if targets else ""),
        "`*_domain` metrics use the in-project domain classifier's features: not comparable with ImageNet FID."
        + (f" paper: the paper's {', '.join(paper)} for the row (ImageNet 256; compare trends, not values)."
           if paper else ""),
    ])


def _reading(row: pd.Series) -> str:
    """One generated sentence per variant: the paired deltas and the speed-ups, as computed."""
    parts = []
    for metric in COMPARED:
        n = row[f"delta_{metric}_n"]
        if n == 0:
            parts.append(f"{metric}: no seed paired with a finished baseline run")
            continue
        interval = format_interval(*(row[f"delta_{metric}{s}"] for s in ("", "_lo", "_hi", "_n")))
        verdict = "" if n == 1 else (", significant" if row[f"delta_{metric}_significant"] else ", not significant")
        parts.append(f"{metric} {interval} vs baseline{verdict}")
        speed = format_speedup(row, metric)
        if speed != "n/a":
            parts.append(f"speed-up to the baseline's final {metric}: {speed}")
    return f"- **{row['label']}**: " + "; ".join(parts)


def _failed_lines(runs: pd.DataFrame) -> list[str]:
    bad = runs[runs["state"] != "done"]
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


FIGURE_CAPTIONS = {"curves": "Convergence of fid_domain and val_nll (mean ± std over seeds)",
                   "bars": "Final fid_domain (bar: mean, error bar: std, dots: seeds)",
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
    return ["\n\n".join(blocks)]


def render_report(sweeps: list[str], command: str, manifests: dict[str, dict[str, Any]], runs: pd.DataFrame,
                  table: pd.DataFrame, table_md: str, figures: list[str]) -> str:
    readings = [_reading(r) for _, r in table.iterrows() if not r["is_baseline"]]
    if table["is_baseline"].sum() == 0:
        readings = ["No baseline in these sweeps: no comparisons."]
    sections = [
        [f"# mirai-lab report: {', '.join(sweeps)}", "", "Command:", "", "```", command, "```"],
        ["## Sweeps", "", *_sweep_lines(manifests, runs)],
        ["## Measurement", "", *_measurement_lines(runs)],
        ["## Table", "", table_md, _legend(table), "", "Also as [CSV](table.csv) and [LaTeX](table.tex)."],
        ["## Figures", "", *_figure_lines(figures)],
        ["## Reading", "", *readings],
        ["## Failed and unfinished runs", "", *_failed_lines(runs)],
    ]
    return "\n\n".join("\n".join(s) for s in sections) + "\n"


def write_report(results: Path, sweeps: list[str], out_dir: Path, command: str) -> Path:
    """Write table.{md,csv,tex}, the figures, COMMAND and report.md into out_dir; return report.md.

    Inputs are read and checked before anything is written, so a bad sweep name leaves
    out_dir untouched; each file is then written atomically.
    """
    results, out_dir = Path(results), Path(out_dir)
    manifests = load_manifests(results, sweeps)
    runs, curves = _frames(results, manifests)
    table = build_table(runs, curves)
    shown = display_table(table)
    table_md = to_markdown(shown)
    write_text(out_dir / "table.csv", table.to_csv(index=False))
    write_text(out_dir / "table.md", table_md)
    write_text(out_dir / "table.tex", to_latex(shown))
    order = list(runs["label"].unique())
    figures = [*plot_curves(curves, order, out_dir), *plot_bars(runs, order, out_dir),
               *montage(runs, order, results, "samples.png", out_dir),
               *montage(runs, order, results, "structure.png", out_dir)]
    write_text(out_dir / "COMMAND", command + "\n")
    report = out_dir / "report.md"
    write_text(report, render_report(sweeps, command, manifests, runs, table, table_md, figures))
    return report
