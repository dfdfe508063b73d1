"""`mirai-lab bench`: the toolkit's speed against this machine's own limits.

Everything that is compared is measured side by side in one process, interleaved
(A B C A B C ...) so that the VM's drift hits every variant alike, and reported as medians
and per-round paired ratios. Figures: peak matmul FLOP/s (fp32, bf16), training tokens/s
and step time for plain fp32 eager, the baseline, Mirai-I (cached feature table) and
Mirai-E, the baseline under bf16 autocast,
achieved FLOP/s over peak, sampling with and without the KV cache, evaluation share of a
`standard` run, a smoke sweep end to end, and peak memory.
"""

from __future__ import annotations

import copy
import csv
import io
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mirai_lab.config import build_config
from mirai_lab.data.tokens import prepare_tokens
from mirai_lab.evaluate.evaluator import Evaluator
from mirai_lab.experiments.reproduce import environment
from mirai_lab.foresight.layout import build_layout
from mirai_lab.foresight.objective import ForesightHeads
from mirai_lab.foresight.sources import FeatureTableSource, TeacherSource
from mirai_lab.model.gpt import GPT, Dropout, GPTShape
from mirai_lab.model.sample import sample_tokens
from mirai_lab.runs.store import cache_dir, write_text
from mirai_lab.training.ema import update_ema


def peak_matmul_flops(dtype: torch.dtype, n: int = 1024, repeats: int = 3) -> float:
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times)


def train_flops(shape: GPTShape, batch: int) -> float:
    """6 * (non-embedding params) * tokens + attention (forward 4*T^2*d per layer, x3 with backward)."""
    per_layer = 4 * shape.dim * shape.dim + 3 * shape.dim * shape.ffn_hidden
    dense = shape.n_layer * per_layer + shape.dim * shape.vocab_size
    tokens = shape.n_tokens
    attn = shape.n_layer * 4 * tokens * tokens * shape.dim
    return batch * (6 * dense * tokens + 3 * attn)


def use_plain_dropout(model: torch.nn.Module) -> None:
    """Swap the model's cheap-mask dropout for torch.nn.Dropout (bernoulli_ masks, same rate)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Dropout):
                setattr(module, name, torch.nn.Dropout(child.p))


class StepBench:
    """One training-step closure per variant, built like the trainer builds them."""

    def __init__(self, preset: str, batch: int, grid: tuple[int, int] = (7, 7), vocab: int = 512) -> None:
        cfg = build_config(None, {"model.preset": preset})
        m = cfg.model
        self.shape = GPTShape(vocab, 10, grid, m.n_layer, m.dim, m.n_head, m.ffn_hidden)
        self.batch = batch
        self.cfg = cfg
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, vocab, (batch, grid[0] * grid[1]), generator=g)
        self.y = torch.randint(0, 10, (batch,), generator=g)

    def make(self, variant: str, precision: str) -> Callable[[], None]:
        """variant: baseline | plain (the baseline with torch.nn.Dropout, the reference
        'plain eager' model) | mirai-i | mirai-e."""
        torch.manual_seed(0)
        model = GPT(self.shape)
        if variant == "plain":
            use_plain_dropout(model)
        ema = copy.deepcopy(model).requires_grad_(False)
        heads, source, block = None, None, 0
        if variant in ("mirai-i", "mirai-e"):
            over = {"model.preset": self.cfg.model.preset}
            if variant == "mirai-i":
                over |= {"foresight.source": "bidirectional", "foresight.k": 1}
            else:
                over |= {"foresight.source": "ema", "foresight.k": 3}
            f = build_config(None, over).foresight
            block = f.student_block
            if variant == "mirai-i":
                source = FeatureTableSource(torch.randn(4096, self.shape.n_tokens, 128).half())
            else:
                source = TeacherSource(ema, f.teacher_block)
            layout = build_layout(f.layout, f.k, self.shape.grid)
            heads = ForesightHeads(f, layout, self.shape.dim, source.dim, self.shape.n_tokens, 1000,
                                   self.shape.vocab_size)
        params = list(model.parameters()) + (list(heads.parameters()) if heads is not None else [])
        opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
        x, y = self.x, self.y
        index = torch.arange(self.batch)
        step_no = [0]

        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits, hidden = model(x[:, :-1], y, hidden_blocks=(block,) if heads is not None else ())
                loss = F.cross_entropy(logits.flatten(0, 1), x.flatten())
                if heads is not None:
                    aux, _ = heads(hidden[block], source.targets(x, y, index), step_no[0])
                    loss = loss + aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            update_ema(ema, model, 0.999, step_no[0])
            step_no[0] += 1

        step.model = model  # type: ignore[attr-defined]  # the sampled network, for the parity check
        return step


def interleaved_samples(fns: dict[str, Callable[[], None]], warmup: int, repeats: int, inner: int
                        ) -> dict[str, list[float]]:
    """Seconds per call of each closure in each round, measured round-robin."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter() - t) / inner)
    return samples


