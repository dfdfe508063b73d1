"""What `sweep --dry-run` says before anything trains: the runs, the budget, the seeds (for an
adaptive sweep the planned looks and the first look's runs) and how long they would take here.

The time estimate is runs still to train x seconds per run / workers, as the adaptive loop plans
its rounds (experiments/adaptive.py). Seconds per run come from the plan's own finished runs
when it has any (the median wall_s of their final.json: this machine, these variants), else from
SECONDS_PER_RUN, a per-budget constant for the development machine (MEASURED_ON). The constant is
a start-up figure only: an adaptive sweep plans its later rounds from its finished runs.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from mirai_lab.config import parse_set
from mirai_lab.experiments.request import SweepRequest
from mirai_lab.experiments.spec import Plan, load_plan
from mirai_lab.experiments.sweep import states
from mirai_lab.experiments.sweep_precision import sweep_precision
from mirai_lab.files.atomic import read_json
from mirai_lab.messages import say
from mirai_lab.presets import BUDGETS
from mirai_lab.results_dir import run_dir
from mirai_lab.runs.state import RunState

MEASURED_ON = ("a 2-core AMD EPYC with AVX-512 and AVX512-BF16 (no AMX), fp32, one thread per run, "
               "two runs at once")
# Worker-seconds per run of the budget's default length on MEASURED_ON (a sweep's wall time x its
# workers / its runs: start-up, claiming and idle tails included), and where the figure comes from.
# quick: table2 with val_nll every 80 steps, 40 runs in 30.2 min on 2 workers (results/table2/
# README.md). standard: quick's figure scaled by the images seen; the standard runs of
# results/axis-layout took 520 s each alone. paper runs on GPUs: no CPU figure, its estimate
# needs finished runs.
SECONDS_PER_RUN: dict[str, tuple[float, str]] = {
    "smoke": (3.0, "measured"),
    "quick": (91.0, "measured"),
    "standard": (91.0 * (1000 * 64) / (320 * 32), "quick's figure x its 6.25x images seen"),
}


def _images(budget: str) -> int | None:
    """Images a run of the budget's default length sees (steps x batch), or None when it does not say."""
    b = BUDGETS.get(budget, {})
    steps, batch = b.get("train.steps"), b.get("train.batch_size")
    return steps * batch if steps and batch else None


