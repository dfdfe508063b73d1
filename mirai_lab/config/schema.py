"""The run configuration's schema: typed sections, their fields and defaults, allowed choices, and
the bounds every value is checked against.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from mirai_lab.presets import MODEL_PRESETS

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
