"""Where a sweep's time goes: a per-process ledger of exclusive time in named parts.

Parts nest (a cache build inside a run's set-up, a run inside a worker's life). Each second
is counted once, in the innermost part open at the time, so the parts of a breakdown add up
to the wall time they were measured over, and what no part claims shows up as such.
Workers write their ledger when they exit; the sweep folds them into its timing.json
(experiments/timing_record.py) and `report` prints the breakdown.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mirai_lab.files.atomic import read_json
from mirai_lab.results_dir import TIMING

# the parts, in the order a breakdown lists them, and how a reader names each
PARTS: dict[str, str] = {
    "train": "training steps",
    "val": "dense val_nll",
    "final_eval": "final evaluation",
    "cache_build": "cache builds",
    "setup": "run set-up",
    "write": "checkpoints and run files",
    "start": "worker start",
    "claim": "claiming runs",
    "idle": "idle workers",
    "plan": "planning and looks",
    "report": "report",
    "other": "unaccounted",
}


class Ledger:
    """Exclusive seconds per part of this process; not thread-safe (one training thread per process)."""

    def __init__(self) -> None:
        self._totals: dict[str, float] = {}
        self._open: list[str] = []
        self._since = 0.0

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        if name not in PARTS:
            raise ValueError(f"unknown time part {name!r}")
        self._switch()
        self._open.append(name)
        try:
            yield
        finally:
            self._switch()
            self._open.pop()

    def _switch(self) -> None:
        """Credit the time since the last switch to the innermost open part."""
        now = time.perf_counter()
        if self._open:
            self._totals[self._open[-1]] = self._totals.get(self._open[-1], 0.0) + now - self._since
        self._since = now

    def totals(self) -> dict[str, float]:
        """Seconds per part so far, the open parts included up to now."""
        self._switch()
        return dict(self._totals)

    def add(self, name: str, seconds: float) -> None:
        """Time measured elsewhere (a worker's interpreter start, seen from the clock it was spawned by)."""
        if name not in PARTS:
            raise ValueError(f"unknown time part {name!r}")
        self._totals[name] = self._totals.get(name, 0.0) + seconds


LEDGER = Ledger()
part = LEDGER.part


def since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The seconds per part between two `totals()` readings."""
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def read_calls(folder: Path) -> list[dict[str, Any]]:
    """The calls a sweep folder's timing.json holds; none when it has none or it is unreadable."""
    try:
        calls = read_json(folder / TIMING)["calls"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [c for c in calls if isinstance(c, dict) and isinstance(c.get("parts"), dict)
            and isinstance(c.get("wall_s"), int | float)]


def breakdown(calls: list[dict[str, Any]]) -> tuple[float, dict[str, float]]:
    """Total wall seconds of `calls` and the seconds of each part over them, in PARTS order."""
    wall = sum(float(c["wall_s"]) for c in calls)
    parts: dict[str, float] = {}
    for call in calls:
        for name, seconds in call["parts"].items():
            if name in PARTS:
                parts[name] = parts.get(name, 0.0) + float(seconds)
    return wall, {name: parts[name] for name in PARTS if name in parts}


def describe(calls: list[dict[str, Any]]) -> str | None:
    """One sentence: the wall time of `calls` and its parts in percent, largest first."""
    wall, parts = breakdown(calls)
    if not calls or wall <= 0:
        return None
    workers = max(int(c.get("workers", 1)) for c in calls)
    shares = ", ".join(f"{PARTS[name]} {100 * s / wall:.0f}%" for name, s in
                       sorted(parts.items(), key=lambda kv: -kv[1]) if 100 * s / wall >= 0.5)
    n = len(calls)
    length = f"{wall:.0f} s" if wall < 120 else f"{wall / 60:.1f} min"
    return (f"{length} of wall time in {n} command{'s' if n > 1 else ''} with up to {workers} "
            f"worker{'s' if workers > 1 else ''} (each round's worker-seconds divided by its workers): {shares}.")