def seconds_per_run(plan: Plan, root: Path) -> tuple[float | None, str]:
    """(seconds, where the figure comes from) for one run of the plan on this machine; None when unknown."""
    walls = []
    for run in plan.unique_runs:
        try:
            walls.append(float(read_json(run_dir(root, run.run_id) / "final.json")["wall_s"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not finished (or no wall time recorded): the constant or the other runs answer
    walls = [w for w in walls if math.isfinite(w) and w > 0]
    if walls:
        return float(np.median(walls)), f"median wall_s of {len(walls)} finished run(s) of this sweep"
    if plan.budget not in SECONDS_PER_RUN:
        return None, f"no per-run figure for budget {plan.budget!r} on a CPU, and no finished run to time"
    seconds, how = SECONDS_PER_RUN[plan.budget]
    source = f"{plan.budget} constant ({how}) for {MEASURED_ON}"
    cfg = plan.runs[0].cfg
    default, images = _images(plan.budget), cfg.train.steps * cfg.train.batch_size
    if default and images != default:  # --set changed the length: the training share scales with the images
        seconds *= images / default
        source += f", scaled by images seen ({images:,} against {default:,})"
    return seconds, source


def minutes(runs: int, seconds: float | None, workers: int) -> float | None:
    return None if seconds is None else round(runs * seconds / workers / 60, 1)


def first_look(request: SweepRequest, root: Path, first: int, from_spec: bool) -> SweepRequest:
    """The request of an adaptive sweep's first look: its seeds, under the name run_adaptive gives
    the whole sweep (the spec's plan name, or that name plus "-adaptive" when the command line
    changed the looks), so the dry run shows the runs and the folder the real sweep will use."""
    if request.name is not None:
        return replace(request, seeds=first)
    plan = load_plan(request.spec, budget=request.budget, overrides=parse_set(list(request.set_items)),
                     resolve_auto=sweep_precision(root, quiet=True))
    return replace(request, seeds=first, name=plan.name if from_spec else f"{plan.name}-adaptive")


def all_looks(request: SweepRequest, plan: Plan, root: Path, max_seeds: int) -> Plan:
    """The adaptive sweep's plan if every row reached max_seeds: the most it may train."""
    return load_plan(request.spec, budget=request.budget, seeds=max_seeds, name=plan.name,
                     overrides=parse_set(list(request.set_items)), resolve_auto=sweep_precision(root, quiet=True))


def _to_train(st: dict[str, RunState], request: SweepRequest) -> int:
    """How many of the runs would train (to_train's count, without its warnings: a dry run changes nothing)."""
    return sum(s.needs_training(request.retry_failed) for s in st.values())


def dry_run(plan: Plan, request: SweepRequest, root: Path, *, as_json: bool,
            adaptive: dict[str, Any] | None = None, every: Plan | None = None) -> dict[str, Any]:
    """Print (or return, for --json) the run table, the budget, the seeds and the time estimate.

    `adaptive` (the Design's to_json() plus max_minutes) marks `plan` as an adaptive sweep's first
    look, and `every` is its all_looks plan. The output then adds the planned looks and the most
    the rounds may take: every row to max_seeds, unless the time cap stops them first (no round
    starts that would end past max_minutes; the first look always runs)."""
    if adaptive is not None:
        every = every or all_looks(request, plan, root, adaptive["max_seeds"])
    st = states(plan, root)
    rows = [{"run_id": r.run_id, "variant": r.variant, "seed": r.seed, "status": st[r.run_id]} for r in plan.runs]
    seconds, source = seconds_per_run(every or plan, root)
    pending = _to_train(st, request)
    estimate: dict[str, Any] = {"seconds_per_run": seconds, "source": source, "runs_to_train": pending,
                                "workers": request.workers, "minutes": minutes(pending, seconds, request.workers)}
    out: dict[str, Any] = {"name": plan.name, "budget": plan.budget, "seeds": plan.seeds, "runs": rows}
    if adaptive is not None and every is not None:
        most = _to_train(states(every, root), request)
        most_minutes = minutes(most, seconds, request.workers)
        first_minutes = estimate["minutes"]
        estimate.update(all_looks_runs_to_train=most, all_looks_minutes=most_minutes, at_most_minutes=(
            None if most_minutes is None or first_minutes is None
            else max(first_minutes, min(most_minutes, adaptive["max_minutes"]))))
        out["adaptive"] = adaptive
    out["estimate"] = estimate
    if not as_json:
        _print(out)
    return out


def _print(out: dict[str, Any]) -> None:
    """The run table, then one line for the estimate and, for an adaptive sweep, one for the looks."""
    seeds, est, ad = out["seeds"], out["estimate"], out.get("adaptive")
    look = " (the first look)" if ad else ""
    table = Table(title=f"sweep {out['name']}: {len({r['run_id'] for r in out['runs']})} runs, budget "
                        f"{out['budget']}, {len(seeds)} seed(s){look}; dry run")
    for col in ("run_id", "variant", "seed", "status"):
        table.add_column(col)
    for row in out["runs"]:
        table.add_row(*(str(row[c]) for c in ("run_id", "variant", "seed", "status")))
    Console().print(table)
    if est["seconds_per_run"] is None:
        say(f"time: {est['runs_to_train']} run(s) to train; no estimate ({est['source']})")
    else:
        say(f"time: {est['runs_to_train']} run(s) to train x {est['seconds_per_run']:.0f} s per run "
            f"({est['source']}) / {est['workers']} worker(s) = about {est['minutes']:g} min")
    if ad:
        looks = ", ".join(str(n) for n in ad["looks_planned"])
        bound = "" if est["at_most_minutes"] is None else f"; at most about {est['at_most_minutes']:g} min in all"
        say(f"adaptive seeds on {ad['metric']}: looks at {looks} seeds, {100 * ad['level']:.4g}% intervals, margin "
            f"{ad['margin']:g}; later rounds add seeds only to unresolved rows, at most "
            f"{est['all_looks_runs_to_train']} run(s) to train in all (every row to {ad['max_seeds']} seeds), and "
            f"start no round that would end past {ad['max_minutes']:g} min{bound}")
