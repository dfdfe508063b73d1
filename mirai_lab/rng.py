"""Keyed random streams: every random draw of a run is a pure function of (seed, step, stream).

A run draws randomness for several purposes: the initial weights, the batch order, the
augmentation crops, the class-dropout and dropout masks of each step, and the sampling noise
of each evaluation. Each purpose is a named *stream*, and the generator of a stream at a step
is seeded from a hash of (seed, step, stream, rank). Three properties follow by construction:

- exact resume: the masks of step t do not depend on what ran before step t (how many
  evaluations, whether a cache was loaded or fitted, where the process was killed), so a
  resumed run draws what the uninterrupted one drew;
- paired variants: a baseline and its foresight variants of one seed share the initial
  model weights, the batch order, the crops and every mask of the model: the foresight heads
  draw their init from a stream of their own and draw nothing while training;
- isolation: evaluation samples from its own stream, and nothing here reads or advances
  torch's global generator, so no library call in evaluation or a cache load can shift the
  training noise (and the training noise cannot shift them).

Under torchrun each rank has its own dropout and class-dropout streams (the rank is part of
the key); initial weights, batch order and crops are shared by all ranks.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch

# The streams of a training step, drawn by the model's Dropout and LabelEmbedder modules.
STEP_STREAMS = ("dropout", "class_dropout")


def stream_seed(seed: int, step: int, stream: str, rank: int = 0) -> int:
    """A 63-bit seed for `stream` at `step`; distinct (seed, step, stream, rank) give unrelated seeds."""
    digest = hashlib.sha256(f"mirai-lab/{seed}/{step}/{stream}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def stream_generator(seed: int, step: int, stream: str, rank: int = 0,
                     device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator for `stream` at `step` (on `device`: CUDA ops need a CUDA generator)."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, step, stream, rank))


@contextlib.contextmanager
def seeded_init(seed: int, stream: str) -> Iterator[None]:
    """Module construction (whose init draws from torch's global CPU generator) on a keyed stream:
    the caller's global generator is restored afterwards, untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(seed, 0, stream))
        yield


class StepNoise:
    """The generators of the per-step training streams of one rank, reseeded at every step.

    The trainer hands them to the model once (`GPT.use_generators`) and calls `at(step)` before
    each step; the masks of a step are then a pure function of (seed, step, rank)."""

    def __init__(self, seed: int, rank: int, device: torch.device) -> None:
        self.seed, self.rank = seed, rank
        self.generators = {name: torch.Generator(device=device) for name in STEP_STREAMS}

    def at(self, step: int) -> None:
        for name, gen in self.generators.items():
            gen.manual_seed(stream_seed(self.seed, step, name, self.rank))
