"""One trainer per run on a machine: a file lock per run, held while the run is made.

Two commands on one results directory (two sweeps, a sweep and a `train`, two tuners) that
reach the same run id would otherwise train it side by side, and the two trainers would
overwrite each other's curve, checkpoint and final.json. Whoever makes a run (execute, a
tuner's trial) goes through `claim_run`:

1. a run that is done is reused without a lock (its record is read atomically);
2. otherwise the process takes `<results>/locks/<run_id>.lock` (filelock), waiting, with one
   line saying so, while another process holds it;
3. under the lock it asks again whether the run is done (the process it waited for may have
   finished it) and only then mends a damaged folder (runs/state.py `mend`) and trains.

The lock file lives outside the run folder, so run-state detection and the fenced folders of
claiming workers never see it, and it is removed before it is released (filelock's waiters
notice an unlinked lock and retry on the path), as are the locks folder when it is empty: a
finished command leaves nothing behind.

Two kinds of process skip the lock. A sweep worker that claimed its run through an Optuna
storage (experiments/queue.py and experiments/storage.py) already holds it exclusively, on every machine that shares the
storage; a lock would let a frozen worker block the worker that takes its run over. The ranks
of a torchrun job make one run together: only one of them may hold a lock, and the others
would not wait for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from mirai_lab.distributed import world_size
from mirai_lab.messages import say
from mirai_lab.results_dir import LOCKS
from mirai_lab.runs.state import done_record, mend

_queue_claim: ContextVar[bool] = ContextVar("mirai_lab_queue_claim", default=False)


def lock_file(run: Path) -> Path:
    """Where the lock of the run folder `run` (<results>/runs/<run_id>) lives."""
    return run.parent.parent / LOCKS / f"{run.name}.lock"


@contextlib.contextmanager
def queue_claim() -> Iterator[None]:
    """Inside this block the run being made was claimed through a storage: take no file lock."""
    token = _queue_claim.set(True)
    try:
        yield
    finally:
        _queue_claim.reset(token)


def _acquire(lock: FileLock, path: Path, wait: bool, name: str) -> bool:
    """Take `lock` at `path`: False at once if another process holds it and `wait` is False."""
    said = False
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            try:
                lock.acquire(blocking=False)
            except Timeout:
                if not wait:
                    return False
                if not said:
                    say(f"run {name} is being trained by another process; waiting for it to finish")
                    said = True
                lock.acquire()
            return True
        except FileNotFoundError:
            continue  # a holder that left removed the empty locks folder: make it again


@contextlib.contextmanager
def _held(run: Path, wait: bool) -> Iterator[bool]:
    """Hold the run's lock for the block; yields False at once (holding nothing) if another process
    holds it and `wait` is False, else True once it is held (after one line if it had to wait)."""
    path = lock_file(run)
    lock = FileLock(path)
    if not _acquire(lock, path, wait, run.name):
        yield False
        return
    try:
        yield True
    finally:
        path.unlink(missing_ok=True)
        lock.release()
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # only when no other lock is in it


def busy(run: Path) -> bool:
    """Whether another process holds the run's lock now (it is training the run)."""
    if _queue_claim.get() or world_size() > 1:
        return False
    with _held(run, wait=False) as held:
        return not held


def wait_for(run: Path) -> None:
    """Return when no other process holds the run's lock (saying so in one line if one does)."""
    with _held(run, wait=True):
        pass


@contextlib.contextmanager
def claim_run(run: Path) -> Iterator[dict[str, Any] | None]:
    """Make the run in folder `run` at most once on this machine.

    Yields the run's final record when it is done (the caller reuses it), else None: the run
    is then held by this process alone until the block ends, its damaged files (if any) were
    reported and mended, and the caller trains it."""
    if (final := done_record(run)) is not None:
        yield final
        return
    locked = _held(run, wait=True) if not (_queue_claim.get() or world_size() > 1) else contextlib.nullcontext()
    with locked:
        final = done_record(run)  # finished by the process this one waited for
        if final is None:
            mend(run)
        yield final
