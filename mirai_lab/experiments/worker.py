"""Sweep workers: processes that claim runs of a planned sweep and train them.

A worker is started with the plan as data (the manifest, which holds every run's resolved
config) and its settings, never with a command line: `run_sweep --workers N` starts N of them
with multiprocessing's spawn (a fresh interpreter: torch's thread pools do not survive a fork),
each with its share of the cores and its stderr in worker-<i>.log beside the manifest (a pipe
nobody reads could fill up and stall a worker).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path

from mirai_lab.errors import UserError
from mirai_lab.experiments.sweep import plan_from_manifest, worker_loop
from mirai_lab.files.atomic import write_json
from mirai_lab.results_dir import worker_log, worker_timing
from mirai_lab.timing import LEDGER


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker needs besides the plan in the manifest."""

    root: str  # the results directory
    manifest: str
    storage: str | None
    retry_failed: bool
    threads: int | None
    heartbeat_s: int
    spawned_at: float = 0.0  # the parent's wall clock when it started the workers: their start-up time


def work(settings: WorkerSettings, log: str, timing: str) -> None:
    """A worker process's body: stdout to nowhere, stderr to `log`; one `error:` line and exit 2 on a
    UserError. Its time ledger goes to `timing` when it exits, however it exits short of being killed."""
    if settings.spawned_at:
        LEDGER.add("start", max(0.0, time.time() - settings.spawned_at))  # interpreter and imports
    try:
        _work(settings, log)
    finally:
        write_json(Path(timing), {"parts": LEDGER.totals(), "spawned_at": settings.spawned_at,
                                  "ended_at": time.time()})


def _work(settings: WorkerSettings, log: str) -> None:
    with open(os.devnull, "wb") as null, open(log, "ab") as err:
        os.dup2(null.fileno(), 1)
        os.dup2(err.fileno(), 2)
    try:
        with LEDGER.part("claim"):
            plan = plan_from_manifest(Path(settings.manifest))
        worker_loop(plan, Path(settings.root), settings.storage, settings.retry_failed, settings.threads,
                    settings.heartbeat_s)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


def start_workers(settings: WorkerSettings, n: int, log_dir: Path) -> list[BaseProcess]:
    """N claiming workers on this machine."""
    log_dir.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")
    procs = []
    for i in range(n):
        log = worker_log(log_dir, i)
        log.write_bytes(b"")
        timing = worker_timing(log_dir, i)
        timing.unlink(missing_ok=True)  # a file left by an earlier round would be read as this one's
        proc = context.Process(target=work, args=(settings, str(log), str(timing)), name=f"mirai-lab-worker-{i}",
                               daemon=False)
        proc.start()
        procs.append(proc)
    return procs


def worker_problems(procs: list[BaseProcess], log_dir: Path) -> list[str]:
    """One line per worker that did not exit cleanly: how it ended, and its last error line.

    The last line of a killed worker's log is whatever it printed last (an Optuna warning,
    a progress line), so only a line it printed as an error is quoted."""
    out = []
    for i, proc in enumerate(procs):
        code = proc.exitcode
        if code == 0:
            continue
        how = f"was killed by {_signal_name(-code)}" if code is not None and code < 0 else f"exited with status {code}"
        log = worker_log(log_dir, i)
        try:
            errors = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.startswith("error:")]
        except OSError:
            errors = []
        reason = f" ({errors[-1]})" if errors else ""
        out.append(f"sweep worker {i} {how}{reason}, see {log}")
    return out


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
