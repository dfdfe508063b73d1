"""The time ledger: exclusive seconds per part, nested parts counted once."""

from __future__ import annotations

import pytest

from mirai_lab import timing
from mirai_lab.timing import PARTS, Ledger, breakdown, describe, since


class Clock:
    """A perf_counter that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_nested_parts_count_each_second_once(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    ledger = Ledger()
    with ledger.part("setup"):
        clock.now += 2.0
        with ledger.part("cache_build"):
            clock.now += 5.0
        clock.now += 1.0
        with ledger.part("train"):
            clock.now += 10.0
    clock.now += 7.0  # outside every part: nobody's
    assert ledger.totals() == {"setup": 3.0, "cache_build": 5.0, "train": 10.0}
    with ledger.part("train"):
        clock.now += 4.0
        assert ledger.totals()["train"] == 14.0  # an open part counts up to now
    ledger.add("start", 1.5)
    assert ledger.totals() == {"setup": 3.0, "cache_build": 5.0, "train": 14.0, "start": 1.5}


def test_unknown_parts_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown time part"), Ledger().part("lunch"):
        pass
    with pytest.raises(ValueError, match="unknown time part"):
        Ledger().add("lunch", 1.0)


def test_since_keeps_the_parts_that_grew() -> None:
    assert since({"train": 1.0, "val": 2.0}, {"train": 4.0, "val": 2.0, "setup": 0.5}) == {"train": 3.0, "setup": 0.5}


def test_breakdown_sums_the_calls_in_part_order() -> None:
    calls = [{"wall_s": 100.0, "workers": 2, "parts": {"val": 10.0, "train": 80.0, "other": 10.0}},
             {"wall_s": 50.0, "workers": 1, "parts": {"train": 40.0, "idle": 10.0}}]
    wall, parts = breakdown(calls)
    assert wall == 150.0
    assert parts == {"train": 120.0, "val": 10.0, "idle": 10.0, "other": 10.0}
    assert list(parts) == [p for p in PARTS if p in parts]
    assert describe(calls) == ("2.5 min of wall time in 2 commands with up to 2 workers (each round's "
                               "worker-seconds divided by its workers): training steps 80%, dense val_nll 7%, "
                               "idle workers 7%, unaccounted 7%.")
    assert describe([]) is None
