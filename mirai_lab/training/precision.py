"""`train.precision = auto`: bf16 autocast where it makes this step faster, fp32 elsewhere.

Measured, not assumed (docs/performance.md). A CPU without bf16 units runs a bf16 matmul
in emulation, about 100x slower than fp32 (AVX2+FMA: ~1 vs ~100 GFLOP/s), so a short matmul
probe settles it without timing a step. Where bf16 matmuls are not slower than half the fp32
rate (AVX-512 BF16, AMX, GPUs), the real training step is timed both ways: two throwaway
trainers of the same config, one per precision, stepped in alternation, and the faster wins
(a tie keeps fp32, which is exact). Under torchrun the ranks cannot time a private step (DDP
steps are collective), so the probe alone decides there: bf16 on a GPU with native bf16,
else by the CPU probe.

The choice is cached per machine and step in <results>/cache/precision/, keyed by the CPU
model and matrix extensions (or the GPU), torch's version, the model shape, the per-rank
batch, the foresight heads and the thread count. "auto" resolves at run time: the run's
config keeps "auto" (hashed as fp32, runs/identity.py) and its provenance records the
precision it trained in.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from mirai_lab.config import RunConfig
from mirai_lab.distributed import Dist
from mirai_lab.runs.cache import load_or_build
from mirai_lab.runs.provenance import cpu_matrix_extensions, cpu_model
from mirai_lab.runs.store import cache_dir, content_hash, read_json, write_json

PROBE_N = 256  # a bf16 matmul of 256^3 takes ~30 ms in emulation, a fraction of a millisecond on bf16 units
EMULATED_BELOW = 0.5  # bf16/fp32 matmul throughput under which bf16 is taken as emulated
STEP_WARMUP, STEP_ROUNDS = 2, 3


class StepRunner(Protocol):
    """What the measurement needs of a trainer (contract: Trainer.setup, Trainer.train_step)."""

    def setup(self) -> None: ...

    def train_step(self, step: int) -> None: ...


TrainerFactory = Callable[[RunConfig, Path, Any, int | None], StepRunner]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(dtype: torch.dtype, device: torch.device = torch.device("cpu"), n: int = 1024,
                 repeats: int = 3) -> float:
    """Best-of-`repeats` FLOP/s of one n x n x n matmul in `dtype` (the bench's peak, the probe's rate)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def machine() -> dict[str, Any]:
    """The hardware side of the cache key."""
    if torch.cuda.is_available():
        return {"gpu": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability())}
    return {"cpu": cpu_model(), "extensions": cpu_matrix_extensions()}


def cache_key(cfg: RunConfig, world: int, threads: int) -> dict[str, Any]:
    m, f, t = cfg.model, cfg.foresight, cfg.train
    return {"machine": machine(), "torch": torch.__version__, "threads": threads,
            "shape": [m.n_layer, m.dim, m.n_head, m.ffn_hidden, cfg.data.dataset, cfg.tokenizer.codebook_size,
                      cfg.tokenizer.patch],
            "batch": t.batch_size // (world * t.grad_accum),
            "foresight": [f.source, f.injection, f.k, f.projector_dim, f.student_block, f.teacher_block]}


def probe(device: torch.device) -> dict[str, float]:
    fp32 = matmul_flops(torch.float32, device, PROBE_N)
    bf16 = matmul_flops(torch.bfloat16, device, PROBE_N)
    return {"fp32_gflops": fp32 / 1e9, "bf16_gflops": bf16 / 1e9}


def time_steps(cfg: RunConfig, root: Path, threads: int, make: TrainerFactory, device: torch.device
               ) -> dict[str, float]:
    """Median seconds of the real training step in each precision, on throwaway trainers
    stepped in alternation (the machine's drift hits both); the caller's RNG is untouched."""
    runners: dict[str, StepRunner] = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for precision in ("fp32", "bf16"):
            c = copy.deepcopy(cfg)
            c.train.precision = precision
            runners[precision] = make(c, root, None, threads)
            runners[precision].setup()
        samples: dict[str, list[float]] = {p: [] for p in runners}
        for round_ in range(STEP_WARMUP + STEP_ROUNDS):
            for precision, runner in runners.items():
                synchronize(device)
                t = time.perf_counter()
                runner.train_step(round_)
                synchronize(device)
                if round_ >= STEP_WARMUP:
                    samples[precision].append(time.perf_counter() - t)
    return {f"{p}_step_s": statistics.median(v) for p, v in samples.items()}


def decide(cfg: RunConfig, root: Path, dist: Dist, threads: int, make: TrainerFactory) -> dict[str, Any]:
    """The measurement and its verdict: {"precision", "reason", and the figures it rests on}."""
    rates = probe(dist.device)
    ratio = rates["bf16_gflops"] / rates["fp32_gflops"]
    if ratio < EMULATED_BELOW:
        return {"precision": "fp32", "reason": f"bf16 matmul is emulated here ({rates['bf16_gflops']:.1f} vs "
                f"{rates['fp32_gflops']:.1f} GFLOP/s fp32 at {PROBE_N}^3)", **rates}
    if dist.active:  # no private step under DDP: the probe decides
        return {"precision": "bf16", "reason": f"bf16 matmul {ratio:.2f}x fp32 (torchrun: probe only)", **rates}
    steps = time_steps(cfg, root, threads, make, dist.device)
    faster = steps["bf16_step_s"] < steps["fp32_step_s"]
    return {"precision": "bf16" if faster else "fp32",
            "reason": f"measured step: bf16 {steps['bf16_step_s'] * 1e3:.1f} ms, "
                      f"fp32 {steps['fp32_step_s'] * 1e3:.1f} ms",
            **rates, **steps}


def _load(path: Path) -> dict[str, Any]:
    value = read_json(path)
    if value.get("precision") not in ("fp32", "bf16"):
        raise ValueError(f"no precision in {path}")
    return value


def precision_choice(cfg: RunConfig, root: Path, dist: Dist, threads: int, make: TrainerFactory) -> dict[str, Any]:
    """The cached verdict for this machine and step (built by `decide` on a miss; rank 0 first)."""
    key = cache_key(cfg, dist.world, threads)
    path = cache_dir(root) / "precision" / f"{content_hash(key)}.json"
    with dist.main_first():
        return load_or_build(path, _load, lambda: {**decide(cfg, root, dist, threads, make), "key": key}, write_json)


def resolve_precision(cfg: RunConfig, root: Path, dist: Dist, threads: int, make: TrainerFactory) -> str:
    """train.precision as the step will run it: fp32 or bf16 ("auto" measured and cached).

    `make(cfg, root, progress, threads)` builds a trainer (the Trainer class itself), used only
    when the step has to be timed."""
    if cfg.train.precision != "auto":
        return cfg.train.precision
    return precision_choice(cfg, root, dist, threads, make)["precision"]
