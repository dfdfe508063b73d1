"""The foresight objective: projectors (or MTP heads) and the per-head losses.

total = NTP + sum_k lambda_k(t) * L_k, with L_k the mean over valid (batch, position) of
-cos(rho_k(h_n), f_n^k) for alignment, or the cross-entropy of the k-th layout token for
`mtp`. Everything here is training-only: the sampled model never contains it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mirai_lab.config import ForesightConfig
from mirai_lab.foresight.layout import Layout, student_positions
from mirai_lab.foresight.schedule import lambda_scale


class Projector(nn.Sequential):
    """rho_k: d -> p -> p -> d_target with SiLU, as in the paper (official p = 2048)."""

    def __init__(self, d_in: int, hidden: int, d_out: int) -> None:
        super().__init__(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, d_out))


def masked_neg_cosine(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of -cos over the True entries of `valid` (B, M); pred/target (B, M, d)."""
    cos = F.cosine_similarity(pred.float(), target.float(), dim=-1)
    weights = valid.to(cos.dtype)
    return -(cos * weights).sum() / weights.sum().clamp(min=1.0)


def masked_cross_entropy(logits: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    ce = F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten(), reduction="none").view_as(valid)
    weights = valid.to(ce.dtype)
    return (ce * weights).sum() / weights.sum().clamp(min=1.0)


class ForesightHeads(nn.Module):
    """One projector (alignment) or token head (mtp) per layout head k."""

    def __init__(self, cfg: ForesightConfig, layout: Layout, d_model: int, d_target: int, n_tokens: int,
                 total_steps: int, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.mtp = cfg.injection == "mtp"
        out_dim = vocab_size if self.mtp else d_target
        self.heads = nn.ModuleList(Projector(d_model, cfg.projector_dim, out_dim) for _ in range(cfg.k))
        # mtp heads predict tokens, so they take the state that has not yet read the base cell
        positions, base = student_positions("predict" if self.mtp else cfg.align_index, n_tokens)
        # the aligned positions are a contiguous run: a slice is a view, where an index
        # gather would copy forward and scatter-add backward (1 ms a step on cpu-s)
        self.positions = slice(int(positions[0]), int(positions[-1]) + 1)
        self.register_buffer("cells", layout.cells[base], persistent=False)  # (M, K)
        self.register_buffer("valid", layout.valid[base], persistent=False)  # (M, K)
        self.coefs = list(cfg.head_coefs) if cfg.head_coefs else [cfg.coef] * cfg.k
        self.total_steps = total_steps

    def scale(self, step: int) -> float:
        c = self.cfg
        warmup = int(c.warmup_frac * self.total_steps)
        return lambda_scale(c.schedule, step, self.total_steps, warmup, c.step_at, c.step_factor)

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, step: int
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """hidden: (B, N, d) student states of the training sequence; targets: (B, N, d_t)
        cell features, or (B, N) tokens for mtp. Returns the weighted sum and per-head logs."""
        h = hidden[:, self.positions]  # a view
        scale = self.scale(step)
        total = hidden.new_zeros((), dtype=torch.float32)
        logs: dict[str, torch.Tensor] = {}
        batch = h.shape[0]
        for k, head in enumerate(self.heads):
            cells = self.cells[:, k]
            valid = self.valid[:, k].expand(batch, -1)
            if self.mtp:
                loss = masked_cross_entropy(head(h), targets[:, cells], valid)
                logs[f"mtp_loss_k{k}"] = loss.detach()
            else:
                loss = masked_neg_cosine(head(h), targets[:, cells], valid)
                logs[f"align_loss_k{k}"] = loss.detach()
            total = total + (self.coefs[k] * scale) * loss
        return total, logs
