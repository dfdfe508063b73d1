"""The lifecycle of a run, recorded in status.json: the one vocabulary of run states."""

from __future__ import annotations

import os
import socket
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

from mirai_lab.runs.store import read_json, warn, write_json


class RunState(StrEnum):
    """pending: not started (no status.json); running: claimed or training (also a done status
    whose final.json is missing); done: final.json written; failed: diverged or crashed, with the
    error (retrained only with --retry-failed); pruned: stopped early by a tuner's pruner, final
    for that study and never retrained by a sweep."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    PRUNED = "pruned"

    def needs_training(self, retry_failed: bool = False) -> bool:
        """Whether a sweep (sequential or a claiming worker alike) still has to train this run."""
        return self in (RunState.PENDING, RunState.RUNNING) or (retry_failed and self is RunState.FAILED)


def set_status(path: Path, state: RunState, **extra: Any) -> None:
    """Write status.json atomically; `extra` carries the error of a failed run, the step, etc."""
    write_json(path / "status.json", {"state": RunState(state).value, "time": time.time(),
                                      "host": socket.gethostname(), "pid": os.getpid(), **extra})


def run_state(path: Path) -> RunState:
    """The state of the run in `path` from its status.json (missing or unreadable = pending)."""
    try:
        state = RunState(read_json(path / "status.json")["state"])
    except (OSError, ValueError, KeyError, TypeError):
        return RunState.PENDING
    if state is RunState.DONE and not (path / "final.json").exists():
        return RunState.RUNNING
    return state


def done_record(path: Path) -> dict[str, Any] | None:
    """The final.json of a done run, for a caller that reuses it instead of training (a sweep, a
    tuner's trial). None when the run is not done, or when its record is damaged (warned here):
    the caller then makes the run again, and the trainer re-evaluates from the last checkpoint
    instead of training from scratch."""
    if run_state(path) is not RunState.DONE:
        return None
    try:
        final = read_json(path / "final.json")
    except (OSError, ValueError):
        final = None
    if isinstance(final, dict):
        return final
    warn(f"{path / 'final.json'} is damaged: the run is evaluated again from its checkpoint (or retrained)")
    return None
