"""The loss of one (micro-)batch: next-token prediction plus the foresight alignment."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mirai_lab.model.gpt import GPT
from mirai_lab.training.build import Foresight


class StepLoss(nn.Module):
    """The model and the foresight heads as one module, so that DDP syncs the gradients of
    both with one reducer and the loss of a (micro-)batch is a single forward call."""

    def __init__(self, model: GPT, foresight: Foresight | None) -> None:
        super().__init__()
        self.model = model
        self.heads = foresight.heads if foresight is not None else None
        self.blocks = (foresight.student_block,) if foresight is not None else ()

    def forward(self, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None, step: int
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, NTP loss, per-head logs) of token grids x (B, N), labels y and foresight targets."""
        logits, hidden = self.model(x[:, :-1], y, hidden_blocks=self.blocks)
        ntp = F.cross_entropy(logits.flatten(0, 1), x.flatten())
        if self.heads is None:
            return ntp, ntp, {}
        aux, logs = self.heads(hidden[self.blocks[0]], targets, step)
        return ntp + aux, ntp, logs
