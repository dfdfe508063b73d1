"""Typed run configuration: dataclasses, TOML specs, dotted --set overrides, validation.

A run is fully described by one `RunConfig`; its resolved JSON (budget and preset applied)
is hashed into the run id, so anything that changes the result must live here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirai_lab.errors import UserError
from mirai_lab.presets import BUDGETS, MODEL_PRESETS, budget_overrides, llamagen_ffn_hidden

# Upper bounds: far above any real run, low enough that a typo cannot hang or exhaust a machine.
SEED_MAX = 2**31 - 1
MAX_STEPS = 10_000_000  # the paper's 300-epoch ImageNet runs are 1,501,200 steps
MAX_SAMPLES = 100_000  # FID-50k is the largest sample count in the literature compared against
MAX_VOCAB = 2**18  # codes data: the largest VQ codebooks in use are 2**14 .. 2**18
MAX_CODEBOOK_FIT = 4096  # the embedded k-means fit is O(codebook_size^2): 4096 codes already take minutes
MAX_K = 64  # foresight heads
MAX_WIDTH = 65_536  # dim, ffn_hidden, projector_dim
MAX_LAYERS = 256
MAX_BATCH = 1 << 20
MAX_THREADS = 4096
MAX_SEEDS = 1000  # seeds of one sweep
MAX_RUNS = 100_000  # runs one sweep plan may expand to (variants x seeds)
MAX_WORKERS = 256  # sweep workers started on one machine
MAX_TRIALS = 100_000  # trials of one study
MAX_SPEC_DEPTH = 8  # nesting of a TOML spec; real specs use 4 ([axes.name] variant = { table = { key } })


@dataclass
class DataConfig:
    dataset: str = "animal-mnist"  # animal-mnist | digits | synthetic | codes
    val_fraction: float = 0.1
    split_seed: int = 0
    codes_dir: str = ""  # LlamaGen code folder (dataset = codes)
    features_dir: str = ""  # pre-extracted encoder features for codes (Mirai-I at scale)


@dataclass
class TokenizerConfig:
    patch: int = 4  # pixels per token side: 28x28 -> 7x7 grid
    codebook_size: int = 512
    iters: int = 25
    seed: int = 0


@dataclass
class ModelConfig:
    preset: str = "cpu-s"
    n_layer: int = 0  # 0 = from preset
    dim: int = 0
    n_head: int = 0
    ffn_hidden: int = 0
    token_dropout: float = 0.1
    resid_dropout: float = 0.1
    ffn_dropout: float = 0.1
    class_dropout: float = 0.1


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64  # global batch: split across DDP ranks, then into grad_accum micro-batches
    grad_accum: int = 1  # micro-batches per rank and step (memory, not the result: left out of the run id)
    lr: float = 1e-4
    lr_schedule: str = "constant"  # constant | cosine
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # fp32 | bf16 | auto. fp32 by default: bf16 autocast buys nothing at the CPU presets' sizes (docs/performance.md).
    # auto is resolved once per sweep, tune study or train command before any run id is made (training/precision.py)
    precision: str = "fp32"
    eval_every: int = 200  # sample metrics + checkpoint (expensive: sparse)
    val_every: int = 50  # training losses + val_nll (cheap: dense); evaluation only, left out of the run id
    compile: bool = False  # torch.compile the step's model (pays on long GPU runs); left out of the run id
    seed: int = 0
    threads: int = 0  # 0 = all cores


@dataclass
class ForesightConfig:
    source: str = "none"  # none | ema | static | bidirectional
    encoder: str = "mtm"  # mtm | pixel-ae | dinov2 (source = bidirectional)
    visibility: str = "full"  # full | number of future rows the encoder sees
    encoder_weights: str = ""  # local DINOv2 checkpoint (encoder = dinov2)
    encoder_steps: int = 400  # training steps of an in-project encoder (mtm, pixel-ae), cached per value
    static_checkpoint: str = ""  # run id or checkpoint path (source = static)
    injection: str = "internal"  # internal | output | mtp
    layout: str = "2d"  # 1d | 2d | 2d-wide
    k: int = 3
    student_block: int = 0  # 1-based block whose output is aligned; 0 = 2/3 of depth
    teacher_block: int = 0  # 0 = same as student_block
    align_index: str = "read"  # read | predict
    coef: float = 2.0
    head_coefs: list[float] = field(default_factory=list)  # per-head override of coef
    schedule: str = "constant"  # constant | delayed | step | cosine
    warmup_frac: float = 0.0  # alignment off for this fraction of the run (budget-invariant)
    step_at: float = 0.5  # fraction of the run where `step` multiplies by step_factor
    step_factor: float = 0.5
    projector_dim: int = 0  # 0 = model width


@dataclass
class EvalConfig:
    metrics: bool = True  # sample metrics (domain FID/IS/KID/PR, class accuracy); val NLL is always logged
    # also at every in-training eval point (false: at the final evaluation only, where the floors
    # are drawn: the tables' choice, so their time goes into seeds and val_nll stays dense)
    metrics_in_training: bool = True
    n_samples: int = 250
    n_samples_final: int = 1000
    cfg_scale: float = 2.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    extractor: str = "domain"  # domain | inception-v3-compat


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    foresight: ForesightConfig = field(default_factory=ForesightConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    budget: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


SECTIONS = {f.name: f for f in dataclasses.fields(RunConfig) if f.name != "budget"}

CHOICES: dict[str, tuple[str, ...]] = {
    "data.dataset": ("animal-mnist", "digits", "synthetic", "codes"),
    "model.preset": tuple(MODEL_PRESETS),
    "train.lr_schedule": ("constant", "cosine"),
    "train.precision": ("auto", "fp32", "bf16"),
    "foresight.source": ("none", "ema", "static", "bidirectional"),
    "foresight.encoder": ("mtm", "pixel-ae", "dinov2"),
    "foresight.injection": ("internal", "output", "mtp"),
    "foresight.layout": ("1d", "2d", "2d-wide"),
    "foresight.align_index": ("read", "predict"),
    "foresight.schedule": ("constant", "delayed", "step", "cosine"),
    "eval.extractor": ("domain", "inception-v3-compat"),
}


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Convert a TOML value or a --set string to the field's type, or say what was expected."""
    origin = typing.get_origin(typ)
    if origin is list:
        (inner,) = typing.get_args(typ)
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    raise UserError(f"{key}={value!r}: expected a list like [2.0, 1.0]") from None
            else:
                value = [v for v in text.split(",") if v.strip()]
        if not isinstance(value, list):
            raise UserError(f"{key}={value!r}: expected a list")
        return [_coerce(key, v, inner) for v in value]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise UserError(f"{key}={value!r}: expected true or false")
    if typ in (int, float):
        return _number(key, value, typ)
    if typ is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{key}={value!r}: expected a string")
    raise TypeError(f"unsupported config type {typ}")  # a bug in this module, not user input


