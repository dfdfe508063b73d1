"""The bench and `train.precision = auto`: what they time, what they write, what they choose.

No test here reads a clock of its own: speed is what `mirai-lab bench` measures. The
precision choice is tested with a fake clock and fake trainers."""

import csv
import os
from collections import defaultdict

import pytest
import torch
from cli_helpers import refused

from mirai_lab.bench import suite
from mirai_lab.bench.llamagen import llamagen_step
from mirai_lab.bench.suite import Bench, BenchOptions, arithmetic_reading, peak_cell, run_bench
from mirai_lab.bench.timing import (
    ForesightWork,
    gpu_bf16_peak,
    largest_matmul,
    paired_ratio,
    projector_flops,
    step_flops,
    teacher_flops,
    train_flops,
    use_plain_dropout,
)
from mirai_lab.model.gpt import GPT, Dropout, GPTShape
from mirai_lab.training.trainer import Trainer


def test_paired_ratio_is_the_median_of_per_round_ratios():
    samples = {"a": [2.0, 4.0, 9.0], "b": [1.0, 2.0, 3.0]}
    assert paired_ratio(samples, "a", "b") == 2.0  # rounds: 2, 2, 3 (a ratio of medians would say 2)
    drift = {"a": [1.1, 2.2, 3.3, 4.4], "b": [1.0, 2.0, 3.0, 4.0]}
    assert abs(paired_ratio(drift, "a", "b") - 1.1) < 1e-12  # a drifting machine cancels out


def test_train_flops_counts_dense_and_attention_terms():
    s = GPTShape(vocab_size=10, num_classes=2, grid=(2, 2), n_layer=1, dim=4, n_head=1, ffn_hidden=8)
    dense = 4 * 4 * 4 + 3 * 4 * 8 + 4 * 10  # attention and SwiGLU matrices, output head
    attn = 4 * 4 * 4 * 4  # 4 T^2 d per layer, T = 4 cells
    assert train_flops(s, batch=3) == 3 * (6 * dense * 4 + 3 * attn)


TINY_SHAPE = GPTShape(vocab_size=10, num_classes=2, grid=(2, 2), n_layer=2, dim=4, n_head=1, ffn_hidden=8)
# per block: wqkv + wo 4 d^2 = 64, SwiGLU 3 d f = 96 -> 160 weights per position


def test_teacher_forward_counts_its_blocks_over_the_class_position_and_every_token():
    # 5 positions (class + 4 cells), one block: 2 * 160 * 5 = 1600 matmul FLOPs + attention 4 * 5^2 * 4 = 400
    assert teacher_flops(TINY_SHAPE, batch=3, block=1) == 3 * 2000
    assert teacher_flops(TINY_SHAPE, batch=3, block=2) == 2 * 3 * 2000


def test_projectors_count_three_matmuls_forward_and_backward_on_every_student_position():
    work = ForesightWork(k=2, projector_dim=6, d_out=5)
    # per head and position: 4*6 + 6*6 + 6*5 = 90 multiply-adds, x 6 (2 forward, 4 backward);
    # 2 heads x 4 positions x batch 3
    assert projector_flops(TINY_SHAPE, 3, work) == 3 * 4 * 2 * 6 * 90 == 12960


def test_step_flops_add_the_foresight_work_to_the_gpts():
    base = 3 * (6 * (2 * 160 + 4 * 10) * 4 + 3 * 2 * 4 * 4**2 * 4)  # 6 N T + attention, batch 3
    assert train_flops(TINY_SHAPE, 3) == base == 30528
    assert step_flops(TINY_SHAPE, 3) == step_flops(TINY_SHAPE, 3, None) == 30528
    table = ForesightWork(k=2, projector_dim=6, d_out=5)  # Mirai-I: a feature table, no teacher
    assert step_flops(TINY_SHAPE, 3, table) == 30528 + 12960
    ema = ForesightWork(k=2, projector_dim=6, d_out=5, teacher=TINY_SHAPE, teacher_block=1)
    assert step_flops(TINY_SHAPE, 3, ema) == 30528 + 12960 + 6000 == 49488


def test_the_step_sized_matmul_is_the_widest_of_qkv_swiglu_and_head():
    assert largest_matmul(TINY_SHAPE, 3) == (12, 4, 12)  # 3 x 4 positions; wqkv 3 d = 12 > vocab 10 > f 8
    wide_head = GPTShape(vocab_size=512, num_classes=2, grid=(7, 7), n_layer=4, dim=128, n_head=4, ffn_hidden=352)
    assert largest_matmul(wide_head, 64) == (3136, 128, 512)


def test_the_reading_says_whether_a_measured_ratio_is_at_below_or_above_its_arithmetic():
    assert arithmetic_reading("mirai-e", 1.375, 1.39) == "mirai-e 1.375x measured, 1.39x arithmetic: at the " \
                                                         "baseline's FLOP rate"
    assert arithmetic_reading("mirai-e", 1.25, 1.40) == "mirai-e 1.250x measured, 1.40x arithmetic: below the " \
                                                        "arithmetic: 1.12x the baseline's FLOP rate"
    assert arithmetic_reading("plain", 1.25, 1.0) == "plain 1.250x measured, 1.00x arithmetic: above the " \
                                                     "arithmetic: 0.80x the baseline's FLOP rate"


