"""The exponential moving average of the weights: the Mirai-E teacher and the weights that are evaluated."""

from __future__ import annotations

import torch

from mirai_lab.model.gpt import GPT


@torch.no_grad()
def update_ema(ema: GPT, model: GPT, decay: float, step: int) -> None:
    """EMA with the usual warm-up of the decay, so short runs are not dominated by the init."""
    d = min(decay, (1 + step) / (10 + step))
    ema_p = list(ema.parameters())
    torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1.0 - d)
