"""The bench suite: the toolkit's speed against this machine's own limits.

It times the real code paths: `Trainer.train_step` of trainers built as a run builds them
(steps.py), `sample_tokens` with and without the KV cache, and the `Evaluator` of a
`standard` run. Variants are measured interleaved in one process and compared by paired
ratios (timing.py). Each section is written to results.md and results.csv as soon as it
ends, so a long bench reports as it goes and an interrupted one keeps what it measured.
On CUDA it reports tokens/s, achieved TFLOP/s and MFU against the GPU's data-sheet bf16
peak and its measured matmul peak, and LlamaGen's own step beside ours when its code is
present locally (llamagen.py).
"""

from __future__ import annotations

import csv
import io
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress

from mirai_lab.bench.llamagen import LLAMAGEN_DIR, llamagen_step
from mirai_lab.bench.steps import CODE_PRESETS, Stepper, build_trainer, device_sync, step_config_overrides
from mirai_lab.bench.timing import (
    SECTIONS,
    ForesightWork,
    gpu_bf16_peak,
    interleaved_samples,
    largest_matmul,
    paired_ratio,
    step_flops,
    train_flops,
)
from mirai_lab.config import build_config
from mirai_lab.errors import UserError
from mirai_lab.evaluate.evaluator import Evaluator
from mirai_lab.files.atomic import write_text
from mirai_lab.foresight.fit import configure
from mirai_lab.foresight.sources import TeacherSource
from mirai_lab.model.gpt import GPT, GPTShape
from mirai_lab.model.sample import sample_tokens
from mirai_lab.results_dir import cache_dir
from mirai_lab.runs.provenance import cpu_matrix_extensions, provenance
from mirai_lab.training.precision import EMULATED_BELOW, auto_precision, matmul_flops
from mirai_lab.training.trainer import Trainer

CPU_ONLY = ("eval", "sweep")  # a standard run's evaluation share and the smoke sweep are CPU figures
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# a measured step ratio within this fraction of its arithmetic ratio reads as "at the baseline's
# FLOP rate": the paired ratios of one bench move by about this much from run to run
AT_ARITHMETIC = 0.03


@dataclass
class BenchOptions:
    out: Path
    root: Path  # results directory: its caches serve the bench's trainers
    presets: list[str]
    repeats: int = 5
    quick: bool = False
    device: str = "cpu"
    batch: int = 0  # 0: 64 on the CPU presets, 256 on gpt-b and up
    sections: tuple[str, ...] = SECTIONS
    overrides: dict[str, Any] = field(default_factory=dict)
    llamagen: Path = LLAMAGEN_DIR
    command: str = "mirai-lab bench"


def check_device(device: str) -> torch.device:
    """The Trainer trains on the GPU whenever one is visible, so the device is checked, not chosen."""
    if device not in ("cpu", "cuda"):
        raise UserError(f"--device {device!r}: expected cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible to torch")
    if device == "cpu" and torch.cuda.is_available():
        raise UserError("--device cpu: a GPU is visible and runs train on it; hide it with CUDA_VISIBLE_DEVICES=")
    return torch.device(device)


class Report:
    """results.md and results.csv, rewritten whole (atomically) after every section."""

    def __init__(self, out: Path, header: list[str]) -> None:
        self.out = out
        self.lines = header
        self.rows: list[dict[str, Any]] = []

    def add(self, lines: list[str], rows: list[dict[str, Any]]) -> None:
        self.lines += lines
        self.rows += rows
        self.flush()

    def flush(self) -> Path:
        buf = io.StringIO()
        keys = sorted({k for r in self.rows for k in r} - {"section"})
        writer = csv.DictWriter(buf, fieldnames=["section", *keys])  # tidy: one row per measurement
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.out / "results.csv", buf.getvalue())
        path = self.out / "results.md"
        write_text(path, "\n".join(self.lines) + "\n")
        return path


def environment_lines(threads: int) -> list[str]:
    env = provenance(threads)
    keys = ("version", "commit", "python", "torch", "cpu", "cores", "threads", "cuda", "platform")
    ext = cpu_matrix_extensions()
    return [f"- {k}: {env[k]}" for k in keys if env.get(k) is not None] + [
        f"- CPU matrix extensions: {', '.join(ext) or 'none reported'}"
        + ("" if {"avx512_bf16", "amx_bf16"} & set(ext) else " (no bf16 units: bf16 matmuls are emulated)")]


