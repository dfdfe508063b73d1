"""How good an in-project Mirai-I encoder is on its own, measured beside the foresight it gives.

The paper reads its encoder axis by the encoders' semantics: DINOv2, whose features separate
classes, is a better foresight source than MAE, which reconstructs pixels. The in-project
analogues (`mtm`, `pixel-ae`) are measured the same two ways, on the validation images:

- their own objective at a fixed 50% mask: masked-token accuracy (`mtm`) or the pixel MSE of
  the masked patches (`pixel-ae`), beside what a predictor without context gets there (the
  train split's most common token, or its mean patch);
- a linear probe for class on the very table Mirai-I reads (the cached fp16 features,
  mean-pooled over cells): multinomial logistic regression fitted on a fixed subset of the
  train split and scored on the validation split, beside chance (1 / num_classes).

Each is computed once per encoder and cached as JSON beside its features, under the same key.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from mirai_lab.data.types import TokenData
from mirai_lab.errors import CorruptFile, UserError
from mirai_lab.files.atomic import read_json, write_json
from mirai_lab.files.cache import load_or_build
from mirai_lab.files.digest import content_hash
from mirai_lab.foresight.encoders import (
    IN_PROJECT,
    BidirectionalEncoder,
    encoder_features,
    encoder_inputs,
    encoder_settings,
    in_chunks,
    trained_encoder,
)

# Part of the cache name: a change here (or a new `version` of the measurement) is measured anew.
# probe_max_train bounds the fit's cost (a few seconds on one core); probe_c is sklearn's default L2.
QUALITY_SETTINGS = {"mask_ratio": 0.5, "mask_seed": 0, "probe_max_train": 4000, "probe_seed": 0, "probe_c": 1.0,
                    "probe_max_iter": 2000, "version": 2}
MASK_NAMES = {"mtm": ("encoder_mask_acc", "encoder_mask_acc_majority"),
              "pixel-ae": ("encoder_mask_mse", "encoder_mask_mse_mean")}
PROBE_NAMES = ("encoder_probe_acc", "encoder_probe_chance")
# every key encoder_quality() may return (final.json entries that are not curve metrics)
QUALITY_KEYS = (*(name for names in MASK_NAMES.values() for name in names), *PROBE_NAMES)


def fixed_mask(n_images: int, n_cells: int, ratio: float, seed: int) -> torch.Tensor:
    """(n_images, n_cells) bool with exactly int(ratio * n_cells) masked cells per image, drawn from a
    generator of its own: every encoder is scored on the same cells, and torch's global RNG is untouched."""
    g = torch.Generator().manual_seed(seed)
    ranks = torch.rand(n_images, n_cells, generator=g).argsort(1).argsort(1)
    return ranks < int(ratio * n_cells)


@torch.no_grad()
def mask_scores(enc: BidirectionalEncoder, data: TokenData, ratio: float, seed: int) -> dict[str, float]:
    """The encoder's own objective on the validation images at a fixed mask, and the same score of a
    predictor that ignores the context (most common train token / mean train patch), so the number reads."""
    kind = enc.kind
    x = encoder_inputs(kind, data, data.val_idx)
    masked = fixed_mask(x.shape[0], x.shape[1], ratio, seed)

    def predicted(rows: torch.Tensor) -> torch.Tensor:
        out = enc.predict(x[rows], masked[rows])
        return out.argmax(-1) if kind == "mtm" else out  # token ids, not the (B, G, vocab) logits

    pred = in_chunks(predicted, torch.arange(x.shape[0]))[masked]
    target = x[masked]
    train = encoder_inputs(kind, data, data.train_idx)
    acc_name, floor_name = MASK_NAMES[kind]
    if kind == "mtm":
        majority = train.reshape(-1).bincount(minlength=data.vocab_size).argmax()
        return {acc_name: float((pred == target).double().mean()),
                floor_name: float((target == majority).double().mean())}
    mean_patch = train.reshape(-1, train.shape[-1]).mean(0)
    return {acc_name: float(F.mse_loss(pred, target)),
            floor_name: float(F.mse_loss(mean_patch.expand_as(target), target))}


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                 c: float = 1.0, max_iter: int = 2000) -> float:
    """Validation accuracy of a multinomial logistic regression (L2 with inverse strength `c`, lbfgs)
    on standardised features: what a linear readout finds of the class in them.

    The fit runs on one BLAS thread: OpenBLAS's sums depend on its thread count, and lbfgs carries
    the rounding to another optimum, so one thread makes the accuracy the same on every machine
    (and on 2 cores it is also the faster; docs/encoders.md)."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    with threadpool_limits(1):
        probe.fit(train_x.double().numpy(), train_y.numpy())
        return float(probe.score(val_x.double().numpy(), val_y.numpy()))


def probe_scores(feats: torch.Tensor, data: TokenData, s: dict) -> dict[str, float]:
    """Linear probe of the mean-pooled feature table: fitted on at most s["probe_max_train"] train images
    (a fixed random subset: the train split is index-sorted, which may follow the classes), scored on val."""
    g = torch.Generator().manual_seed(s["probe_seed"])
    sub = data.train_idx[torch.randperm(len(data.train_idx), generator=g)[: s["probe_max_train"]]]

    def pooled(idx: torch.Tensor) -> torch.Tensor:
        return in_chunks(lambda rows: feats[rows].float().mean(1), idx)

    acc = linear_probe(pooled(sub), data.labels[sub], pooled(data.val_idx), data.labels[data.val_idx],
                       s["probe_c"], s["probe_max_iter"])
    return {PROBE_NAMES[0]: acc, PROBE_NAMES[1]: 1.0 / data.num_classes}


def encoder_quality(kind: str, visibility: str, data: TokenData, cache: Path, steps: int = 400) -> dict[str, float]:
    """Mask score and linear-probe accuracy of the in-project encoder of these settings, with their floors.

    Read from `quality-<kind>-<key>-<measure>.json` in `cache`, where `<key>` is the key of the encoder's
    weights and features and `<measure>` the hash of QUALITY_SETTINGS; when missing it is measured from
    the cached weights and feature table, which are trained and extracted only if they are missing too."""
    if kind not in IN_PROJECT:
        raise UserError(f"encoder {kind!r}: expected one of {', '.join(IN_PROJECT)} (the encoders trained in-project)")
    _, key = encoder_settings(kind, visibility, data, steps)
    names = {*MASK_NAMES[kind], *PROBE_NAMES}

    def load(path: Path) -> dict[str, float]:
        out = read_json(path)
        if not (isinstance(out, dict) and set(out) == names
                and all(isinstance(v, float) and math.isfinite(v) for v in out.values())):
            raise CorruptFile(f"{path} does not hold the {kind} encoder's quality")
        return out

    def build() -> dict[str, float]:
        enc = trained_encoder(kind, visibility, data, cache, steps)
        feats = encoder_features(kind, visibility, data, cache, steps=steps)
        s = QUALITY_SETTINGS
        return {**mask_scores(enc, data, s["mask_ratio"], s["mask_seed"]), **probe_scores(feats, data, s)}

    return load_or_build(cache / f"quality-{kind}-{key}-{content_hash(QUALITY_SETTINGS)}.json", load, build,
                         write_json)