def test_a_peak_fraction_above_one_or_of_emulated_bf16_is_not_printed_as_a_number():
    assert peak_cell(0.844, emulated=False) == "84%"
    assert peak_cell(1.0, emulated=False) == "100%"
    assert peak_cell(1.22, emulated=False) == "> peak: timing noise"
    assert peak_cell(7.87, emulated=True) == peak_cell(0.2, emulated=True) == "emulated"


def test_plain_reference_swaps_every_dropout_for_torch_dropout_of_the_same_rate():
    s = GPTShape(vocab_size=10, num_classes=2, grid=(2, 2), n_layer=2, dim=8, n_head=2, ffn_hidden=16)
    model = GPT(s)
    assert sum(isinstance(m, Dropout) for m in model.modules()) == 5  # token + 2 per block
    use_plain_dropout(model)
    plain = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(plain) == 5 and not any(isinstance(m, Dropout) for m in model.modules())
    assert all(m.p == 6554 / 65536 for m in plain)


def test_gpu_peaks_are_looked_up_by_the_most_specific_name():
    assert gpu_bf16_peak("NVIDIA H100 PCIe") == 756e12
    assert gpu_bf16_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_bf16_peak("NVIDIA H200") == 989e12
    assert gpu_bf16_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_bf16_peak("Some Future GPU") is None


@pytest.mark.parametrize("args, message", [
    (["--presets", ","], "error: --presets ',': expected at least one preset name"),
    (["--device", "tpu"], "error: --device 'tpu': expected cpu or cuda"),
    (["--sections", "train,speed"], "error: --sections 'speed': expected names from "
                                    "peak, train, inference, sampling, eval, sweep, llamagen"),
] + ([] if torch.cuda.is_available() else
     [(["--device", "cuda"], "error: --device cuda: no CUDA device is visible to torch")]))
def test_bad_bench_options_exit_2_with_one_line_and_write_nothing(tmp_path, args, message):
    argv = ["bench", *args, "--out", str(tmp_path / "bench-out"), "--results-dir", str(tmp_path / "results")]
    assert refused(argv, tmp_path) == message


class FakeMatmul:
    """Stands in for the matmul timer: records the thread count each timing ran under and its
    shape, and reports fixed rates (bf16 at a hundredth of fp32's: emulated)."""

    def __init__(self, fp32: float = 100e9) -> None:
        self.rates = {torch.float32: fp32, torch.bfloat16: fp32 / 100}
        self.calls: list[tuple[torch.dtype, tuple[int, int, int] | None, int]] = []

    def __call__(self, dtype, device=None, n=1024, repeats=3, mkn=None):
        self.calls.append((dtype, mkn, torch.get_num_threads()))
        return self.rates[dtype]


