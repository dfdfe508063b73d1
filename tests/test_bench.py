"""Benchmark arithmetic: paired ratios, the FLOP count, the plain-eager reference model."""

import subprocess
import sys

import torch

from mirai_lab.bench import paired_ratio, train_flops, use_plain_dropout
from mirai_lab.model.gpt import GPT, Dropout, GPTShape


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


def test_bench_without_presets_exits_2_with_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "bench-out"
    proc = subprocess.run([sys.executable, "-m", "mirai_lab", "bench", "--presets", ",", "--out", str(out)],
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2
    assert lines == ["error: --presets ',': expected at least one preset name"]
    assert not out.exists()
