"""A sweep's timing.json: where the wall time of each command that trained its runs went.

One command (a sweep, an adaptive sweep's rounds, a reproduction, a confirmation) is one
*call*. Its wall time is split into the parts of timing.PARTS:

- inside a round of workers, each worker's exclusive parts (its ledger, written when it
  exits) plus `idle`, the time between its exit and the round's end; every worker's parts add
  up to the round's wall time, and a round counts as the mean over its workers (worker-seconds
  divided by their number), so that the call's parts add up to its wall time;
- a round trained in this process (one worker, no storage) counts this process's ledger;
- outside the rounds, this process's own parts (planning and looks, the report);
- `other` is what no part claims: start-up of this process, waits between parts.

The calls are appended, so a sweep resumed or grown over several commands keeps them all.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mirai_lab.files.atomic import read_json, write_json
from mirai_lab.results_dir import TIMING, worker_timing
from mirai_lab.timing import LEDGER, PARTS, read_calls, since

_current: CallTiming | None = None


class CallTiming:
    """The time of one command, gathered while it runs and written to its sweep's timing.json."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.folder: Path | None = None  # the sweep folder; set once the plan names it
        self.t0 = time.perf_counter()
        self.before = LEDGER.totals()
        self.rounds: list[dict[str, Any]] = []
        self.ledger_in_rounds: dict[str, float] = {}  # this process's parts spent inside in-process rounds

    def at(self, folder: Path) -> None:
        if self.folder is None:
            self.folder = folder

    @contextmanager
    def round_here(self) -> Iterator[None]:
        """A round whose runs this process trains itself: its parts are this process's ledger."""
        with self._round() as measured:
            yield
        parts = measured["ledger"]
        parts["other"] = max(0.0, measured["wall"] - sum(parts.values()))  # what no part of the round claims
        self.rounds.append({"wall_s": measured["wall"], "workers": 1, "worker_s": parts})

    @contextmanager
    def round_of_workers(self, log_dir: Path, workers: int) -> Iterator[float]:
        """A round of `workers` processes, started inside the block at the wall-clock time it yields;
        they have all exited when it ends. What this process does meanwhile is not the round's time."""
        with self._round():
            spawned_at = time.time()
            yield spawned_at
            wall = time.time() - spawned_at
        total: dict[str, float] = {}
        for i in range(workers):
            for name, seconds in _worker_parts(worker_timing(log_dir, i), spawned_at, wall).items():
                total[name] = total.get(name, 0.0) + seconds
        self.rounds.append({"wall_s": wall, "workers": workers, "worker_s": total})

    @contextmanager
    def _round(self) -> Iterator[dict[str, Any]]:
        """Measure a round: its wall time and this process's parts during it, kept out of the call's own."""
        t0, before = time.perf_counter(), LEDGER.totals()
        out: dict[str, Any] = {}
        try:
            yield out
        finally:
            out["wall"] = time.perf_counter() - t0
            out["ledger"] = since(before, LEDGER.totals())
            for name, seconds in out["ledger"].items():
                self.ledger_in_rounds[name] = self.ledger_in_rounds.get(name, 0.0) + seconds

    def summary(self) -> dict[str, Any]:
        """The call as timing.json keeps it: wall time, parts (wall-equivalent seconds), rounds."""
        wall = time.perf_counter() - self.t0
        outside = since(self.ledger_in_rounds, since(self.before, LEDGER.totals()))
        parts = {k: v for k, v in outside.items() if v > 0}
        in_rounds = sum(r["wall_s"] for r in self.rounds)
        parts["other"] = parts.get("other", 0.0) + max(0.0, wall - in_rounds - sum(parts.values()))
        for r in self.rounds:
            for name, seconds in r["worker_s"].items():
                parts[name] = parts.get(name, 0.0) + seconds / r["workers"]
        ordered = {name: round(parts[name], 2) for name in PARTS if parts.get(name, 0.0) > 0}
        return {"command": self.command, "wall_s": round(wall, 2),
                "workers": max((r["workers"] for r in self.rounds), default=1), "parts": ordered,
                "rounds": [{"wall_s": round(r["wall_s"], 2), "workers": r["workers"],
                            "worker_s": {k: round(v, 2) for k, v in r["worker_s"].items()}} for r in self.rounds]}

    def write(self) -> None:
        if self.folder is None or not self.rounds:  # a dry run, or nothing was left to train
            return
        path = self.folder / TIMING
        calls = read_calls(self.folder)
        write_json(path, {"calls": [*calls, self.summary()]})


def _worker_parts(path: Path, spawned_at: float, wall: float) -> dict[str, float]:
    """One worker's parts over a round of `wall` seconds: its ledger, its idle tail, the rest as `other`.
    A worker that left no ledger (killed) counts its whole round as `other`."""
    try:
        record = read_json(path)
        parts = {k: float(v) for k, v in record["parts"].items() if k in PARTS}
        lifetime = float(record["ended_at"]) - spawned_at
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {"other": wall}
    lifetime = min(max(lifetime, 0.0), wall)
    parts["other"] = parts.get("other", 0.0) + max(0.0, lifetime - sum(parts.values()))
    parts["idle"] = parts.get("idle", 0.0) + wall - lifetime
    return parts


@contextmanager
def timed_call(command: str) -> Iterator[CallTiming]:
    """The timing of the outermost command in progress: a nested call (an adaptive round's sweep,
    a reproduction's sweep) adds its rounds to the outer one, which alone writes timing.json."""
    global _current
    if _current is not None:
        yield _current
        return
    _current = call = CallTiming(command)
    try:
        yield call
    finally:
        _current = None
        call.write()


def current() -> CallTiming | None:
    return _current
