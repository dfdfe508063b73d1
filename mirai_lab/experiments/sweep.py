"""Sweeps: a plan of content-addressed runs, executed once each, by one or many workers.

One process without a storage trains the pending runs in order, each under a file lock
(runs/lock.py), so that two sweeps (or a sweep and a `train`) on one results directory train
each run once: a run another process holds is left for last, then reused. With `--workers N` (N > 1)
or a `--storage` URL, workers claim runs through an Optuna storage (claim.RunQueue): a
journal file beside the manifest by default, PostgreSQL for several machines. A finished
run is never trained again (its status.json says done and its record is sound), an interrupted one resumes from its
checkpoint, a failed one is recorded with its error and skipped until `--retry-failed`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mirai_lab.config import config_from_dict
from mirai_lab.errors import UserError
from mirai_lab.experiments.queue import ClaimLost, RunQueue
from mirai_lab.experiments.request import HEARTBEAT_S
from mirai_lab.experiments.spec import Plan, PlannedRun
from mirai_lab.experiments.storage import open_storage
from mirai_lab.files.atomic import fenced, read_json, write_json
from mirai_lab.messages import say, warn
from mirai_lab.results_dir import CLAIM, JOURNAL, manifest_path, run_dir, sweep_dir
from mirai_lab.runs.lock import busy, queue_claim, wait_for
from mirai_lab.runs.state import RunState, damage, remake_note, run_state, set_status, warn_damage
from mirai_lab.timing import part
from mirai_lab.training.run import execute
from mirai_lab.training.trainer import Diverged


def write_manifest(plan: Plan, root: Path, command: str) -> Path:
    """The sweep's plan as data: every run with its resolved config, so that workers (worker.py)
    train exactly what was planned, and `command` as the user typed it."""
    path = manifest_path(root, plan.name)
    try:
        created = float(read_json(path)["created"]) if path.exists() else time.time()
    except (ValueError, KeyError, TypeError, OSError):
        created = time.time()  # a damaged manifest is written again; its creation time is lost with it
    manifest = {
        "name": plan.name, "budget": plan.budget, "seeds": plan.seeds, "axes": plan.axes,
        "baseline": plan.baseline, "precision": plan.precision, "command": command, "created": created,
        "paper": plan.paper,
        "runs": [{"run_id": r.run_id, "variant": r.variant, "seed": r.seed, "overrides": r.overrides,
                  "depends_on": r.depends_on, "config": r.cfg.to_dict()} for r in plan.runs],
    }
    write_json(path, manifest)
    return path


def plan_from_manifest(path: Path) -> Plan:
    """The plan a manifest holds (what a worker runs): each run's config as it was resolved at planning."""
    try:
        manifest = read_json(path)
        runs = [PlannedRun(r["run_id"], r["variant"], int(r["seed"]), dict(r["overrides"]),
                           config_from_dict(dict(r["config"])), r.get("depends_on")) for r in manifest["runs"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} does not hold a sweep plan ({type(exc).__name__}: {exc}); plan the sweep again "
                        "with `mirai-lab sweep`") from None
    return Plan(manifest["name"], manifest["budget"], list(manifest["seeds"]), list(manifest["axes"]),
                manifest.get("baseline"), runs, manifest.get("paper"), {})


def states(plan: Plan, root: Path) -> dict[str, RunState]:
    return {r.run_id: run_state(run_dir(root, r.run_id)) for r in plan.unique_runs}


def to_train(plan: Plan, root: Path, retry_failed: bool) -> list[str]:
    """The runs still to make. A run whose status says done but whose record is damaged is one of
    them: its warning is given here, once, before the sweep makes it again."""
    pending = [rid for rid, s in states(plan, root).items() if s.needs_training(retry_failed)]
    for rid in pending:
        if (found := damage(run_dir(root, rid))) is not None:
            warn_damage(found, remake_note(found.run))
    return pending


