"""Fault injection for the reliability suite, resolved once when a run is set up.

`MIRAI_LAB_INJECT_NAN_AT` = "STEP" or "RUN_ID:STEP" makes the loss of that step NaN, so the
tests can check that a diverged run is marked failed with its step and that a sweep goes on.
Unset (always, outside the tests), the trainer gets no hook and its step carries no check.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

INJECT_NAN_ENV = "MIRAI_LAB_INJECT_NAN_AT"

LossHook = Callable[[torch.Tensor, int], torch.Tensor]


def loss_hook(run_id: str) -> LossHook | None:
    """The hook that poisons the loss at the requested step of this run, or None."""
    value = os.environ.get(INJECT_NAN_ENV, "")
    target, _, step = value.rpartition(":")
    if not step.isdigit() or target not in ("", run_id):
        return None
    at = int(step)
    return lambda loss, step: loss * float("nan") if step == at else loss
