"""Where foresight targets come from: cell-indexed features f[b, m] for every grid cell m.

The teacher feature of cell m is the teacher's state after it has read x_m (position m+1
of the full sequence), so a target always contains the content of its own cell. Teachers
run without gradient and in eval mode (no dropout, no class dropout).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mirai_lab.errors import CorruptFile, UserError
from mirai_lab.files.tensors import load_tensors
from mirai_lab.model.gpt import GPT
from mirai_lab.results_dir import CHECKPOINT, NAME_RE, run_dir, runs_dir


class TargetSource:
    """Gives (B, N, d_t) targets for a batch; `dim` is d_t."""

    dim: int

    def targets(self, tokens: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
                crop: torch.Tensor | None = None) -> torch.Tensor:
        """`index` are the images of the batch and `crop` their augmentation crops (code folders)."""
        raise NotImplementedError


class TeacherSource(TargetSource):
    """Mirai-E (online EMA) or a static frozen model, read at block `block`."""

    def __init__(self, teacher: GPT, block: int) -> None:
        self.teacher = teacher
        self.block = block
        self.dim = teacher.shape.dim

    # no_grad, not inference_mode: a compiled step (train.compile) saves its inputs for the
    # backward, and inference tensors cannot be saved; the targets are constants either way
    @torch.no_grad()
    def targets(self, tokens: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
                crop: torch.Tensor | None = None) -> torch.Tensor:
        """The residual stream after `block` at the positions that have read a cell (1..N); the
        blocks above it never run."""
        was_training = self.teacher.training
        self.teacher.eval()
        _, hidden = self.teacher(tokens, labels, hidden_blocks=(self.block,), stop_after=self.block)
        self.teacher.train(was_training)
        return hidden[self.block][:, 1:]


class FeatureTableSource(TargetSource):
    """Mirai-I: pre-extracted encoder features looked up by image (and crop) index.

    The table is (N_images, N_cells, d), or (N_images, n_crops, N_cells, d) for code folders.
    """

    def __init__(self, features: torch.Tensor) -> None:
        self.features = features  # a tensor, or FeatureShards (memory-mapped DINOv2 shards)
        self.dim = int(features.shape[-1])

    def targets(self, tokens: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
                crop: torch.Tensor | None = None) -> torch.Tensor:
        if self.features.ndim == 4:
            rows = self.features[index, crop if crop is not None else torch.zeros_like(index)]
        else:
            rows = self.features.index_select(0, index)  # one gather; cheaper than advanced indexing
        return rows.float().detach()  # targets are constants: no gradient may reach the table


def resolve_checkpoint(ref: str, results: Path) -> Path:
    """A run id under <results>/runs or a path to a checkpoint file."""
    if NAME_RE.fullmatch(ref) and (candidate := run_dir(results, ref) / CHECKPOINT).is_file():  # a path is no run id
        return candidate
    path = Path(ref)
    if path.is_file():
        return path
    raise UserError(f"checkpoint {ref!r} not found: expected a run id under {runs_dir(results)} or a file path")


def load_checked_state(module: torch.nn.Module, state: dict, where: str) -> None:
    """load_state_dict with one-line errors naming the first missing, mismatched or unexpected key."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise UserError(f"{where}: missing key {missing[0]!r} ({len(missing)} missing)")
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise UserError(f"{where}: key {key!r} has shape {tuple(state[key].shape)}, "
                            f"the model expects {tuple(value.shape)}")
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise UserError(f"{where}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected)")
    module.load_state_dict(state)


NULL_CLASS_KEY = "cls_embedding.embedding_table.weight"


def load_gpt_weights(model: GPT, path: Path, prefer_ema: bool = True) -> None:
    """Load a LlamaGen-layout checkpoint ({"model": sd[, "ema": sd]}) into `model`.

    The EMA entry is taken when present and preferred (LlamaGen's released weights and ours
    keep it there). LlamaGen's *training* checkpoints also hold "optimizer", "steps" and
    "args", an argparse.Namespace: that one class is admitted to the weights-only unpickler,
    nothing else. A class table without the null row (trained with class_dropout_prob=0)
    turns the model's table into one without it. Missing or mismatched keys are named in the
    error.
    """
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            blob = load_tensors(path)
    except CorruptFile as exc:
        raise UserError(str(exc)) from None
    if not isinstance(blob, dict) or not ({"model", "ema"} & set(blob)):
        raise UserError(f"{path}: expected a LlamaGen-layout checkpoint with a 'model' (or 'ema') entry")
    state = blob["ema"] if prefer_ema and "ema" in blob else blob["model"]
    table = state.get(NULL_CLASS_KEY) if isinstance(state, dict) else None
    if table is not None and model.cls_embedding.null_row and table.shape[0] == model.shape.num_classes:
        model.drop_null_class()
    load_checked_state(model, state, str(path))
