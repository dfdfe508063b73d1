"""`train.precision = auto`: one precision for a whole sweep, decided once, before run ids exist.

A run id promises one computation, and a paired difference compares two runs computed the same
way. So `auto` is never resolved per run: a sweep, a tune study or a train command resolves it
once, on one reference config (the sweep's baseline), writes the result into every run's config
(so the id and config.json hold the precision the run trains in), and records it in the
manifest.

The rule, in order:
1. A GPU with native bf16 (capability >= 8.0) trains in bf16, as LlamaGen and the paper do.
2. Under torchrun on a CPU, fp32: the ranks cannot time a private step (DDP steps are collective),
   and the CPU presets' sizes gain nothing from bf16 (docs/performance.md).
3. A CPU whose bf16 matmuls are emulated (the probe: bf16 below half the fp32 matmul rate, as
   on AVX2-only CPUs at ~1 vs ~100 GFLOP/s) trains in fp32.
4. A CPU with native bf16 units (AVX512-BF16, AMX) times the reference's real training step in
   both precisions: two throwaway trainers stepped in alternation, `ROUNDS` rounds after a
   warm-up. bf16 is chosen only when its median step is at least `MARGIN` faster than fp32's
   AND it was faster in every round: a single timing on a loaded machine (3-8% gaps that flip
   between variants) never decides. Anything less keeps fp32, which is exact.

The verdict is cached per machine in <results>/cache/precision/, keyed by the CPU model and
matrix extensions (or the GPU), torch's version, the reference's shape, per-rank batch,
foresight heads and thread count, so every round of an adaptive sweep and every worker sees the
same answer.

`MIRAI_LAB_BF16_PROBE` tells the probe what the hardware is instead of measuring it: one of
`FORCED`. The test suite uses it to run each branch on any CPU; a user can use it to skip the
measurement (`emulated` means "always fp32").
"""

from __future__ import annotations

import copy
import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from mirai_lab.config import RunConfig
from mirai_lab.distributed import world_size
from mirai_lab.errors import UserError
from mirai_lab.files.atomic import read_json, write_json
from mirai_lab.files.cache import load_or_build
from mirai_lab.files.digest import content_hash
from mirai_lab.results_dir import cache_dir
from mirai_lab.runs.provenance import cpu_matrix_extensions, cpu_model

PROBE_N = 256  # a bf16 matmul of 256^3 takes ~30 ms in emulation, a fraction of a millisecond on bf16 units
EMULATED_BELOW = 0.5  # bf16/fp32 matmul throughput under which bf16 is taken as emulated
STEP_WARMUP, ROUNDS = 2, 5
MARGIN = 0.10  # bf16's median step must be at least 10% shorter: run-to-run noise on a shared VM is a few %
PROBE_ENV = "MIRAI_LAB_BF16_PROBE"
# The hardware branches the probe can be told to take: bf16 emulated; native bf16 with fp32 the
# faster step; native bf16 with bf16 faster for every step; native bf16 with bf16 faster for
# Mirai-E steps only (the case that once split one sweep into two precisions).
FORCED = ("emulated", "native-fp32-faster", "native-bf16-faster", "native-bf16-faster-ema")


class StepRunner(Protocol):
    """What the measurement needs of a trainer (contract: Trainer.setup, Trainer.train_step)."""

    def setup(self) -> None: ...

    def train_step(self, step: int) -> None: ...


TrainerFactory = Callable[[RunConfig, Path, Any, int | None], StepRunner]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(dtype: torch.dtype, device: torch.device = torch.device("cpu"), n: int = 1024,
                 repeats: int = 3, mkn: tuple[int, int, int] | None = None) -> float:
    """Best-of-`repeats` FLOP/s of one n x n x n matmul in `dtype` (the bench's peak, the probe's
    rate), or of one (m, k) @ (k, n) matmul when `mkn` is given (the bench's step-sized peak)."""
    m, k, n = mkn or (n, n, n)
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    a @ b
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best


def forced() -> str | None:
    """The branch $MIRAI_LAB_BF16_PROBE forces, or None to measure."""
    value = os.environ.get(PROBE_ENV, "")
    if not value:
        return None
    if value not in FORCED:
        raise UserError(f"environment {PROBE_ENV}={value!r}: expected one of {', '.join(FORCED)}")
    return value


def machine() -> dict[str, Any]:
    """The hardware side of the cache key."""
    if torch.cuda.is_available():
        return {"gpu": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability())}
    return {"cpu": cpu_model(), "extensions": cpu_matrix_extensions()}


def cache_key(cfg: RunConfig, world: int, threads: int) -> dict[str, Any]:
    m, f, t = cfg.model, cfg.foresight, cfg.train
    return {"machine": machine(), "torch": torch.__version__, "threads": threads, "forced": forced(),
            "rule": [ROUNDS, MARGIN],
            "shape": [m.n_layer, m.dim, m.n_head, m.ffn_hidden, cfg.data.dataset, cfg.tokenizer.codebook_size,
                      cfg.tokenizer.patch],
            "batch": t.batch_size // (world * t.grad_accum),
            "foresight": [f.source, f.injection, f.k, f.projector_dim, f.student_block, f.teacher_block]}


