"""Schedules of the alignment coefficient lambda(t).

Every schedule is zero before the warm-up step (Mirai-E switches alignment on only after the
EMA teacher has become meaningful); after it:
- constant / delayed: the full coefficient (delayed is constant with a required warm-up);
- step: the full coefficient, multiplied by `step_factor` from `step_at` * total steps on
  (the paper's 2 -> 1);
- cosine: decays from the full coefficient to 0 at the end, over the steps after warm-up.
"""

from __future__ import annotations

import math


def lambda_scale(schedule: str, step: int, total: int, warmup: int = 0, step_at: float = 0.5,
                 step_factor: float = 0.5) -> float:
    """Multiplier in [0, 1] (or step_factor) applied to every head's coefficient at `step`."""
    if step < warmup:
        return 0.0
    if schedule in ("constant", "delayed"):
        return 1.0
    if schedule == "step":
        return step_factor if step >= int(step_at * total) else 1.0
    if schedule == "cosine":
        span = max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))
    raise ValueError(f"unknown schedule {schedule!r}")  # validated in config
