"""The foresight objective: projectors (or MTP heads) and the per-head losses.

total = NTP + sum_k lambda_k(t) * L_k, with L_k the mean over valid (batch, position) of
-cos(rho_k(h_n), f_n^k) for alignment, or the cross-entropy of the k-th layout token for
`mtp`. Everything here is training-only: the sampled model never contains it.

The K projectors run as one grouped computation (docs/performance.md): their first layers
share the input, so they are one matrix product with the K weight matrices stacked; the
second and third layers are batched products over K. The loss is computed on every
position of the student sequence at once, against targets gathered once per step, with a
weight of zero where a position is not aligned or its target cell is off the grid; the
targets are unit-normalised once (they carry no gradient) instead of once per head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mirai_lab.config import ForesightConfig
from mirai_lab.foresight.layout import Layout, student_positions
from mirai_lab.foresight.schedule import lambda_scale

COS_EPS = 1e-8  # torch.nn.functional.cosine_similarity's eps: a zero vector has cosine 0


def _init_linear_(weight: torch.Tensor, bias: torch.Tensor) -> None:
    """nn.Linear's default initialisation, in its order (weight, then bias), on one head's slice."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    bound = 1 / math.sqrt(weight.shape[1])
    nn.init.uniform_(bias, -bound, bound)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """x / max(|x|, eps) along the last dimension, in fp32."""
    x = x.float()
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(COS_EPS)


def neg_cosine(pred: torch.Tensor, unit_target: torch.Tensor) -> torch.Tensor:
    """-cos(pred, target) along the last dimension, given the target already unit-normalised."""
    pred = pred.float()
    return -(pred * unit_target).sum(-1) / torch.linalg.vector_norm(pred, dim=-1).clamp_min(COS_EPS)


def masked_neg_cosine(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of -cos over the True entries of `valid` (B, M); pred/target (B, M, d): the loss
    of one head, which ForesightHeads computes for all heads at once."""
    weights = valid.float()
    return (neg_cosine(pred, unit_rows(target)) * weights).sum() / weights.sum().clamp(min=1.0)


class ForesightHeads(nn.Module):
    """K projectors rho_k: d -> p -> p -> d_out with SiLU (the paper's; official p = 2048),
    d_out = d_target for alignment or the vocabulary for `mtp`, stored stacked:
    w1 (K*p, d), w2 (K, p, p), w3 (K, d_out, p) and flat biases (K*p,), (K*p,), (K*d_out,),
    so that weight decay (ndim >= 2) and initialisation are those of K nn.Linear stacks."""

    def __init__(self, cfg: ForesightConfig, layout: Layout, d_model: int, d_target: int, n_tokens: int,
                 total_steps: int, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.mtp = cfg.injection == "mtp"
        k, p = cfg.k, cfg.projector_dim
        self.k, self.p = k, p
        self.d_out = vocab_size if self.mtp else d_target
        self.w1 = nn.Parameter(torch.empty(k * p, d_model))
        self.b1 = nn.Parameter(torch.empty(k * p))
        self.w2 = nn.Parameter(torch.empty(k, p, p))
        self.b2 = nn.Parameter(torch.empty(k * p))
        self.w3 = nn.Parameter(torch.empty(k, self.d_out, p))
        self.b3 = nn.Parameter(torch.empty(k * self.d_out))
        with torch.no_grad():  # head by head, layer by layer: the draws of K separate nn.Linear stacks
            for i in range(k):
                rows = slice(i * p, (i + 1) * p)
                _init_linear_(self.w1[rows], self.b1[rows])
                _init_linear_(self.w2[i], self.b2[rows])
                _init_linear_(self.w3[i], self.b3[i * self.d_out : (i + 1) * self.d_out])
        # mtp heads predict tokens, so they take the state that has not yet read the base cell
        positions, base = student_positions("predict" if self.mtp else cfg.align_index, n_tokens)
        # over the n_tokens student positions: the target cell of each head and its weight
        # (0 where the position is not aligned or the cell is off the grid)
        cells = torch.zeros(k, n_tokens, dtype=torch.long)
        valid = torch.zeros(k, n_tokens, dtype=torch.bool)
        cells[:, positions] = layout.cells[base].T
        valid[:, positions] = layout.valid[base].T
        self.register_buffer("cells", cells, persistent=False)  # (K, T)
        self.register_buffer("valid", valid, persistent=False)  # (K, T)
        self.register_buffer("coefs", torch.tensor(list(cfg.head_coefs) if cfg.head_coefs else [cfg.coef] * k,
                                                   dtype=torch.float32), persistent=False)
        self.total_steps = total_steps

    def scale(self, step: int) -> float:
        c = self.cfg
        warmup = int(c.warmup_frac * self.total_steps)
        return lambda_scale(c.schedule, step, self.total_steps, warmup, c.step_at, c.step_factor)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, d) -> (K, B*T, d_out): every projector on every position."""
        k, p = self.k, self.p
        h = hidden.reshape(-1, hidden.shape[-1])  # a view: block outputs are contiguous
        x = F.silu(torch.addmm(self.b1, h, self.w1.t())).view(-1, k, p).transpose(0, 1)
        x = F.silu(torch.baddbmm(self.b2.view(k, 1, p), x, self.w2.transpose(1, 2)))
        return torch.baddbmm(self.b3.view(k, 1, self.d_out), x, self.w3.transpose(1, 2))

    def gather(self, targets: torch.Tensor) -> torch.Tensor:
        """Each head's target cell for every (batch, position): (K, B*T, ...) from (B, N, ...),
        one index_select (a contiguous copy) for all heads."""
        b, n = targets.shape[:2]
        rows = self.cells[:, None, :] + n * torch.arange(b, device=targets.device)[None, :, None]  # (K, B, T)
        return targets.flatten(0, 1).index_select(0, rows.flatten()).view(self.k, -1, *targets.shape[2:])

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, step: int
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """hidden: (B, T, d) student states of the training sequence; targets: (B, N, d_t)
        cell features, or (B, N) tokens for mtp. Returns the weighted sum and per-head logs."""
        batch, t = hidden.shape[:2]
        out = self.project(hidden)
        if self.mtp:
            per = F.cross_entropy(out.float().flatten(0, 1), self.gather(targets).flatten(), reduction="none")
        else:
            per = neg_cosine(out, self.gather(unit_rows(targets)))  # (K, B*T)
        weights = self.valid.to(per.dtype)  # (K, T)
        counts = (weights.sum(-1) * batch).clamp(min=1.0)
        losses = (per.view(self.k, batch, t) * weights[:, None, :]).sum((1, 2)) / counts  # (K,)
        total = (self.coefs * self.scale(step) * losses).sum()
        name = "mtp_loss" if self.mtp else "align_loss"
        detached = losses.detach()
        return total, {f"{name}_k{i}": detached[i] for i in range(self.k)}
