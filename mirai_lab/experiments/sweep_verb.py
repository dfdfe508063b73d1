"""The `sweep` verb: plan, print or execute, then say what happened in one line."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from mirai_lab.config import check_seed, check_used, parse_set
from mirai_lab.distributed import world_size
from mirai_lab.errors import UserError
from mirai_lab.experiments.dry_run import all_looks, dry_run
from mirai_lab.experiments.monitor import SweepMonitor
from mirai_lab.experiments.request import SweepRequest
from mirai_lab.experiments.spec import Plan, load_plan
from mirai_lab.experiments.storage import check_storage_reachable, check_storage_url
from mirai_lab.experiments.sweep import (
    manifest_path,
    run_sequential,
    summary,
    to_train,
    worker_loop,
    write_manifest,
)
from mirai_lab.experiments.sweep_precision import sweep_precision
from mirai_lab.experiments.timing_record import timed_call
from mirai_lab.experiments.worker import WorkerSettings, start_workers, worker_problems
from mirai_lab.files.atomic import read_json
from mirai_lab.messages import say, warn
from mirai_lab.results_dir import run_dir, stale_dir
from mirai_lab.runs.provenance import is_stale
from mirai_lab.timing import part


def run_sweep(request: SweepRequest, root: Path, *, as_json: bool = False,
              adaptive: dict[str, Any] | None = None) -> dict[str, Any]:
    """Plan the sweep, then print it (dry run) or train what is missing; returns the summary.

    `adaptive` (dry runs only: the planned looks, Design.to_json() plus max_minutes) says that the
    request is an adaptive sweep's first look (experiments/dry_run.first_look)."""
    with timed_call(request.command), part("plan"):  # the rounds' time is the workers' (timing_record.py)
        return _run_sweep(request, root, as_json, adaptive)


def _run_sweep(request: SweepRequest, root: Path, as_json: bool, adaptive: dict[str, Any] | None) -> dict[str, Any]:
    if world_size() > 1:
        raise UserError("sweep runs one process per run: start one sweep worker per GPU (CUDA_VISIBLE_DEVICES), "
                        "not under torchrun")
    r = request
    check_storage_url(r.storage, r.workers)
    if r.heartbeat_s < 1:
        raise UserError(f"--heartbeat-s {r.heartbeat_s}: expected a whole number of seconds >= 1")
    if r.threads is not None and r.threads < 1:
        raise UserError(f"--threads {r.threads}: expected >= 1")
    overrides = parse_set(list(r.set_items))
    check_sweep_overrides(overrides)
    plan = load_plan(r.spec, budget=r.budget, seeds=r.seeds, overrides=overrides, name=r.name,
                     resolve_auto=sweep_precision(root, quiet=as_json), variant_seeds=r.variant_seeds)
    check_used(overrides, [run.cfg for run in plan.runs], "any run of this sweep")
    # an adaptive sweep's manifest grows over its rounds: the name is free when every run it lists is in a look
    every = None if adaptive is None else all_looks(r, plan, root, adaptive["max_seeds"])
    damaged = check_name_free(every or plan, root)
    check_storage_reachable(r.storage)  # the last check (it may wait for a database), before the first write
    if not as_json:
        for warning in plan.warnings:
            say(warning)
    if r.dry_run:
        return dry_run(plan, r, root, as_json=as_json, adaptive=adaptive, every=every)
    if damaged is not None:  # recovered, not refused: the manifest is rewritten from the plan
        warn(f"{damaged}; writing it again from this sweep's plan")
        manifest_path(root, plan.name).unlink()
    return execute_plan(plan, r, root, as_json=as_json)


def read_manifest(root: Path, sweep: str) -> dict[str, Any]:
    """A sweep's manifest (one error line when there is none or it cannot be read)."""
    path = manifest_path(root, sweep)
    try:
        manifest = read_json(path)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("runs"), list):
            raise ValueError("no list of runs")
    except FileNotFoundError:
        raise UserError(f"no sweep {sweep!r} under {root} (no {path})") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not a sweep manifest ({exc})") from None
    return manifest


