"""Model sizes and run budgets.

Budgets are lengths in optimizer steps, never wall time, so a run means the same thing on
a laptop and on a cluster. How long each takes on 2 cores is measured in docs/performance.md.
"""

from __future__ import annotations

from typing import Any

from mirai_lab.errors import UserError

# name -> (n_layer, dim, n_head, ffn_multiple_of). The SwiGLU width follows LlamaGen's
# rule (2/3 of 4*dim rounded up to ffn_multiple_of); LlamaGen rounds to 256, which would
# make the CPU models' FFN 4x wide, so they round to 32.
MODEL_PRESETS: dict[str, tuple[int, int, int, int]] = {
    "tiny": (4, 32, 2, 32),
    "cpu-s": (4, 128, 4, 32),
    "cpu-m": (6, 192, 6, 32),
    "gpt-b": (12, 768, 12, 256),
    "gpt-l": (24, 1024, 16, 256),
    "gpt-xl": (36, 1280, 20, 256),
}

# Each budget is a set of dotted overrides applied before the user's --set options.
BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "model.preset": "tiny",
        "train.steps": 24,
        "train.batch_size": 32,
        "train.eval_every": 12,
        "train.val_every": 6,
        "eval.n_samples": 64,
        "eval.n_samples_final": 100,
        "foresight.encoder_steps": 40,  # a smoke run checks the plumbing, not the encoder
    },
    # quick: the demo and the paper-table reproductions. No token/residual/FFN dropout: the run
    # is about 2 epochs, too short to overfit, and the dropouts only slow it down. Class dropout
    # stays: CFG needs the null class. Batch 32, lr 2e-3 constant after the warm-up and 320 steps
    # were chosen as the cell with the least noise per CPU-minute (the spread of a row's per-seed
    # difference to the baseline), never by the size of an effect: results/calibration/README.md
    # holds every cell measured and the criterion.
    "quick": {
        "model.preset": "cpu-s",
        "model.token_dropout": 0.0,
        "model.resid_dropout": 0.0,
        "model.ffn_dropout": 0.0,
        "train.steps": 320,
        "train.batch_size": 32,
        "train.lr": 2e-3,
        "train.lr_schedule": "constant",
        "train.warmup_steps": 40,
        "train.eval_every": 80,
        # val_nll over the 1,000 validation images is ~15 batch-32 steps of cpu-s: every 40 steps
        # it was 18% of a sweep's wall time, every 80 steps it is half that. On the committed
        # curves (3 sweeps, 12 rows) the coarser grid left every speed-up that excluded 1 excluding
        # it, with intervals no wider; its linear interpolation pulls ratios 0.01-0.02 toward 1
        # (conservative). `--set train.val_every=40` gives the finer curve; it is not in the run id.
        "train.val_every": 80,
        "eval.n_samples": 250,
        "eval.n_samples_final": 1000,
    },
    "standard": {
        "model.preset": "cpu-s",
        "train.steps": 1000,
        "train.batch_size": 64,
        "train.lr": 1e-3,
        "train.lr_schedule": "cosine",
        "train.warmup_steps": 50,
        "train.eval_every": 200,
        "train.val_every": 50,
        "eval.n_samples": 250,
        "eval.n_samples_final": 1000,
    },
    # The paper's ablation length on ImageNet codes (GPUs, torchrun): 80 epochs of LlamaGen's
    # loader, whose epoch is floor(1,281,167 / 256) = 5,004 steps (drop_last), so 400,320
    # steps (1,281,167 * 80 / 256 = 400,365 without dropping the last partial batch); the
    # 300-epoch runs are --set train.steps=1501200. LlamaGen's optimiser and regularisation;
    # 1% of the images are held out for the validation NLL, the only in-training metric
    # without a pixel decoder (FID at this scale is computed from the checkpoint, docs/scale.md).
    "paper": {
        "data.dataset": "codes",
        "data.val_fraction": 0.01,
        "tokenizer.codebook_size": 16384,
        "model.preset": "gpt-b",
        "model.token_dropout": 0.1,
        "model.resid_dropout": 0.1,
        "model.ffn_dropout": 0.1,
        "model.class_dropout": 0.1,
        "train.steps": 400_320,
        "train.batch_size": 256,
        "train.lr": 1e-4,
        "train.lr_schedule": "constant",
        "train.warmup_steps": 0,
        "train.weight_decay": 0.05,
        "train.beta1": 0.9,
        "train.beta2": 0.95,
        "train.grad_clip": 1.0,
        "train.ema_decay": 0.9999,
        "train.precision": "bf16",
        "train.eval_every": 5_004,
        "train.val_every": 1_000,
        "foresight.projector_dim": 2048,  # the official projector width (used only when foresight is on)
        "eval.metrics": False,
    },
}


def budget_overrides(name: str) -> dict[str, Any]:

    if name not in BUDGETS:
        raise UserError(f"unknown budget {name!r}; expected one of {', '.join(BUDGETS)}")
    return dict(BUDGETS[name])


def llamagen_ffn_hidden(dim: int, multiple_of: int = 256) -> int:
    """SwiGLU width as LlamaGen computes it: 2/3 of 4*dim, rounded up to a multiple of 256."""
    hidden = int(2 * (4 * dim) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)