def _number(key: str, value: Any, typ: type) -> int | float:
    """int fields accept integral floats (TOML `3.0`) and digit strings; floats accept any number."""
    expected = "an integer" if typ is int else "a finite number"
    if isinstance(value, str):
        try:
            value = typ(value)
        except ValueError:
            raise UserError(f"{key}={value!r}: expected {expected}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"{key}={value!r}: expected {expected}")
    if not math.isfinite(value):  # nan compares false to every bound, so it would pass all range checks
        raise UserError(f"{key}={value!r}: expected {expected}")
    if typ is int and not float(value).is_integer():
        raise UserError(f"{key}={value!r}: expected {expected}")
    return typ(value)


def finite(value: float, name: str) -> float:
    """A CLI float option (e.g. --cfg): nan and inf are refused like in the config."""
    if not math.isfinite(value):
        raise UserError(f"{name} {value!r}: expected a finite number")
    return value


def check_budget(name: Any, where: str) -> str:
    """A budget name from --budget, a spec or --set: one of the presets (an empty name is not one)."""
    if not isinstance(name, str) or name not in BUDGETS:
        raise UserError(f"unknown budget {name!r} ({where}); expected one of {', '.join(BUDGETS)}")
    return name


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> None:
    """Apply dotted `section.key = value` overrides in place, checking keys and types."""
    for dotted, value in overrides.items():
        if dotted == "budget":
            cfg.budget = _coerce("budget", value, str)
            continue
        section, _, key = dotted.partition(".")
        if section not in SECTIONS or not key:
            raise UserError(
                f"unknown config key {dotted!r}; expected section.key with section in {', '.join(SECTIONS)}"
            )
        obj = getattr(cfg, section)
        types_ = _field_types(type(obj))
        if key not in types_:
            raise UserError(f"unknown config key {dotted!r}; {section} has {', '.join(types_)}")
        setattr(obj, key, _coerce(dotted, value, types_[key]))


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested TOML tables -> dotted keys (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set a.b=c` strings -> dict; values stay strings and are coerced per field."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected section.key=value")
        out[key.strip()] = value.strip()
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    """A spec file as a dict; at most MAX_SPEC_DEPTH levels of nesting (tomllib recurses per level)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"spec file {str(path)!r} does not exist")
    try:
        table = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"spec file {str(path)!r} is not valid TOML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise UserError(f"spec file {str(path)!r} is nested too deeply: expected at most {MAX_SPEC_DEPTH} "
                        "levels of tables and lists") from None
    if _deeper_than(table, MAX_SPEC_DEPTH):
        raise UserError(f"spec file {str(path)!r} is nested too deeply: expected at most {MAX_SPEC_DEPTH} "
                        "levels of tables and lists")
    return table


def _deeper_than(table: dict[str, Any], limit: int) -> bool:
    """Whether tables and lists nest more than `limit` levels (iterative: no recursion limit to hit)."""
    level: list[Any] = [table]
    for _ in range(limit):
        level = [c for x in level for c in (x.values() if isinstance(x, dict) else x) if isinstance(c, dict | list)]
    return bool(level)


def build_config(
    spec: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    budget: str | None = None,
) -> RunConfig:
    """Defaults <- budget <- spec tables <- overrides, then preset resolution and validation.

    The budget comes from the explicit argument, else the spec's or overrides' `budget`.
    Budget values come first so that a spec or --set can still change, e.g., the steps.
    """
    spec_flat = flatten(spec or {})
    overrides = dict(overrides or {})
    # every budget named is checked, also the ones that a higher-priority one replaces
    for where, value in (("--budget", budget), ("budget", overrides.get("budget")),
                         ("spec budget", spec_flat.get("budget"))):
        if value is not None:
            check_budget(value, where)
    name = budget or overrides.get("budget") or spec_flat.get("budget") or ""
    cfg = RunConfig()
    if name:
        apply_overrides(cfg, budget_overrides(str(name)))
        cfg.budget = str(name)
    spec_flat.pop("budget", None)
    overrides.pop("budget", None)
    apply_overrides(cfg, spec_flat)
    apply_overrides(cfg, overrides)
    resolve(cfg)
    validate(cfg)
    return cfg


def resolve(cfg: RunConfig) -> None:
    """Fill the zero-means-derived fields so that the saved config is explicit."""
    m = cfg.model
    if m.preset not in MODEL_PRESETS:
        raise UserError(f"model.preset={m.preset!r}: expected one of {', '.join(MODEL_PRESETS)}")
    n_layer, dim, n_head, multiple = MODEL_PRESETS[m.preset]
    m.n_layer = m.n_layer or n_layer
    m.dim = m.dim or dim
    m.n_head = m.n_head or n_head
    m.ffn_hidden = m.ffn_hidden or llamagen_ffn_hidden(m.dim, multiple)
    f = cfg.foresight
    if f.source != "none" or f.injection == "mtp":
        if f.student_block == 0:
            f.student_block = m.n_layer if f.injection == "output" else max(1, round(2 * m.n_layer / 3))
        if f.teacher_block == 0:
            f.teacher_block = f.student_block
        if f.projector_dim == 0:
            f.projector_dim = m.dim


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


def load_spec_file(path: str | Path) -> dict[str, Any]:
    """A train spec: run tables at top level (data, model, train, foresight, eval, budget)."""
    spec = read_toml(path)
    unknown = set(spec) - set(SECTIONS) - {"budget"}
    if unknown:
        raise UserError(f"spec {str(path)!r}: unknown table(s) {', '.join(sorted(unknown))}; "
                        f"expected {', '.join(SECTIONS)}, budget")
    return spec


def config_from_dict(d: dict[str, Any]) -> RunConfig:
    """Rebuild a saved (resolved) config, e.g. config.json of a run."""
    cfg = RunConfig()
    budget = d.get("budget", "")
    apply_overrides(cfg, {k: v for k, v in flatten({k: v for k, v in d.items() if k != "budget"}).items()})
    cfg.budget = budget
    resolve(cfg)
    validate(cfg)
    return cfg

