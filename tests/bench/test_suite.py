"""The bench and `train.precision = auto`: what they time, what they write, what they choose.

No test here reads a clock of its own: speed is what `mirai-lab bench` measures. The
precision choice is tested with a fake clock and fake trainers."""

from collections import defaultdict

import pytest
import torch
from cli_helpers import refused

from mirai_lab.bench.llamagen import llamagen_step
from mirai_lab.bench.suite import Bench, BenchOptions, run_bench
from mirai_lab.bench.timing import gpu_bf16_peak, paired_ratio, train_flops, use_plain_dropout
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


def options(tmp_path, root, overrides, **kw):
    over = {k: v for k, v in overrides.items() if k not in ("model.preset",)}
    return BenchOptions(out=tmp_path / "out", root=root, presets=["tiny"], repeats=1, quick=True,
                        overrides=over | {"foresight.encoder_steps": 2}, **kw)


def test_bench_times_trainer_train_step_itself_and_writes_the_table(tmp_path, session_results, tiny_overrides,
                                                                    monkeypatch):
    """The CPU path of the bench (the one `--device cuda` takes on a GPU) on a tiny preset:
    every timed step is a call of Trainer.train_step, on consecutive steps of each trainer."""
    calls: dict[int, list[int]] = defaultdict(list)
    real = Trainer.train_step

    def counting(self, step):
        calls[id(self)].append(step)
        return real(self, step)

    monkeypatch.setattr(Trainer, "train_step", counting)
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


def test_each_section_is_written_as_it_ends_so_a_failure_keeps_the_earlier_ones(tmp_path, session_results,
                                                                              tiny_overrides, monkeypatch):
    def broken(self):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(Bench, "train_section", broken)
    with pytest.raises(RuntimeError):
        run_bench(options(tmp_path, session_results, tiny_overrides, sections=("peak", "train")))
    text = (tmp_path / "out" / "results.md").read_text()
    assert "## Peak matmul (1024^3, measured)" in text and "| fp32 |" in text
    assert "peak," in (tmp_path / "out" / "results.csv").read_text()


def test_llamagen_is_skipped_with_a_reason_when_its_code_is_absent(tmp_path):
    reason = llamagen_step(tmp_path / "LlamaGen", "gpt-b", 2, torch.device("cpu"), False)
    assert isinstance(reason, str) and "clone https://github.com/FoundationVision/LlamaGen" in reason
    assert llamagen_step(tmp_path, "tiny", 2, torch.device("cpu"), False).startswith("LlamaGen has no model")
