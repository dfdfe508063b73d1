"""Collecting finished sweeps: manifests, the runs' final.json and curve.csv, the adaptive design.

Everything downstream (tables, figures, the `plan` verb, the adaptive sweep's looks) reads
the two frames built here, so a run's state and numbers are interpreted in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mirai_lab.errors import UserError
from mirai_lab.files.atomic import read_json
from mirai_lab.messages import warn
from mirai_lab.results_dir import CURVE, FINAL, STATUS, adaptive_path, manifest_path, run_dir, sweeps_dir
from mirai_lab.runs.state import RunState, damage, run_state

CURVE_COLUMNS = ["run_id", "step", "images_seen", "wall_s", "metric", "value"]
# states of the runs frame beside RunState's: a run whose files cannot be read (runs/state.py
# damage), and a sound run of the same sweep and seed, left out with it to keep the pairs paired
DAMAGED, EXCLUDED = "damaged", "excluded"


def load_manifests(results: Path, sweeps: list[str]) -> dict[str, dict[str, Any]]:
    """The manifests of the named sweeps, in the order given; a missing one is a one-line UserError."""
    if not sweeps:
        raise UserError("no sweep named: give at least one sweep to report")
    manifests = {}
    for name in sweeps:
        path = manifest_path(results, name)
        if not path.exists():
            found = sorted(p.parent.name for p in sweeps_dir(results).glob("*/manifest.json"))
            raise UserError(f"no sweep {name!r} in {sweeps_dir(results)} (existing: {', '.join(found) or 'none'})")
        manifest = read_optional(path)
        runs = manifest.get("runs") if isinstance(manifest, dict) else None
        if not isinstance(runs, list) or not runs:
            raise UserError(f"{path} has no runs: expected a sweep manifest with a non-empty 'runs' list")
        bad = [r for r in runs if not (isinstance(r, dict) and {"run_id", "variant", "seed"} <= r.keys())]
        if bad:
            raise UserError(f"{path}: run entry {bad[0]!r} lacks run_id, variant or seed")
        manifests[name] = manifest
    return manifests


def read_optional(path: Path) -> dict[str, Any]:
    """A JSON file's content, {} when it does not exist; invalid JSON is a one-line UserError."""
    if not path.exists():
        return {}
    try:
        content = read_json(path)
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    if content is not None and not isinstance(content, dict):  # its readers index it by key
        raise UserError(f"{path} is damaged: a JSON {type(content).__name__}, expected an object")
    return content or {}


def load_adaptive(results: Path, sweep: str) -> dict[str, Any] | None:
    """The adaptive design of a sweep (level, margin, looks), or None for a fixed-seed sweep."""
    return read_optional(adaptive_path(results, sweep)) or None


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
                found = damage(path)
                state = run_state(path)
                status = read_optional(path / STATUS) if found is None else {}
                failed = state is RunState.FAILED and found is None
                rows.append({
                    "sweep": sweep, "label": f"{sweep}: {variant}" if len(manifests) > 1 else variant,
                    "variant": variant, "seed": run["seed"], "run_id": run["run_id"],
                    "is_baseline": variant == manifest.get("baseline"),
                    "state": DAMAGED if found is not None else state.value,
                    "error": found.text if found is not None else status.get("error") if failed else None,
                    "fail_step": status.get("step") if failed else None,
                    "paper": (paper.get("rows") or {}).get(variant, np.nan), "paper_metric": paper.get("metric"),
                    **(_flatten_final(read_optional(path / FINAL))
                       if state is RunState.DONE and found is None else {}),
                })
    runs = pd.DataFrame(rows)
    runs["paper"] = pd.to_numeric(runs["paper"], errors="coerce")
    return runs


def _leave_out_damaged_seeds(runs: pd.DataFrame) -> pd.DataFrame:
    """A damaged run is a measurement that is missing for now (`mirai-lab sweep` makes it again),
    not a result like a failed run: its seed is left out of every row of its sweep, so that each
    variant's mean and its difference to the baseline are taken over the same seeds. One warning
    line per damaged run names the file."""
    found: dict[str, list[tuple[str, Any, str]]] = {}
    for row in runs[runs["state"] == DAMAGED].itertuples(index=False):
        found.setdefault(row.error, []).append((row.sweep, row.seed, row.run_id))
    for text, where in found.items():
        for sweep, seed, run_id in where:
            left_out = (runs["sweep"] == sweep) & (runs["seed"] == seed) & (runs["state"] == RunState.DONE.value)
            runs.loc[left_out, "state"] = EXCLUDED
            runs.loc[left_out, "error"] = f"seed {seed} left out: run {run_id} is damaged"
        seeds = " and ".join(f"seed {seed} of sweep {sweep}" for sweep, seed, _ in where)
        warn(f"{text}: {seeds} left out of every row, so that the variants stay paired "
             "(`mirai-lab sweep` evaluates the run again)")
    return runs


def _curve_rows(results: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """All curve.csv files joined with their runs (a run shared by two sweeps appears under both)."""
    frames = []
    for run_id in runs.loc[runs["state"] != DAMAGED, "run_id"].unique():
        path = run_dir(results, run_id) / CURVE
        try:
            # the run directory is the identity; a copied curve.csv may still carry another id
            frames.append(pd.read_csv(path).drop(columns="run_id", errors="ignore").assign(run_id=run_id))
        except (FileNotFoundError, pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
            continue  # not a run whose record is checked (runs/state.py damage): one that has not finished
    curves = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CURVE_COLUMNS)
    info = runs[["run_id", "sweep", "label", "variant", "seed", "state"]]
    return curves.merge(info, on="run_id", how="inner")


def collect(results: Path, sweeps: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, curves) of the named sweeps.

    runs: a row per (sweep, run) with sweep, label, variant, seed, run_id, is_baseline, state
    (a RunState value, or DAMAGED / EXCLUDED: _leave_out_damaged_seeds), error, fail_step, paper,
    paper_metric and the numeric keys of final.json (floors as floor.<kind>.<metric>), ordered
    baseline first, then manifest order.
    curves: the tidy curve rows with sweep, label, variant, seed and state. `label` is the
    variant name, prefixed with the sweep when several sweeps share one report.
    """
    results = Path(results)
    return frames(results, load_manifests(results, sweeps))


def frames(results: Path, manifests: dict[str, dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """collect() for manifests already loaded (and checked)."""
    runs = _leave_out_damaged_seeds(_run_rows(results, manifests))
    return runs, _curve_rows(results, runs)


def done(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of finished runs (runs or curves frame)."""
    return frame[frame["state"] == RunState.DONE.value]
