"""The bench's training steps: real `Trainer`s (setup, then `train_step`), one per variant.

A variant is a config: the baseline, Mirai-I (a cached encoder feature table, k = 1) and
Mirai-E (the online EMA teacher, k = 3), each in fp32 or bf16 autocast, and `plain` (the
baseline with torch.nn.Dropout, the plain-eager reference). Trainers are built on the
bench's results root, whose caches (tokens, feature tables) they reuse and fill; setup
writes no run file. The GPU presets (gpt-b and up) train on a synthetic LlamaGen code folder
of random codes with the paper's shape (16 x 16 tokens of a 16384-code book, 1000 classes),
so that their step is the one the paper's runs take.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mirai_lab.bench.timing import use_plain_dropout
from mirai_lab.files.atomic import atomic_path
from mirai_lab.foresight.fit import configure
from mirai_lab.results_dir import cache_dir
from mirai_lab.training.trainer import Trainer

VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "baseline": {},
    "mirai-i": {"foresight.source": "bidirectional", "foresight.k": 1},
    "mirai-e": {"foresight.source": "ema", "foresight.k": 3},
}
CODE_PRESETS = ("gpt-b", "gpt-l", "gpt-xl")
CODE_GRID, CODE_VOCAB, CODE_CLASSES = 16, 16384, 1000


def synthetic_code_folder(folder: Path, n: int = 1024, seed: int = 0) -> Path:
    """A LlamaGen-layout code folder (imagenet256_codes/<i>.npy (1, 2, 256), _labels/<i>.npy (1,))
    of random codes; written once, file by file atomically."""
    codes, labels = folder / "imagenet256_codes", folder / "imagenet256_labels"
    if (labels / f"{n - 1}.npy").exists():
        return folder
    codes.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        for path, array in ((codes / f"{i}.npy", rng.integers(0, CODE_VOCAB, (1, 2, CODE_GRID**2))),
                            (labels / f"{i}.npy", rng.integers(0, CODE_CLASSES, (1,)))):
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.save(fh, array)
    return folder


def step_config_overrides(preset: str, variant: str, precision: str, batch: int, root: Path,
                          overrides: dict[str, Any]) -> dict[str, Any]:
    over: dict[str, Any] = {"model.preset": preset, "train.batch_size": batch, "train.precision": precision}
    if preset in CODE_PRESETS:
        over |= {"data.dataset": "codes", "data.codes_dir": str(synthetic_code_folder(cache_dir(root) / "bench-codes")),
                 "tokenizer.codebook_size": CODE_VOCAB, "data.val_fraction": 0.01}
    return over | VARIANTS[variant] | overrides


def build_trainer(preset: str, variant: str, precision: str, batch: int, root: Path,
                  overrides: dict[str, Any]) -> Trainer:
    cfg = configure(None, step_config_overrides(preset, variant, precision, batch, root, overrides))
    trainer = Trainer(cfg, root)
    trainer.setup()
    if variant == "plain":
        use_plain_dropout(trainer.model)
    return trainer


class Stepper:
    """A closure over one trainer: each call is `trainer.train_step` of the next step."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.step = 0

    def __call__(self) -> None:
        self.trainer.train_step(self.step)
        self.step += 1


def device_sync(device: torch.device):
    """A `sync` for interleaved_samples: waits for the GPU, nothing on the CPU."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None
