"""The lifecycle of a run, recorded in status.json: the one vocabulary of run states."""

from __future__ import annotations

import os
import socket
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

from mirai_lab.runs.store import read_json, write_json


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