def train_one(plan: Plan, run_id: str, root: Path, threads: int | None,
              progress: Callable[[int, int, dict[str, float]], None] | None = None) -> str | None:
    """Train one run of the plan; returns None on success or the error message."""
    run = next(r for r in plan.runs if r.run_id == run_id)
    try:
        with part("setup"):  # what the trainer's own parts (train, val, ...) leave: building, resuming, hooks
            execute(run.cfg, root, progress, threads, run.variant, sweep=plan.name)
        return None
    except ClaimLost:
        raise  # not this run's failure: another worker holds it now, and this one must not write
    except Diverged as exc:
        return f"diverged: {exc}"
    except Exception as exc:  # noqa: BLE001 - one broken run must not stop the sweep
        message = f"{type(exc).__name__}: {exc}"
        set_status(run_dir(root, run_id), RunState.FAILED, error=message)
        return message


def run_sequential(plan: Plan, root: Path, retry_failed: bool, monitor: Any, threads: int | None = None) -> None:
    """Train the pending runs in order, one process. A run that another process is training now
    (a second sweep or a `train` on the same results) is left for last, when this process waits
    for it and reuses what it made; each run is locked while it is made (runs/lock.py)."""
    later = []
    for run_id in to_train(plan, root, retry_failed):
        if busy(run_dir(root, run_id)):
            say(f"run {run_id} is being trained by another process; training the other runs first")
            later.append(run_id)
            continue
        _train_in_order(plan, run_id, root, monitor, threads)
    for run_id in later:
        wait_for(run_dir(root, run_id))
        if run_state(run_dir(root, run_id)).needs_training(retry_failed):  # the other process did not finish it
            _train_in_order(plan, run_id, root, monitor, threads)


def _train_in_order(plan: Plan, run_id: str, root: Path, monitor: Any, threads: int | None) -> None:
    monitor.current(run_id)
    train_one(plan, run_id, root, threads, monitor.on_eval(run_id))
    monitor.refresh()


def worker_loop(plan: Plan, root: Path, storage_url: str | None, retry_failed: bool, threads: int | None,
                heartbeat_s: int = HEARTBEAT_S) -> int:
    """Claim and train runs until none is left; returns how many this worker trained.

    A dead worker's claim is re-issued after 3 missed heartbeats (`heartbeat_s`,
    default 30 s). Every write into the run's folder is fenced by the claim: a worker frozen
    past its heartbeats (its claim re-issued) that wakes stops before its next write, drops
    the run and writes nothing more for it.
    """

    with part("claim"):
        storage = open_storage(storage_url, sweep_dir(root, plan.name) / JOURNAL, heartbeat_s=heartbeat_s)
        queue = RunQueue(storage, plan.name, [r.run_id for r in plan.unique_runs],
                         lambda rid: not run_state(run_dir(root, rid)).needs_training(retry_failed),
                         retry_failed=retry_failed)
    trained = 0
    depends = {r.run_id: r.depends_on for r in plan.runs if r.depends_on}
    while True:
        with part("claim"):
            claim = queue.claim()
        if claim is None:  # every run left is held elsewhere: wait, in case a holder dies and its run comes back
            with part("idle"):
                claim = queue.claim(wait=True, poll_s=2.0)
        if claim is None:
            break
        dep = depends.get(claim.run_id)
        if dep is not None and run_state(run_dir(root, dep)) is not RunState.DONE:
            claim.release()  # its teacher is still training elsewhere: give it back and wait
            with part("idle"):
                time.sleep(2.0)
            continue
        folder = run_dir(root, claim.run_id)
        claim.fence(folder / CLAIM)
        try:
            with fenced(folder, claim.check), queue_claim():  # the claim, not a file lock, holds the run
                error = train_one(plan, claim.run_id, root, threads)
        except ClaimLost as exc:
            warn(f"{exc}; leaving the run to it")
            claim.release()
            continue
        if error is None:
            claim.done()
            trained += 1
        else:
            claim.failed(error)
    return trained


def summary(plan: Plan, root: Path) -> dict[str, int]:
    counts = {s.value: 0 for s in RunState}
    for s in states(plan, root).values():
        counts[s.value] += 1
    return counts
