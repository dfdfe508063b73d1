"""The learning-rate schedule: linear warm-up, then constant or cosine decay to min_lr_ratio."""

from __future__ import annotations

import math

from mirai_lab.config import RunConfig


def learning_rate(cfg: RunConfig, step: int) -> float:
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.lr_schedule == "cosine":
        progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
        return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    return t.lr