def execute_plan(plan: Plan, r: SweepRequest, root: Path, *, as_json: bool = False) -> dict[str, Any]:
    """Write the plan's manifest and train what is missing of it, here or by workers (`r.workers`,
    `r.storage`); a dry run prints the plan instead. Returns the summary."""
    if r.dry_run:
        return dry_run(plan, r, root, as_json=as_json)
    if r.rerun_stale:
        set_aside_stale(plan, root, quiet=as_json)
    mpath = write_manifest(plan, root, r.command)
    pending = to_train(plan, root, r.retry_failed)
    before = summary(plan, root)
    if not pending:
        line = (f"sweep {plan.name}: nothing to do, {before['done']} runs already done"
                + (f", {before['failed']} failed (use --retry-failed)" if before["failed"] else "")
                + f" -> {mpath}")
        if not as_json:
            say(line)
        return {"name": plan.name, "trained": 0, **before, "manifest": str(mpath)}
    t0 = time.perf_counter()
    with timed_call(r.command) as call, SweepMonitor(plan, root, quiet=as_json) as monitor:
        call.at(mpath.parent)
        if r.workers > 1:
            threads = r.threads or max(1, (os.cpu_count() or 1) // r.workers)
            with call.round_of_workers(mpath.parent, r.workers) as spawned_at:
                settings = WorkerSettings(str(root), str(mpath), r.storage, r.retry_failed, threads, r.heartbeat_s,
                                          spawned_at=spawned_at)
                procs = start_workers(settings, r.workers, mpath.parent)
                shown = 0.0
                while any(p.is_alive() for p in procs):
                    if time.monotonic() - shown >= 1.0:  # the table reads every run's status: once a second
                        monitor.refresh()
                        shown = time.monotonic()
                    time.sleep(0.2)  # the round ends within this of its last worker's exit
                for p in procs:
                    p.join()
            problems = worker_problems(procs, mpath.parent)
            left = to_train(plan, root, retry_failed=False)
            if problems and left:  # the survivors could not finish: the dead worker's error is the sweep's
                raise UserError(f"{problems[0]}; {len(left)} run(s) left unfinished")
            for problem in problems:  # the others took its runs over: the sweep succeeded
                warn(f"{problem}; the other workers finished its runs")
        elif r.storage is not None:
            with call.round_here():
                worker_loop(plan, root, r.storage, r.retry_failed, r.threads, r.heartbeat_s)
        else:
            with call.round_here():
                run_sequential(plan, root, r.retry_failed, monitor, r.threads)
    after = summary(plan, root)
    trained = after["done"] - before["done"]
    line = (f"sweep {plan.name}: {after['done']} done ({trained} trained now), {after['failed']} failed, "
            f"{after['pending'] + after['running']} left; {time.perf_counter() - t0:.0f}s -> {mpath}")
    if not as_json:
        say(line)
    return {"name": plan.name, "trained": trained, **after, "manifest": str(manifest_path(root, plan.name))}


def check_sweep_overrides(overrides: dict[str, Any]) -> None:
    """Refuse the --set fields a sweep replaces: train.seed is each run's seed (--seeds or the
    spec's). A bad value gets the message `train` gives it; a good one would only rename the sweep."""
    if "train.seed" in overrides:
        seed = check_seed(overrides["train.seed"])
        raise UserError(f"--set train.seed={seed}: a sweep sets each run's train.seed from its seeds (--seeds N "
                        "or the spec's seeds); drop it")


def check_name_free(plan: Plan, root: Path) -> str | None:
    """Refuse to put a different sweep under an existing sweep's name; say (for a warning) why
    the existing manifest is damaged, when it is.

    The same plan, or one that only adds runs (more seeds: the adaptive-seed rounds), may
    reuse the name; a plan that drops or changes runs would silently replace the manifest a
    report was made from. An unreadable manifest holds nothing to protect: the sweep writes it
    again (and a dry run leaves it as it is)."""
    path = manifest_path(root, plan.name)
    if not path.exists():
        return None
    try:
        old = {(r["run_id"], r["variant"], r["seed"]) for r in read_json(path)["runs"]}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{path} is damaged ({type(exc).__name__})"
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    new = {(r.run_id, r.variant, r.seed) for r in plan.runs}
    if not old <= new:
        raise UserError(f"sweep {plan.name!r} already exists with a different plan ({len(old - new)} of its "
                        f"{len(old)} runs are not in this one): pass --name NEW, or delete {path.parent}")
    return None


def set_aside_stale(plan: Plan, root: Path, quiet: bool = False) -> list[str]:
    """Move runs computed by another code version (provenance) to <results>/stale/, so they train again."""
    stale = [r.run_id for r in plan.unique_runs if is_stale(root, r.run_id)]
    for run_id in stale:
        target = stale_dir(root) / f"{run_id}-{int(time.time())}"
        target.parent.mkdir(parents=True, exist_ok=True)
        run_dir(root, run_id).rename(target)
    if stale and not quiet:
        say(f"sweep {plan.name}: {len(stale)} stale run(s) moved to {root / 'stale'}; training them again")
    return stale