def interleaved(fns: dict[str, Callable[[], None]], warmup: int, repeats: int, inner: int) -> dict[str, float]:
    """Median seconds per call of each closure, measured round-robin."""
    return {k: statistics.median(v) for k, v in interleaved_samples(fns, warmup, repeats, inner).items()}


def paired_ratio(samples: dict[str, list[float]], name: str, reference: str) -> float:
    """Median over rounds of name/reference: each round's pair shares the VM's state at that
    moment, so this ratio is steadier than a ratio of medians when the machine drifts."""
    return statistics.median(a / b for a, b in zip(samples[name], samples[reference], strict=True))


def bench_sampling(shape: GPTShape, n: int, repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = GPT(shape).eval()
    with torch.no_grad():
        model.output.weight.normal_(0, 0.02)  # a zero head would sample uniformly; any weights do
    labels = torch.arange(n) % shape.num_classes
    outs = {}

    def run(cache: bool) -> Callable[[], None]:
        def fn() -> None:
            outs[cache] = sample_tokens(model, labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(0),
                                        use_cache=cache)
        return fn

    times = interleaved({"kv_cache": run(True), "recompute": run(False)}, warmup=1, repeats=repeats, inner=1)
    tokens = n * shape.n_tokens
    return {"kv_cache_tokens_per_s": tokens / times["kv_cache"], "recompute_tokens_per_s": tokens / times["recompute"],
            "kv_speedup": times["recompute"] / times["kv_cache"], "same_outputs": bool(torch.equal(outs[True],
                                                                                                  outs[False]))}


def bench_inference_parity(models: dict[str, GPT], n: int, repeats: int) -> dict[str, Any]:
    """Foresight heads are training-only: each variant's trained network is the same GPT, so
    parameter counts and sampling speed should equal the baseline's. Measured, not assumed."""
    labels = torch.arange(n) % 10

    def run(model: GPT) -> Callable[[], None]:
        model.eval()
        return lambda: sample_tokens(model, labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))

    samples = interleaved_samples({v: run(m) for v, m in models.items()}, warmup=1, repeats=repeats, inner=1)
    out: dict[str, Any] = {}
    for v, m in models.items():
        out[f"params_{v}"] = m.n_params()
        out[f"sampling_ratio_{v}"] = paired_ratio(samples, v, "baseline")
    return out


def bench_eval_share(repeats: int = 3) -> dict[str, float]:
    """Eval seconds of a `standard` run (5 curve evals + the final one) over its training seconds."""

    cfg = build_config(None, {}, "standard")
    root = Path(os.environ.get("MIRAI_LAB_RESULTS", "results"))
    data = prepare_tokens(cfg.data, cfg.tokenizer, cache_dir(root))
    shape = GPTShape(data.vocab_size, data.num_classes, data.grid, cfg.model.n_layer, cfg.model.dim,
                     cfg.model.n_head, cfg.model.ffn_hidden)
    ev = Evaluator(cfg, data, cache_dir(root))
    ev.classifier  # noqa: B018 - trained/cached outside the timed region, as a run reuses the cache
    ev.floors(cfg.eval.n_samples_final)
    torch.manual_seed(0)
    model = GPT(shape).eval()
    evals = cfg.train.steps // cfg.train.eval_every
    t = time.perf_counter()
    for _ in range(evals):
        ev.in_training(model, 0)
    with tempfile.TemporaryDirectory() as tmp:
        ev.final(model, Path(tmp), cfg.train.steps)
    eval_s = time.perf_counter() - t
    step_s = interleaved({"step": StepBench(cfg.model.preset, cfg.train.batch_size).make("baseline", "fp32")},
                         warmup=3, repeats=repeats, inner=5)["step"]
    train_s = step_s * cfg.train.steps
    return {"eval_s": eval_s, "train_s_estimated": train_s, "eval_share": eval_s / (eval_s + train_s)}


def bench_smoke_sweep() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mirai_lab", "sweep", "--axis", "layout", "--budget", "smoke",
                        "--seeds", "1", "--results-dir", tmp, "--json"], check=True, capture_output=True)
        return time.perf_counter() - t


def environment_lines() -> list[str]:

    env = environment()
    return [f"- {k}: {v}" for k, v in env.items()] + [f"- torch threads: {torch.get_num_threads()}",
                                                      f"- matrix ISA: {matrix_isa()}"]


