"""The `plan` verb: how many seeds a finished sweep needs for a requested interval half-width.

From the finished runs: per variant, the current number of paired seeds, the spread (sd) of
the per-seed difference against the baseline, the half-width it has now, the seed count that
would bring it to the requested half-width at that spread, and the wall time of the missing
runs on this machine (median wall_s of the sweep's finished runs, divided by the workers).
The level is the sweep's adaptive level when it has one (so the plan matches its verdicts),
else 95%.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mirai_lab.analysis.collect import collect, done, load_adaptive
from mirai_lab.analysis.stats import COMPARED, LEVEL, by_seed, difference_to_baseline
from mirai_lab.errors import UserError
from mirai_lab.metrics import VAL_NLL
from mirai_lab.report.tables import NA, level_text, to_markdown


def plan_seeds(results: Path, sweep: str, halfwidth: float, metric: str = VAL_NLL,
               workers: int = 1) -> dict[str, Any]:
    """{sweep, metric, level, halfwidth, median_wall_s, workers, rows: [...], total_runs, total_minutes}."""
    if metric not in COMPARED:
        raise UserError(f"--metric {metric!r}: expected one of {', '.join(COMPARED)}")
    if not (math.isfinite(halfwidth) and halfwidth > 0):
        raise UserError(f"--halfwidth {halfwidth!r}: expected a positive number")
    if workers < 1:
        raise UserError(f"--workers {workers}: expected >= 1")
    runs, _ = collect(results, [sweep])
    finished = done(runs)
    base = runs.loc[runs["is_baseline"], "variant"]
    if base.empty:
        raise UserError(f"sweep {sweep!r} has no baseline: nothing to plan a difference against")
    baseline = base.iloc[0]
    adaptive = load_adaptive(results, sweep)
    level = float(adaptive["level"]) if adaptive else LEVEL
    walls = np.asarray(finished.get("wall_s", []), dtype=float)
    walls = walls[np.isfinite(walls)]
    wall = float(np.median(walls)) if walls.size else math.nan
    base_runs = finished[finished["variant"] == baseline]
    base_values = by_seed(base_runs, metric)
    rows = []
    for variant in dict.fromkeys(runs.loc[~runs["is_baseline"], "variant"]):
        diff = difference_to_baseline(finished[finished["variant"] == variant], base_runs, metric, level)
        n = diff.n if diff else 0
        needed = diff.seeds_for(halfwidth) if diff and diff.n >= 2 else None
        extra = max(0, needed - n) if needed is not None else None
        rows.append({"variant": variant, "n": n, "sd": diff.sd if diff else math.nan,
                     "half": diff.half if diff else math.nan, "seeds_needed": needed, "extra_runs": extra,
                     "minutes": extra * wall / workers / 60 if extra is not None else math.nan})
    needs = [r["seeds_needed"] for r in rows if r["seeds_needed"] is not None]
    total = None
    if needs and len(needs) == len(rows):
        total = sum(r["extra_runs"] for r in rows) + max(0, max(needs) - len(base_values))
    return {"sweep": sweep, "metric": metric, "level": level, "halfwidth": halfwidth, "median_wall_s": wall,
            "workers": workers, "baseline": baseline, "baseline_seeds": len(base_values), "rows": rows,
            "total_runs": total, "total_minutes": total * wall / workers / 60 if total is not None else math.nan}


def format_plan(info: dict[str, Any]) -> str:
    """The plan as a markdown table and a closing line (what `mirai-lab plan` prints)."""
    def cell(value: Any, fmt: str) -> str:
        return NA if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, fmt)

    frame = pd.DataFrame([{"variant": r["variant"], "n": str(r["n"]), f"sd of Δ {info['metric']}": cell(r["sd"], ".4g"),
                           "half-width now": cell(r["half"], ".4g"), "seeds needed": cell(r["seeds_needed"], "d"),
                           "runs to add": cell(r["extra_runs"], "d"), "minutes": cell(r["minutes"], ".1f")}
                          for r in info["rows"]])
    wall = cell(info["median_wall_s"], ".0f")
    total = (f"all variants to their seed counts: {info['total_runs']} more runs (the baseline to the largest count), "
             f"about {cell(info['total_minutes'], '.0f')} minutes" if info["total_runs"] is not None
             else "some variants have fewer than two paired seeds: no spread to plan from")
    return (f"sweep {info['sweep']}: seeds for a {level_text(info['level'])} half-width of {info['halfwidth']:g} on "
            f"{info['metric']} (paired with {info['baseline']}, {info['baseline_seeds']} seeds)\n\n"
            + to_markdown(frame)
            + f"\nwall time: median {wall} s per run on this machine, {info['workers']} worker(s); {total}.")