def default_batch(preset: str, batch: int) -> int:
    return batch or (256 if preset in CODE_PRESETS else 64)


def step_threads(overrides: dict[str, Any]) -> int:
    """The thread count the bench's trainers step under, by the Trainer's rule: train.threads,
    else every core (Trainer.__init__); the train section reads it back from the trainers."""
    return build_config(None, overrides).train.threads or os.cpu_count() or 1


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to `n` for the block, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def threads_text(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def foresight_work(trainer: Trainer) -> ForesightWork | None:
    """The extra work of a trainer's foresight objective, read from the modules it built."""
    fs = trainer.foresight
    if fs is None:
        return None
    heads, teacher = fs.heads, fs.source if isinstance(fs.source, TeacherSource) else None
    return ForesightWork(heads.k, heads.p, heads.d_out, teacher.teacher.shape if teacher else None,
                         teacher.block if teacher else 0)


def peak_cell(fraction: float, emulated: bool) -> str:
    """A "% of peak" cell: a step cannot outrun the big-matmul peak measured at its own thread
    count, so a fraction above 1 is timing noise (a peak read while the machine was busier),
    and a rate of emulated bf16 has no peak worth a fraction."""
    if emulated:
        return "emulated"
    if fraction > 1:
        return "> peak: timing noise"
    return f"{100 * fraction:.0f}%"


def arithmetic_reading(variant: str, measured: float, arithmetic: float, tolerance: float = AT_ARITHMETIC) -> str:
    """One line setting a measured step ratio against its FLOP ratio: at, below or above the
    arithmetic, i.e. the variant's FLOP rate against the baseline step's."""
    rate = arithmetic / measured  # the variant's FLOP rate over the baseline step's
    if abs(rate - 1) <= tolerance:
        verdict = "at the baseline's FLOP rate"
    elif rate > 1:
        verdict = f"below the arithmetic: {rate:.2f}x the baseline's FLOP rate"
    else:
        verdict = f"above the arithmetic: {rate:.2f}x the baseline's FLOP rate"
    return f"{variant} {measured:.3f}x measured, {arithmetic:.2f}x arithmetic: {verdict}"


class Bench:
    def __init__(self, o: BenchOptions, progress: Progress) -> None:
        self.o = o
        self.device = check_device(o.device)
        self.sync = device_sync(self.device)
        self.progress = progress
        self.peak: dict[str, float] = {}
        self.peak_threads = 0  # the thread count self.peak was measured under
        self.trainers: dict[str, Trainer] = {}  # first preset's trainers, for the inference section
        self.report = Report(o.out, ["# mirai-lab benchmarks", "", f"Command: `{o.command}`; medians of {o.repeats} "
                                     "interleaved rounds, ratios are medians of per-round ratios.", "",
                                     "## Environment", "", *environment_lines(step_threads(o.overrides)), ""])
        self.report.flush()

    # -- sections ------------------------------------------------------------------------
    def peak_section(self, threads: int | None = None) -> None:
        """Matmul peaks per dtype, measured at the thread count the training steps run under
        (`threads`, else the Trainer's rule for the bench's config) so that "% of peak" compares
        like with like."""
        cuda = self.device.type == "cuda"
        n = self.peak_n()
        threads = threads or step_threads(self.o.overrides)
        with torch_threads(threads):
            self.peak = {k: matmul_flops(dtype, self.device, n) for k, dtype in DTYPES.items()}
        self.peak_threads = threads
        lines = [f"## Peak matmul ({n}^3, measured" + ("" if cuda else f", {threads_text(threads)}") + ")", "",
                 "| dtype | GFLOP/s |", "|---|---|"]
        note = " (emulated: under half the fp32 rate)"
        lines += [f"| {k} | {v / 1e9:,.1f}{note if self.emulated(k) else ''} |" for k, v in self.peak.items()]
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name()
            sheet = gpu_bf16_peak(name)
            lines += ["", f"- {name}: data-sheet dense bf16 peak "
                      + (f"{sheet / 1e12:,.0f} TFLOP/s" if sheet else "not in the bench's table")
                      + " (TF32 is on for fp32 matmuls)"]
        rows = [{"section": "peak", "dtype": k, "gflops": v / 1e9, "n": n, "threads": threads,
                 "emulated": self.emulated(k)} for k, v in self.peak.items()]
        self.report.add(lines + [""], rows)

    def emulated(self, precision: str) -> bool:
        """bf16 without bf16 units, by the rule of `train.precision = auto`'s probe: a matmul rate
        below EMULATED_BELOW of fp32's."""
        return precision == "bf16" and self.peak["bf16"] < EMULATED_BELOW * self.peak["fp32"]

    def variants(self, preset: str, first: bool) -> list[tuple[str, str]]:
        if self.device.type == "cuda":
            chosen = [("baseline", "fp32"), ("baseline", "bf16"), ("mirai-e", "bf16")]
            return chosen if preset in CODE_PRESETS else chosen[:2] + [("mirai-i", "bf16"), ("mirai-e", "bf16")]
        chosen = [("plain", "fp32"), ("baseline", "fp32"), ("mirai-i", "fp32"), ("mirai-e", "fp32")]
        # bf16 once, on the first preset: where the CPU lacks bf16 units it is ~10x slower and
        # would dominate the bench's own run time
        return chosen + ([("baseline", "bf16")] if first else [])

    def train_section(self) -> None:
        o = self.o
        ref = "baseline|bf16" if self.device.type == "cuda" else "baseline|fp32"
        for preset in o.presets:
            first = preset == o.presets[0]
            batch = default_batch(preset, o.batch)
            task = self.progress.add_task(f"train {preset}: building trainers", total=None)
            trainers = {f"{v}|{p}": build_trainer(preset, v, p, batch, o.root, o.overrides)
                        for v, p in self.variants(preset, first)}
            if first:
                self.trainers = {k.split("|")[0]: t for k, t in trainers.items() if k.endswith("|fp32")}
            some = next(iter(trainers.values()))
            batch = some.cfg.train.batch_size  # what the steps take: a --set train.batch_size wins over --batch
            threads = some.threads
            if threads != self.peak_threads:  # "% of peak" and MFU need a peak at the steps' thread count
                self.peak_section(threads)
            self.progress.update(task, description=f"train {preset}: {len(trainers)} variants interleaved")
            inner = 3 if o.quick else 5
            samples = interleaved_samples({k: Stepper(t) for k, t in trainers.items()}, warmup=3,
                                          repeats=o.repeats, inner=inner, sync=self.sync)
            self.progress.remove_task(task)
            self.report.add(*self.train_table(preset, batch, trainers, samples, ref))
            if first:
                self.report.add(*self.auto_lines(preset, batch))

    def train_table(self, preset: str, batch: int, trainers: dict[str, Trainer], samples: dict[str, list[float]],
                    ref: str) -> tuple[list[str], list[dict[str, Any]]]:
        cuda = self.device.type == "cuda"
        shape = next(iter(trainers.values())).shape
        base_flops = train_flops(shape, batch)
        flops = {k: step_flops(shape, batch, foresight_work(t)) for k, t in trainers.items()}
        sheet = gpu_bf16_peak(torch.cuda.get_device_name()) if cuda else None
        head = [f"## Training step: {preset}, batch {batch}, {shape.n_tokens} tokens", "",
                "`plain` is the baseline in plain eager code (torch.nn.Dropout masks); `baseline` is the trainer's "
                "path. FLOPs are each variant's own: the GPT's (6 N T + attention), plus the teacher's forward to "
                "its block and the projectors' forward + backward for Mirai-E/I; `arithmetic x baseline` is their "
                "ratio to the baseline's FLOPs.", ""]
        rows: list[dict[str, Any]] = []
        cols = "| variant | precision | step ms | tokens/s | x " + ref.replace("|", " ") + " (paired) | "
        cols += "arithmetic x baseline | "
        if cuda:
            cols += "TFLOP/s | MFU (data sheet) | MFU (measured bf16 matmul) |"
        else:
            head += self.step_peak_lines(preset, batch, shape, {k.split("|")[1] for k in samples}, rows)
            cols += f"GFLOP/s | % of peak ({self.peak_n()}^3, same dtype, {threads_text(self.peak_threads)}) |"
        lines = [*head, cols, cols_rule(cols)]
        for key, secs in samples.items():
            variant, precision = key.split("|")
            sec = statistics.median(secs)
            ratio = paired_ratio(samples, key, ref)
            achieved = flops[key] / sec
            row = {"section": "train", "preset": preset, "variant": variant, "precision": precision, "batch": batch,
                   "step_ms": sec * 1e3, "tokens_per_s": batch * shape.n_tokens / sec, "ratio": ratio,
                   "reference": ref, "flops": flops[key], "arithmetic": flops[key] / base_flops,
                   "gflops": achieved / 1e9}
            if cuda:
                row |= {"mfu_sheet": achieved / sheet if sheet else None, "mfu_measured": achieved / self.peak["bf16"]}
                sheet_txt = f"{100 * row['mfu_sheet']:.1f}%" if sheet else "n/a"
                tail = f"{achieved / 1e12:.1f} | {sheet_txt} | {100 * row['mfu_measured']:.1f}% |"
            else:
                row |= {"peak_fraction": achieved / self.peak[precision], "peak_threads": self.peak_threads,
                        "peak_cell": peak_cell(achieved / self.peak[precision], self.emulated(precision))}
                tail = f"{achieved / 1e9:.1f} | {row['peak_cell']} |"
            rows.append(row)
            lines.append(f"| {variant} | {precision} | {sec * 1e3:.1f} | {row['tokens_per_s']:,.0f} | {ratio:.3f} | "
                         f"{row['arithmetic']:.2f} | " + tail)
        readings = [arithmetic_reading(v, paired_ratio(samples, k, ref), flops[k] / base_flops) for k in samples
                    if (v := k.split("|")[0]) != "baseline" and k.split("|")[1] == ref.split("|")[1]]
        lines += ["", f"- {preset}: step time x the {ref.replace('|', ' ')} step against the FLOP ratio:"]
        lines += [f"  - {r}" for r in readings]
        return lines + [""], rows

    def peak_n(self) -> int:
        return 8192 if self.device.type == "cuda" else 1024

    def step_peak_lines(self, preset: str, batch: int, shape: GPTShape, precisions: set[str],
                        rows: list[dict[str, Any]]) -> list[str]:
        """The peaks a step's "% of peak" stands against: the big-matmul peak, and a matmul the
        size of the step's widest one, both at the steps' thread count; small matmuls cannot
        reach the big-matmul peak, so the second shows how much of the gap is size alone."""
        mkn = largest_matmul(shape, batch)
        size = " x ".join(map(str, mkn))
        dtypes = [p for p in DTYPES if p in precisions]
        big, sized = [], []
        for precision in dtypes:
            big.append(f"{self.peak[precision] / 1e9:,.1f}" + (" (emulated)" if self.emulated(precision) else ""))
            if self.emulated(precision):
                sized.append("emulated")
                continue
            with torch_threads(self.peak_threads):
                rate = matmul_flops(DTYPES[precision], self.device, mkn=mkn)
            rows.append({"section": "step_peak", "preset": preset, "dtype": precision, "m": mkn[0], "k": mkn[1],
                         "n": mkn[2], "threads": self.peak_threads, "gflops": rate / 1e9})
            sized.append(f"{rate / 1e9:,.1f}")
        cols = f"| matmul, {threads_text(self.peak_threads)} | " + " | ".join(f"{p} GFLOP/s" for p in dtypes) + " |"
        return [f"Matmul peaks at the steps' thread count: `% of peak` is against {self.peak_n()}^3; {size} is the "
                "step's widest matmul (batch x tokens by dim by the widest of 3 dim, ffn_hidden and the vocabulary), "
                "which a step's smaller matmuls cannot outrun either.", "", cols, cols_rule(cols),
                f"| {self.peak_n()}^3 | " + " | ".join(big) + " |", f"| {size} | " + " | ".join(sized) + " |", ""]

    def auto_lines(self, preset: str, batch: int) -> tuple[list[str], list[dict[str, Any]]]:
        """What train.precision = auto resolves to for this preset's baseline (cached in the results dir)."""
        over = step_config_overrides(preset, "baseline", "auto", batch, self.o.root, self.o.overrides)
        cfg = configure(None, over)
        choice = auto_precision(cfg, self.o.root, Trainer, cfg.train.threads or None)
        line = f"- `train.precision = auto` on {preset}, batch {batch}: **{choice['precision']}** ({choice['reason']})"
        return [line, ""], [{"section": "auto_precision", "preset": preset, "precision": choice["precision"],
                             "reason": choice["reason"]}]

    def inference_section(self) -> None:
        """Foresight heads are training-only: each variant's network is the same GPT, so parameter
        counts and sampling speed should equal the baseline's. Measured, not assumed."""
        models = {v: t.model for v, t in self.trainers.items() if v in ("baseline", "mirai-i", "mirai-e")}
        labels = torch.arange(100, device=self.device) % next(iter(models.values())).shape.num_classes

        def run(model: GPT):
            model.eval()
            return lambda: sample_tokens(model, labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))

        samples = interleaved_samples({v: run(m) for v, m in models.items()}, warmup=1, repeats=self.o.repeats,
                                      inner=1, sync=self.sync)
        lines = [f"## What a trained model costs at inference ({self.o.presets[0]}, 100 samples, CFG 2.0)", "",
                 "| variant | parameters | sampling time x baseline (paired) |", "|---|---|---|"]
        rows = []
        for v, m in models.items():
            ratio = paired_ratio(samples, v, "baseline")
            lines.append(f"| {v} | {m.n_params():,} | {ratio:.3f} |")
            rows.append({"section": "inference_parity", "variant": v, "params": m.n_params(), "ratio": ratio})
        self.report.add(lines + [""], rows)

    def sampling_section(self) -> None:
        shape = next(iter(self.trainers.values())).shape if self.trainers else None
        if shape is None:
            return
        torch.manual_seed(0)
        model = GPT(shape).to(self.device).eval()
        with torch.no_grad():
            model.output.weight.normal_(0, 0.02)  # a zero head would sample uniformly; any weights do
        n = 250
        labels = torch.arange(n, device=self.device) % shape.num_classes
        outs: dict[bool, torch.Tensor] = {}

        def run(cache: bool):
            def fn() -> None:
                outs[cache] = sample_tokens(model, labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(0),
                                            use_cache=cache)
            return fn

        times = interleaved_samples({"kv_cache": run(True), "recompute": run(False)}, warmup=1,
                                    repeats=max(1, self.o.repeats // 2), inner=1, sync=self.sync)
        med = {k: statistics.median(v) for k, v in times.items()}
        tokens = n * shape.n_tokens
        s = {"section": "sampling", "kv_cache_tokens_per_s": tokens / med["kv_cache"],
             "recompute_tokens_per_s": tokens / med["recompute"], "kv_speedup": med["recompute"] / med["kv_cache"],
             "same_outputs": bool(torch.equal(outs[True], outs[False]))}
        self.report.add([f"## Sampling ({self.o.presets[0]}, {n} samples, CFG 2.0)", "",
                         f"- KV cache: {s['kv_cache_tokens_per_s']:,.0f} tokens/s",
                         f"- recompute: {s['recompute_tokens_per_s']:,.0f} tokens/s",
                         f"- speed-up: {s['kv_speedup']:.1f}x; identical outputs: {s['same_outputs']}", ""], [s])

    def eval_section(self) -> None:
        """Evaluation seconds of a `standard` run (its val points, sample points and the final
        evaluation, as Trainer.log_point calls them) over its training seconds."""
        cfg = configure(None, self.o.overrides, "standard")
        t = cfg.train
        trainer = Trainer(cfg, self.o.root)
        trainer.setup()
        ev = Evaluator(cfg, trainer.data, cache_dir(self.o.root))
        ev.classifier  # noqa: B018 - trained/cached outside the timed region, as a run reuses the cache
        ev.floors(cfg.eval.n_samples_final)
        points = sorted({s for s in range(1, t.steps + 1) if s % t.val_every == 0 or s % t.eval_every == 0})
        start = time.perf_counter()
        for s in points:
            if s < t.steps:
                ev.in_training(trainer.ema, s, samples=s % t.eval_every == 0)
        with tempfile.TemporaryDirectory() as tmp:
            ev.final(trainer.ema, Path(tmp), t.steps)
        eval_s = time.perf_counter() - start
        step_s = statistics.median(interleaved_samples({"step": Stepper(trainer)}, warmup=3, repeats=self.o.repeats,
                                                       inner=5)["step"])
        train_s = step_s * t.steps
        e = {"section": "eval", "eval_s": eval_s, "train_s_estimated": train_s,
             "eval_share": eval_s / (eval_s + train_s)}
        self.report.add(["## Evaluation share of a `standard` run", "",
                         f"- evaluation {eval_s:.1f} s vs training {train_s:.1f} s (median step x {t.steps} steps): "
                         f"{100 * e['eval_share']:.1f}% of the run", ""], [e])

    def sweep_section(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mirai_lab", "sweep", "--axis", "layout", "--budget", "smoke",
                            "--seeds", "1", "--results-dir", tmp, "--json"], check=True, capture_output=True)
            wall = time.perf_counter() - t
        self.report.add(["## Smoke sweep end to end", "",
                         f"- `sweep --axis layout --budget smoke --seeds 1`: {wall:.1f} s", ""],
                        [{"section": "smoke_sweep", "wall_s": wall}])

    def llamagen_section(self) -> None:
        presets = [p for p in self.o.presets if p in CODE_PRESETS]
        lines = ["## LlamaGen's own step on this device", ""]
        rows: list[dict[str, Any]] = []
        if not presets:
            lines.append("- skipped: no gpt-b/gpt-l/gpt-xl preset in --presets")
        for preset in presets:
            batch = default_batch(preset, self.o.batch)
            ours = build_trainer(preset, "baseline", "bf16", batch, self.o.root, self.o.overrides)
            theirs = llamagen_step(self.o.llamagen, preset, batch, self.device, ours.cfg.train.compile)
            if isinstance(theirs, str):
                lines.append(f"- skipped: {theirs}")
                continue
            samples = interleaved_samples({"mirai-lab": Stepper(ours), "llamagen": theirs}, warmup=3,
                                          repeats=self.o.repeats, inner=5, sync=self.sync)
            ratio = paired_ratio(samples, "mirai-lab", "llamagen")
            med = {k: statistics.median(v) for k, v in samples.items()}
            lines.append(f"- {preset}, batch {batch}, bf16: mirai-lab {med['mirai-lab'] * 1e3:.1f} ms, LlamaGen "
                         f"{med['llamagen'] * 1e3:.1f} ms per step; ours = {ratio:.3f}x LlamaGen's step time")
            rows.append({"section": "llamagen", "preset": preset, "batch": batch, "ours_ms": med["mirai-lab"] * 1e3,
                         "llamagen_ms": med["llamagen"] * 1e3, "ratio": ratio})
        self.report.add(lines + [""], rows)

    def memory_lines(self) -> None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        lines = ["## Memory", "", f"- peak resident memory of the bench process: {rss:.0f} MiB"]
        row: dict[str, Any] = {"section": "memory", "max_rss_mb": rss}
        if self.device.type == "cuda":
            row["max_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
            lines.append(f"- peak GPU memory allocated: {row['max_cuda_mb']:.0f} MiB")
        self.report.add(lines + [""], [row])


def cols_rule(header: str) -> str:
    return "|" + "---|" * (header.count("|") - 1)


def run_bench(o: BenchOptions, console: Console | None = None) -> Path:
    """Run the chosen sections in order, writing the report after each; returns results.md."""
    unknown = [s for s in o.sections if s not in SECTIONS]
    if unknown:
        raise UserError(f"--sections {unknown[0]!r}: expected names from {', '.join(SECTIONS)}")
    sections = [s for s in SECTIONS if s in o.sections and not (o.device == "cuda" and s in CPU_ONLY)
                and not (o.quick and s == "sweep")]
    with Progress(console=console or Console(stderr=True), transient=True) as progress:
        bench = Bench(o, progress)
        overall = progress.add_task("bench", total=len(sections) + 1)
        for name in sections:
            progress.update(overall, description=f"bench: {name}")
            getattr(bench, f"{name}_section")()
            progress.advance(overall)
        bench.memory_lines()
        progress.advance(overall)
    return o.out / "results.md"