def probe(device: torch.device) -> dict[str, float]:
    """fp32 and bf16 matmul rates (GFLOP/s), or the forced branch's stand-in figures."""
    mode = forced()
    if mode is not None:
        return {"fp32_gflops": 100.0, "bf16_gflops": 1.0 if mode == "emulated" else 200.0}
    fp32 = matmul_flops(torch.float32, device, PROBE_N)
    bf16 = matmul_flops(torch.bfloat16, device, PROBE_N)
    return {"fp32_gflops": fp32 / 1e9, "bf16_gflops": bf16 / 1e9}


def time_steps(cfg: RunConfig, root: Path, threads: int, make: TrainerFactory, device: torch.device
               ) -> dict[str, list[float]]:
    """Seconds of the real training step in each precision, per round, on throwaway trainers
    stepped in alternation (the machine's drift hits both); the caller's RNG is untouched."""
    mode = forced()
    if mode is not None:  # the forced branch's step times, no trainer built
        ema_only = mode == "native-bf16-faster-ema"
        bf16_faster = mode == "native-bf16-faster" or (ema_only and cfg.foresight.source == "ema")
        return {"fp32": [1.0] * ROUNDS, "bf16": [0.5 if bf16_faster else 1.05] * ROUNDS}
    runners: dict[str, StepRunner] = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for precision in ("fp32", "bf16"):
            runners[precision] = make(with_precision(cfg, precision), root, None, threads)
            runners[precision].setup()
        samples: dict[str, list[float]] = {p: [] for p in runners}
        for round_ in range(STEP_WARMUP + ROUNDS):
            order = list(runners.items()) if round_ % 2 == 0 else list(runners.items())[::-1]
            for precision, runner in order:
                synchronize(device)
                t = time.perf_counter()
                runner.train_step(round_)
                synchronize(device)
                if round_ >= STEP_WARMUP:
                    samples[precision].append(time.perf_counter() - t)
    return samples


def bf16_wins(fp32_s: list[float], bf16_s: list[float], margin: float = MARGIN) -> bool:
    """The step-timing rule: bf16 faster in every round and its median at least `margin` shorter."""
    every = all(b < f for f, b in zip(fp32_s, bf16_s, strict=True))
    return every and statistics.median(bf16_s) <= (1 - margin) * statistics.median(fp32_s)


def decide(cfg: RunConfig, root: Path, threads: int, make: TrainerFactory, device: torch.device,
           distributed: bool) -> dict[str, Any]:
    """The measurement and its verdict: {"precision", "reason", and the figures it rests on}."""
    if device.type == "cuda" and forced() is None:
        native = torch.cuda.is_bf16_supported()
        return {"precision": "bf16" if native else "fp32",
                "reason": f"GPU {'with' if native else 'without'} native bf16 ({torch.cuda.get_device_name()})"}
    rates = probe(device)
    ratio = rates["bf16_gflops"] / rates["fp32_gflops"]
    if ratio < EMULATED_BELOW:
        return {"precision": "fp32", "reason": f"bf16 matmul is emulated here ({rates['bf16_gflops']:.1f} vs "
                f"{rates['fp32_gflops']:.1f} GFLOP/s fp32 at {PROBE_N}^3)", **rates}
    if distributed:
        return {"precision": "fp32", "reason": "torchrun on a CPU: no private step to time; fp32", **rates}
    steps = time_steps(cfg, root, threads, make, device)
    f, b = statistics.median(steps["fp32"]), statistics.median(steps["bf16"])
    wins = bf16_wins(steps["fp32"], steps["bf16"])
    return {"precision": "bf16" if wins else "fp32",
            "reason": f"reference step over {ROUNDS} interleaved rounds: bf16 {b * 1e3:.1f} ms, fp32 {f * 1e3:.1f} ms "
                      f"(median); bf16 needs >= {MARGIN:.0%} shorter and faster in every round",
            **rates, "fp32_step_s": steps["fp32"], "bf16_step_s": steps["bf16"]}


def _load(path: Path) -> dict[str, Any]:
    value = read_json(path)
    if value.get("precision") not in ("fp32", "bf16"):
        raise ValueError(f"no precision in {path}")
    return value


def with_precision(cfg: RunConfig, precision: str) -> RunConfig:
    """A copy of `cfg` that trains in `precision` (the caller's config is left as it was)."""
    out = copy.deepcopy(cfg)
    out.train = dataclasses.replace(out.train, precision=precision)
    return out


def auto_precision(reference: RunConfig, root: Path, make: TrainerFactory | None = None,
                   threads: int | None = None) -> dict[str, Any]:
    """The one choice `auto` stands for on this machine, measured on `reference` (cached):
    {"precision": "fp32" | "bf16", "reason": ..., the figures it rests on}."""
    if make is None:
        from mirai_lab.training.trainer import Trainer  # the trainer imports this module
        make = Trainer
    world = world_size()
    threads = threads or reference.train.threads or os.cpu_count() or 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    key = cache_key(reference, world, threads)
    path = cache_dir(root) / "precision" / f"{content_hash(key)}.json"
    return load_or_build(path, _load,
                         lambda: {**decide(reference, root, threads, make, device, world > 1), "key": key}, write_json)


def resolved(cfg: RunConfig, root: Path) -> RunConfig:
    """`cfg` with `auto` replaced by this machine's choice for it (one run: a train command)."""
    if cfg.train.precision != "auto":
        return cfg
    return with_precision(cfg, auto_precision(cfg, root)["precision"])
