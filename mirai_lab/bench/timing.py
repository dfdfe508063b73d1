"""Timing arithmetic of the bench: interleaved rounds, paired ratios, FLOP counts, peaks.

Everything compared is measured side by side in one process, interleaved (A B C A B C ...),
so that a drifting or shared machine hits every variant alike; ratios are medians of the
per-round ratios.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mirai_lab.model.gpt import Dropout, GPTShape

# The bench's sections, in the order they run; kept here, with the light arithmetic, so the command
# line can list them without importing the trainer
SECTIONS = ("peak", "train", "inference", "sampling", "eval", "sweep", "llamagen")

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, from the vendors' data sheets; the first
# name found in torch.cuda.get_device_name() wins, so the more specific names come first.
GPU_BF16_PEAKS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("B200", 2250e12),
    ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10", 125e12),
)


def gpu_bf16_peak(name: str) -> float | None:
    """The data-sheet dense bf16 peak of a GPU by its name, None when the table lacks it."""
    return next((peak for key, peak in GPU_BF16_PEAKS if key in name), None)


def block_matmul_params(shape: GPTShape) -> int:
    """Weights one transformer block multiplies each position by: wqkv, wo (4 d^2), SwiGLU (3 d f)."""
    return 4 * shape.dim * shape.dim + 3 * shape.dim * shape.ffn_hidden


def attention_flops(positions: int, dim: int) -> int:
    """Forward FLOPs of one layer's attention over `positions`: scores and weighted sum, 2 T^2 d each."""
    return 4 * positions * positions * dim


def train_flops(shape: GPTShape, batch: int) -> float:
    """6 * (non-embedding params) * tokens + attention (forward 4*T^2*d per layer, x3 with backward)."""
    dense = shape.n_layer * block_matmul_params(shape) + shape.dim * shape.vocab_size
    tokens = shape.n_tokens
    attn = shape.n_layer * attention_flops(tokens, shape.dim)
    return batch * (6 * dense * tokens + 3 * attn)


@dataclass(frozen=True)
class ForesightWork:
    """What a foresight variant computes beyond the GPT's step: `k` projectors d -> p -> p ->
    d_out on every student position, and, for a teacher source (Mirai-E's EMA or a static
    model), the teacher's forward through blocks 1..teacher_block."""

    k: int
    projector_dim: int
    d_out: int
    teacher: GPTShape | None = None
    teacher_block: int = 0


def teacher_flops(shape: GPTShape, batch: int, block: int) -> float:
    """A teacher's forward (inference mode: no backward) through blocks 1..`block` over the class
    position and all N tokens (the student reads N: the last token is never its input)."""
    positions = shape.n_tokens + 1
    return batch * block * (2 * block_matmul_params(shape) * positions + attention_flops(positions, shape.dim))


def projector_flops(shape: GPTShape, batch: int, work: ForesightWork) -> float:
    """The K projectors' three matmuls on every student position, forward + backward (3 x the
    forward's 2 FLOPs per multiply-add: the backward takes the input's and the weights' gradients)."""
    d, p = shape.dim, work.projector_dim
    return batch * shape.n_tokens * work.k * 6 * (d * p + p * p + p * work.d_out)


def step_flops(shape: GPTShape, batch: int, work: ForesightWork | None = None) -> float:
    """A training step's FLOPs: the GPT's (train_flops) plus the foresight variant's extra work.
    Elementwise work (norms, the cosine, the EMA update) is not counted, as in train_flops."""
    total = train_flops(shape, batch)
    if work is None:
        return total
    total += projector_flops(shape, batch, work)
    if work.teacher is not None:
        total += teacher_flops(work.teacher, batch, work.teacher_block)
    return total


def largest_matmul(shape: GPTShape, batch: int) -> tuple[int, int, int]:
    """(m, k, n) of the widest matmul of the GPT's step: every position of the batch against the
    widest of wqkv (3 d), a SwiGLU input (f) and the output head (V)."""
    return batch * shape.n_tokens, shape.dim, max(3 * shape.dim, shape.ffn_hidden, shape.vocab_size)


def use_plain_dropout(model: torch.nn.Module) -> None:
    """Swap the model's cheap-mask dropout for torch.nn.Dropout (bernoulli_ masks, same rate)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Dropout):
                setattr(module, name, torch.nn.Dropout(child.p))


def interleaved_samples(fns: dict[str, Callable[[], None]], warmup: int, repeats: int, inner: int,
                        sync: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Seconds per call of each closure in each round, measured round-robin; `sync` waits for
    the device before each clock read."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            sync()
            samples[name].append((time.perf_counter() - t) / inner)
    return samples


def paired_ratio(samples: dict[str, list[float]], name: str, reference: str) -> float:
    """Median over rounds of name/reference: each round's pair shares the machine's state at
    that moment, so this ratio is steadier than a ratio of medians when the machine drifts."""
    return statistics.median(a / b for a, b in zip(samples[name], samples[reference], strict=True))