@pytest.fixture
def torch_threads_back():
    """torch's thread count as it was before the test (trainers and the test itself change it)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def options(tmp_path, root, overrides, **kw):
    over = {k: v for k, v in overrides.items() if k not in ("model.preset",)}
    return BenchOptions(out=tmp_path / "out", root=root, presets=["tiny"], repeats=1, quick=True,
                        overrides=over | {"foresight.encoder_steps": 2}, **kw)


@pytest.mark.parametrize("threads", [3, 0])  # train.threads = 0: every core, as the Trainer takes it
def test_the_peak_is_measured_at_the_thread_count_the_steps_run_under(tmp_path, session_results, tiny_overrides,
                                                                     monkeypatch, torch_threads_back, threads):
    fake = FakeMatmul()
    monkeypatch.setattr(suite, "matmul_flops", fake)
    before = torch.get_num_threads()
    path = run_bench(options(tmp_path, session_results, tiny_overrides | {"train.threads": threads},
                             sections=("peak",)))
    expected = threads or os.cpu_count()
    assert [c[2] for c in fake.calls] == [expected, expected]  # fp32 and bf16, at 1024^3
    assert torch.get_num_threads() == before  # the bench's own thread count is left as it was
    text = path.read_text()
    word = "thread" if expected == 1 else "threads"
    assert f"## Peak matmul (1024^3, measured, {expected} {word})" in text
    assert "| bf16 | 1.0 (emulated: under half the fp32 rate) |" in text and "| fp32 | 100.0 |" in text


def test_bench_times_trainer_train_step_itself_and_writes_the_table(tmp_path, session_results, tiny_overrides,
                                                                    monkeypatch, torch_threads_back):
    """The CPU path of the bench (the one `--device cuda` takes on a GPU) on a tiny preset:
    every timed step is a call of Trainer.train_step, on consecutive steps of each trainer.
    The peaks come from a fake timer at 1 FLOP/s fp32 (every step outruns it, so every fp32 cell
    must say so) with bf16 emulated; the arithmetic column is checked against the trainers' configs."""
    calls: dict[int, list[int]] = defaultdict(list)
    seen: dict[int, Trainer] = {}
    real = Trainer.train_step

    def counting(self, step):
        calls[id(self)].append(step)
        seen[id(self)] = self
        return real(self, step)

    monkeypatch.setattr(Trainer, "train_step", counting)
    fake = FakeMatmul(fp32=1.0)
    monkeypatch.setattr(suite, "matmul_flops", fake)
    torch.set_num_threads(3)  # torch's count before the trainers set theirs (train.threads = 1)
    path = run_bench(options(tmp_path, session_results, tiny_overrides, sections=("train",)))
    variants = 5  # plain, baseline, mirai-i, mirai-e in fp32; baseline in bf16 on the first preset
    per_trainer = 3 + 1 * 3  # warmup + repeats x inner (quick)
    timed = [steps for steps in calls.values() if len(steps) == per_trainer]
    assert len(timed) == variants and all(steps == list(range(per_trainer)) for steps in timed)
    text = path.read_text()
    for variant, prec in (("plain", "fp32"), ("baseline", "fp32"), ("mirai-i", "fp32"), ("mirai-e", "fp32"),
                          ("baseline", "bf16")):
        assert f"| {variant} | {prec} |" in text
    assert "`train.precision = auto` on tiny" in text
    assert "CPU matrix extensions:" in text
    csv_text = (tmp_path / "out" / "results.csv").read_text()
    assert csv_text.count("train,") >= variants

    # the peaks: 1024^3 and the step's widest matmul, both at the trainers' thread count; emulated bf16
    # is not timed at the step's size
    shape = next(iter(seen.values())).shape
    assert fake.calls == [(torch.float32, None, 1), (torch.bfloat16, None, 1),
                          (torch.float32, largest_matmul(shape, 16), 1)]
    assert "| GFLOP/s | % of peak (1024^3, same dtype, 1 thread) |" in text
    rows = {(r["variant"], r["precision"]): r for r in csv.DictReader((tmp_path / "out" / "results.csv").open())
            if r["section"] == "train"}
    assert {r["peak_cell"] for k, r in rows.items() if k[1] == "fp32"} == {"> peak: timing noise"}
    assert rows["baseline", "bf16"]["peak_cell"] == "emulated"
    table = [line for line in text.splitlines() if line.startswith(("| plain |", "| baseline |", "| mirai-"))]
    assert [line.rsplit("|", 2)[1].strip() for line in table] == ["> peak: timing noise"] * 4 + ["emulated"]
    size = " x ".join(map(str, largest_matmul(shape, 16)))
    assert "| 1024^3 | 0.0 | 0.0 (emulated) |" in text and f"| {size} | 0.0 | emulated |" in text

    # the arithmetic column, from each trainer's resolved config
    by_source = {t.cfg.foresight.source: t for t in seen.values()}
    f_e, f_i = by_source["ema"].cfg.foresight, by_source["bidirectional"].cfg.foresight
    base = train_flops(shape, 16)
    mirai_e = step_flops(shape, 16, ForesightWork(f_e.k, f_e.projector_dim, shape.dim, shape, f_e.teacher_block))
    mirai_i = step_flops(shape, 16, ForesightWork(f_i.k, f_i.projector_dim, by_source["bidirectional"].foresight
                                                   .source.dim))
    assert (f_e.k, f_i.k) == (3, 1) and mirai_e > mirai_i > base
    assert float(rows["mirai-e", "fp32"]["arithmetic"]) == mirai_e / base
    assert float(rows["mirai-i", "fp32"]["arithmetic"]) == mirai_i / base
    assert float(rows["plain", "fp32"]["arithmetic"]) == float(rows["baseline", "fp32"]["arithmetic"]) == 1.0
    reading = f"  - mirai-e {float(rows['mirai-e', 'fp32']['ratio']):.3f}x measured, {mirai_e / base:.2f}x arithmetic: "
    assert reading in text


def test_each_section_is_written_as_it_ends_so_a_failure_keeps_the_earlier_ones(tmp_path, session_results,
                                                                              tiny_overrides, monkeypatch):
    def broken(self):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(Bench, "train_section", broken)
    monkeypatch.setattr(suite, "matmul_flops", FakeMatmul())
    with pytest.raises(RuntimeError):
        run_bench(options(tmp_path, session_results, tiny_overrides, sections=("peak", "train")))
    text = (tmp_path / "out" / "results.md").read_text()
    assert "## Peak matmul (1024^3, measured, 1 thread)" in text and "| fp32 |" in text
    assert "peak," in (tmp_path / "out" / "results.csv").read_text()


def test_llamagen_is_skipped_with_a_reason_when_its_code_is_absent(tmp_path):
    reason = llamagen_step(tmp_path / "LlamaGen", "gpt-b", 2, torch.device("cpu"), False)
    assert isinstance(reason, str) and "clone https://github.com/FoundationVision/LlamaGen" in reason
    assert llamagen_step(tmp_path, "tiny", 2, torch.device("cpu"), False).startswith("LlamaGen has no model")