def matrix_isa() -> str:
    """The CPU's vector/matrix extensions that decide whether bf16 can beat fp32 here."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    wanted = ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
    have = [f for f in wanted if f in flags]
    missing = [f for f in wanted if f not in flags]
    return " ".join(have) + (f" (absent: {' '.join(missing)})" if missing else "")


def run_bench(out_dir: Path, presets: list[str], repeats: int, quick: bool) -> Path:
    rows: list[dict[str, Any]] = []
    lines = ["# mirai-lab benchmarks", "", f"Command: `mirai-lab bench{' --quick' if quick else ''}`; "
             f"medians of {repeats} interleaved repeats.", "", "## Environment", "", *environment_lines(), ""]
    peak = {"fp32": peak_matmul_flops(torch.float32), "bf16": peak_matmul_flops(torch.bfloat16)}
    lines += ["## Peak matmul (1024^3)", "", "| dtype | GFLOP/s |", "|---|---|"]
    lines += [f"| {k} | {v / 1e9:.1f} |" for k, v in peak.items()] + [""]
    lines += ["## Training step (batch 64)", "",
              "Rounds interleave every variant; ratios are medians of per-round ratios. `plain` is the "
              "same model in plain fp32 eager code (torch.nn.Dropout masks); `baseline` is the trainer's path.", ""]
    variants = [("plain", "fp32"), ("baseline", "fp32"), ("mirai-i", "fp32"), ("mirai-e", "fp32"), ("baseline", "bf16")]
    for preset in presets:
        sb = StepBench(preset, 64)
        # bf16 once, on the first preset: where the CPU lacks bf16 units it is ~10x slower and
        # would dominate the benchmark's own run time
        steps = {f"{v}|{p}": sb.make(v, p) for v, p in variants if p == "fp32" or preset == presets[0]}
        samples = interleaved_samples(steps, warmup=3, repeats=repeats, inner=3 if quick else 5)
        flops = train_flops(sb.shape, sb.batch)
        lines += ["| preset | variant | precision | step ms | tokens/s | x baseline fp32 (paired) | GFLOP/s | "
                  "% of peak (same dtype) |", "|---|---|---|---|---|---|---|---|"]
        for key, secs in samples.items():
            variant, precision = key.split("|")
            sec = statistics.median(secs)
            ratio = paired_ratio(samples, key, "baseline|fp32")
            tokens = sb.batch * sb.shape.n_tokens / sec
            achieved = flops / sec
            rows.append({"section": "train", "preset": preset, "variant": variant, "precision": precision,
                         "step_ms": sec * 1e3, "tokens_per_s": tokens, "ratio_to_baseline_fp32": ratio,
                         "gflops": achieved / 1e9, "peak_fraction": achieved / peak[precision]})
            lines.append(f"| {preset} | {variant} | {precision} | {sec * 1e3:.1f} | {tokens:,.0f} | {ratio:.3f} | "
                         f"{achieved / 1e9:.1f} | {100 * achieved / peak[precision]:.0f}% |")
        speedup = paired_ratio(samples, "plain|fp32", "baseline|fp32")
        lines += ["", f"- {preset}: trainer path = {speedup:.2f}x the tokens/s of plain fp32 eager; "
                  f"Mirai-I step = {paired_ratio(samples, 'mirai-i|fp32', 'baseline|fp32'):.3f}x, Mirai-E = "
                  f"{paired_ratio(samples, 'mirai-e|fp32', 'baseline|fp32'):.3f}x the baseline's"
                  + (f"; bf16 autocast = {paired_ratio(samples, 'baseline|bf16', 'baseline|fp32'):.2f}x the fp32 "
                     "step time." if "baseline|bf16" in samples else "."), ""]
        if preset == presets[0]:
            parity = bench_inference_parity({v: steps[f"{v}|fp32"].model for v in ("baseline", "mirai-i", "mirai-e")},
                                            100, repeats)
    rows.append({"section": "inference_parity", **parity})
    lines += [f"## What a trained model costs at inference ({presets[0]}, 100 samples, CFG 2.0)", "",
              "| variant | parameters | sampling time x baseline (paired) |", "|---|---|---|"]
    lines += [f"| {v} | {parity[f'params_{v}']:,} | {parity[f'sampling_ratio_{v}']:.3f} |"
              for v in ("baseline", "mirai-i", "mirai-e")] + [""]
    shape = StepBench(presets[0], 1).shape
    s = bench_sampling(shape, 250, repeats=max(1, repeats // 2))
    rows.append({"section": "sampling", **s})
    lines += ["## Sampling (250 samples, CFG 2.0)", "", f"- KV cache: {s['kv_cache_tokens_per_s']:,.0f} tokens/s",
              f"- recompute: {s['recompute_tokens_per_s']:,.0f} tokens/s",
              f"- speed-up: {s['kv_speedup']:.1f}x; identical outputs: {s['same_outputs']}", ""]
    e = bench_eval_share()
    rows.append({"section": "eval", **e})
    lines += ["## Evaluation share of a `standard` run", "",
              f"- evaluation {e['eval_s']:.1f} s vs training {e['train_s_estimated']:.1f} s (median step x steps): "
              f"{100 * e['eval_share']:.1f}% of the run", ""]
    if not quick:
        sweep_s = bench_smoke_sweep()
        rows.append({"section": "smoke_sweep", "wall_s": sweep_s})
        lines += ["## Smoke sweep end to end", "", f"- `sweep --axis layout --budget smoke --seeds 1`: {sweep_s:.1f} s",
                  ""]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows.append({"section": "memory", "max_rss_mb": rss})
    lines += ["## Memory", "", f"- peak resident memory of the benchmark process: {rss:.0f} MiB", ""]
    buf = io.StringIO()
    keys = sorted({k for r in rows for k in r})
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    write_text(out_dir / "results.csv", buf.getvalue())
    path = out_dir / "results.md"
    write_text(path, "\n".join(lines) + "\n")
    return path
