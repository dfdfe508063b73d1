"""Build the pieces of a run from its config: the model shape and the foresight heads with their target source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mirai_lab.config import RunConfig
from mirai_lab.data.types import TokenData
from mirai_lab.foresight.encoders import encoder_features
from mirai_lab.foresight.layout import build_layout
from mirai_lab.foresight.objective import ForesightHeads
from mirai_lab.foresight.sources import (
    FeatureTableSource,
    TargetSource,
    TeacherSource,
    load_gpt_weights,
    resolve_checkpoint,
)
from mirai_lab.model.gpt import GPT, GPTShape
from mirai_lab.results_dir import cache_dir
from mirai_lab.rng import seeded_init


def model_shape(cfg: RunConfig, data: TokenData) -> GPTShape:
    m = cfg.model
    return GPTShape(vocab_size=data.vocab_size, num_classes=data.num_classes, grid=data.grid,
                    n_layer=m.n_layer, dim=m.dim, n_head=m.n_head, ffn_hidden=m.ffn_hidden,
                    token_dropout=m.token_dropout, resid_dropout=m.resid_dropout, ffn_dropout=m.ffn_dropout,
                    class_dropout=m.class_dropout)


@dataclass
class Foresight:
    heads: ForesightHeads
    source: TargetSource | None  # None for mtp (targets are the tokens themselves)
    student_block: int


def build_foresight(cfg: RunConfig, data: TokenData, shape: GPTShape, ema: GPT, root: Path,
                    device: torch.device = torch.device("cpu")) -> Foresight | None:
    f = cfg.foresight
    if f.source == "none" and f.injection != "mtp":
        return None
    layout = build_layout(f.layout, f.k, data.grid)
    source: TargetSource | None = None
    if f.source == "ema":
        source = TeacherSource(ema, f.teacher_block)
    elif f.source == "static":
        teacher = GPT(shape)
        load_gpt_weights(teacher, resolve_checkpoint(f.static_checkpoint, root))
        teacher.requires_grad_(False)
        source = TeacherSource(teacher.to(device), f.teacher_block)
    elif f.source == "bidirectional":
        source = FeatureTableSource(encoder_features(f.encoder, f.visibility, data, cache_dir(root),
                                                     features_dir=cfg.data.features_dir,
                                                     weights=f.encoder_weights, steps=f.encoder_steps))
    d_target = source.dim if source is not None else shape.dim
    with seeded_init(cfg.train.seed, "foresight_init"):  # a stream of its own: the model's streams stay the baseline's
        heads = ForesightHeads(f, layout, shape.dim, d_target, shape.n_tokens, cfg.train.steps, shape.vocab_size)
    return Foresight(heads.to(device), source, f.student_block)
