"""Checking a configuration's values: ranges, combinations, and the --set fields a run would
never read (refused: they would only change the run id).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mirai_lab.config.parse import _coerce, flatten
from mirai_lab.config.schema import (
    CHOICES,
    MAX_BATCH,
    MAX_CODEBOOK_FIT,
    MAX_K,
    MAX_LAYERS,
    MAX_SAMPLES,
    MAX_STEPS,
    MAX_THREADS,
    MAX_VOCAB,
    MAX_WIDTH,
    SEED_MAX,
    ForesightConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from mirai_lab.errors import UserError


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise UserError(message)

def _within(key: str, value: float, lo: float, hi: float) -> None:
    _check(lo <= value <= hi, f"{key}={value}: expected {lo} <= value <= {hi}")

def _fraction(key: str, value: float, *, zero: bool = True, one: bool = False) -> None:
    lo, hi = ("<=" if zero else "<"), ("<=" if one else "<")
    ok = (0.0 <= value if zero else 0.0 < value) and (value <= 1.0 if one else value < 1.0)
    _check(ok, f"{key}={value}: expected 0 {lo} value {hi} 1")

def validate(cfg: RunConfig) -> None:
    """Reject impossible values, values that would hang a machine, and incompatible combinations,
    with one line each. Non-finite numbers never get here (`_number` refuses them)."""
    flat = flatten(cfg.to_dict())
    for key, allowed in CHOICES.items():
        _check(flat[key] in allowed, f"{key}={flat[key]!r}: expected one of {', '.join(allowed)}")
    m, t, f, e, d, tok = cfg.model, cfg.train, cfg.foresight, cfg.eval, cfg.data, cfg.tokenizer
    _fraction("data.val_fraction", d.val_fraction, zero=False)
    _check(d.dataset != "codes" or bool(d.codes_dir), "data.dataset='codes' needs data.codes_dir")
    for key in ("data.split_seed", "tokenizer.seed", "train.seed"):
        _within(key, flat[key], 0, SEED_MAX)
    _within("tokenizer.patch", tok.patch, 1, 64)
    _within("tokenizer.iters", tok.iters, 1, 1000)
    fit_max = MAX_VOCAB if d.dataset == "codes" else MAX_CODEBOOK_FIT
    _check(2 <= tok.codebook_size <= fit_max, f"tokenizer.codebook_size={tok.codebook_size}: expected 2 <= value "
           f"<= {fit_max}" + ("" if d.dataset == "codes" else f" for the embedded k-means tokenizer ({d.dataset})"))
    _within("model.n_layer", m.n_layer, 1, MAX_LAYERS)
    _within("model.dim", m.dim, 1, MAX_WIDTH)
    _within("model.n_head", m.n_head, 1, m.dim)
    _within("model.ffn_hidden", m.ffn_hidden, 1, MAX_WIDTH)
    _check(m.dim % m.n_head == 0, f"model.dim={m.dim} is not divisible by model.n_head={m.n_head}")
    _check((m.dim // m.n_head) % 4 == 0, f"model.dim/n_head={m.dim // m.n_head}: 2D RoPE needs a multiple of 4")
    for name in ("token_dropout", "resid_dropout", "ffn_dropout", "class_dropout"):
        _fraction(f"model.{name}", getattr(m, name))
    _within("train.steps", t.steps, 1, MAX_STEPS)
    _within("train.batch_size", t.batch_size, 1, MAX_BATCH)
    _check(t.grad_accum >= 1 and t.batch_size % t.grad_accum == 0,
           f"train.grad_accum={t.grad_accum}: expected >= 1 and a divisor of train.batch_size={t.batch_size}")
    _check(t.lr > 0, f"train.lr={t.lr}: expected > 0")
    _fraction("train.min_lr_ratio", t.min_lr_ratio, one=True)
    _check(t.weight_decay >= 0, f"train.weight_decay={t.weight_decay}: expected >= 0")
    _fraction("train.beta1", t.beta1)
    _fraction("train.beta2", t.beta2)
    _check(t.grad_clip >= 0, f"train.grad_clip={t.grad_clip}: expected >= 0 (0 = no clipping)")
    _fraction("train.ema_decay", t.ema_decay)
    _within("train.eval_every", t.eval_every, 1, MAX_STEPS)
    _within("train.val_every", t.val_every, 1, MAX_STEPS)
    _within("train.warmup_steps", t.warmup_steps, 0, MAX_STEPS)
    _within("train.threads", t.threads, 0, MAX_THREADS)
    _within("eval.n_samples", e.n_samples, 4, MAX_SAMPLES)
    _within("eval.n_samples_final", e.n_samples_final, 4, MAX_SAMPLES)
    _within("eval.cfg_scale", e.cfg_scale, 0, 100)
    _check(e.temperature > 0, f"eval.temperature={e.temperature}: expected > 0")
    _fraction("eval.top_p", e.top_p, zero=False, one=True)
    _within("eval.top_k", e.top_k, 0, MAX_VOCAB)
    _validate_foresight(f, m, t)

def _validate_foresight(f: ForesightConfig, m: ModelConfig, t: TrainConfig) -> None:
    # ranges hold whatever the source, so a bad value never waits for the day it is switched on
    _within("foresight.k", f.k, 1, MAX_K)
    _check(f.coef >= 0, f"foresight.coef={f.coef}: expected >= 0")
    _check(0.0 <= f.warmup_frac < 1.0, f"foresight.warmup_frac={f.warmup_frac}: expected a fraction 0 <= value < 1")
    _check(0.0 < f.step_at < 1.0, f"foresight.step_at={f.step_at}: expected a fraction 0 < value < 1")
    _check(f.step_factor >= 0, f"foresight.step_factor={f.step_factor}: expected >= 0")
    _within("foresight.encoder_steps", f.encoder_steps, 1, MAX_STEPS)
    _within("foresight.projector_dim", f.projector_dim, 0, MAX_WIDTH)
    _within("foresight.student_block", f.student_block, 0, MAX_LAYERS)
    _within("foresight.teacher_block", f.teacher_block, 0, MAX_LAYERS)
    _check(f.visibility == "full" or (f.visibility.isascii() and f.visibility.isdigit()
                                      and int(f.visibility) <= MAX_WIDTH),
           f"foresight.visibility={f.visibility!r}: expected 'full' or a number of future rows")
    active = f.source != "none" or f.injection == "mtp"
    if not active:
        _check(
            f.student_block == 0 and f.teacher_block == 0 and not f.head_coefs,
            "foresight.source='none' takes no student_block, teacher_block or head_coefs "
            "(set foresight.source, or foresight.injection='mtp')",
        )
        return
    if f.injection == "mtp":
        _check(f.source == "none", f"foresight.injection='mtp' predicts tokens; foresight.source={f.source!r} "
               "must be 'none'")
    _check(1 <= f.student_block <= m.n_layer,
           f"foresight.student_block={f.student_block}: expected 1..{m.n_layer} (model.n_layer)")
    if f.injection == "internal":
        _check(f.student_block < m.n_layer,
               f"foresight.student_block={f.student_block}: injection='internal' needs a block < "
               f"model.n_layer={m.n_layer} (use injection='output' for the last block)")
    if f.injection == "output":
        _check(f.student_block == m.n_layer,
               f"foresight.student_block={f.student_block}: injection='output' aligns the last block "
               f"({m.n_layer})")
    if f.source in ("ema", "static"):
        _check(1 <= f.teacher_block <= m.n_layer,
               f"foresight.teacher_block={f.teacher_block}: expected 1..{m.n_layer}")
    _check(not f.head_coefs or len(f.head_coefs) == f.k,
           f"foresight.head_coefs has {len(f.head_coefs)} values; expected k={f.k}")
    _check(all(c >= 0 for c in f.head_coefs), "foresight.head_coefs: expected values >= 0")
    _check(f.schedule != "delayed" or f.warmup_frac > 0,
           "foresight.schedule='delayed' needs foresight.warmup_frac > 0")
    _check(f.projector_dim >= 1, f"foresight.projector_dim={f.projector_dim}: expected >= 1")
    _check(f.source != "static" or bool(f.static_checkpoint),
           "foresight.source='static' needs foresight.static_checkpoint (a run id or checkpoint path)")
    if f.source == "bidirectional":
        _check(f.encoder != "dinov2" or bool(f.encoder_weights),
               "foresight.encoder='dinov2' needs foresight.encoder_weights (a local checkpoint path)")

def _foresight_on(cfg: RunConfig) -> bool:
    return cfg.foresight.source != "none" or cfg.foresight.injection == "mtp"

def _in_project_encoder(cfg: RunConfig) -> bool:
    f = cfg.foresight
    return f.source == "bidirectional" and f.encoder != "dinov2"

def _dinov2(cfg: RunConfig) -> bool:
    return cfg.foresight.source == "bidirectional" and cfg.foresight.encoder == "dinov2"

# Fields that a run reads only under a condition: (the condition in words, whether `cfg` meets it).
# Every other foresight field is read only while foresight is on (`_foresight_on`).
READ_ONLY_WHEN: dict[str, tuple[str, Callable[[RunConfig], bool]]] = {
    "data.codes_dir": ("data.dataset='codes'", lambda c: c.data.dataset == "codes"),
    "data.features_dir": ("foresight.source='bidirectional' and foresight.encoder='dinov2'", _dinov2),
    "foresight.encoder": ("foresight.source='bidirectional'", lambda c: c.foresight.source == "bidirectional"),
    "foresight.visibility": ("foresight.source='bidirectional' and an in-project encoder (mtm, pixel-ae)",
                             _in_project_encoder),
    "foresight.encoder_steps": ("foresight.source='bidirectional' and an in-project encoder (mtm, pixel-ae)",
                                _in_project_encoder),
    "foresight.encoder_weights": ("foresight.source='bidirectional' and foresight.encoder='dinov2'", _dinov2),
    "foresight.static_checkpoint": ("foresight.source='static'", lambda c: c.foresight.source == "static"),
    "foresight.teacher_block": ("foresight.source 'ema' or 'static'",
                                lambda c: c.foresight.source in ("ema", "static")),
    "foresight.step_at": ("foresight.schedule='step'", lambda c: c.foresight.schedule == "step"),
    "foresight.step_factor": ("foresight.schedule='step'", lambda c: c.foresight.schedule == "step"),
    "train.min_lr_ratio": ("train.lr_schedule='cosine'", lambda c: c.train.lr_schedule == "cosine"),
}

FORESIGHT_ON = "foresight on (foresight.source other than 'none', or foresight.injection='mtp')"

def unused_because(cfg: RunConfig, key: str) -> str | None:
    """The condition under which `cfg` would read the dotted field `key`, when it does not; None when it does."""
    if key.startswith("foresight.") and key != "foresight.source" and not _foresight_on(cfg):
        return FORESIGHT_ON
    condition = READ_ONLY_WHEN.get(key)
    if condition is not None and not condition[1](cfg):
        return condition[0]
    return None

def check_used(overrides: dict[str, Any], configs: list[RunConfig], who: str) -> None:
    """Refuse a --set field that none of `configs` reads (`who` names them: "this run", "any run of
    this sweep").

    Why refuse rather than ignore: the run id hashes the whole config, so an unread field (a typo'd
    foresight.visibility on an EMA run, a data.codes_dir on the embedded data) would only give the
    same computation a new id and train a duplicate set of runs. The field's value is checked first
    wherever it is read (`validate`); visibility, read by one source only, is checked whatever the source.
    """
    for key, value in overrides.items():
        reasons = [unused_because(cfg, key) for cfg in configs]
        if configs and all(reasons):
            raise UserError(f"--set {key}={value}: not used by {who}: {key} is read only with {reasons[0]}; "
                            "drop it (it would only change the run id)")

def check_seed(value: Any, key: str = "train.seed") -> int:
    """A seed value as `validate` checks it: an integer in 0..SEED_MAX, with the same message."""
    seed = _coerce(key, value, int)
    _within(key, seed, 0, SEED_MAX)
    return seed
