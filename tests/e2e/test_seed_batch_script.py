"""benchmarks/seed_batch.py: the stacked arm computes what the one-seed arm computes, seed by seed.

The bench's speed ratio means something only if both arms do the same arithmetic: the stacked
models' gradients and updates must equal the separate models' up to float reassociation, and
seeds must stay apart (no parameter shared between them)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from mirai_lab.config import TrainConfig
from mirai_lab.model.gpt import GPT, GPTShape

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "seed_batch.py"
SHAPE = GPTShape(vocab_size=16, num_classes=3, grid=(3, 3), n_layer=2, dim=16, n_head=2, ffn_hidden=24,
                 token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0, class_dropout=0.0)


def load_script():
    spec = importlib.util.spec_from_file_location("seed_batch", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def models(n: int) -> list[GPT]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        m = GPT(SHAPE)
        torch.nn.init.normal_(m.output.weight, std=0.02)  # zero-initialised: no gradient below it otherwise
        out.append(m.train())
    return out


def test_stacked_gradients_and_updates_equal_one_seed_runs():
    sb = load_script()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 16, (4, 9), generator=g), torch.randint(0, 3, (4,), generator=g)
    t = TrainConfig(lr=2e-3, grad_clip=0.5)  # a clip that binds at this scale's gradients
    one, stacked = sb.OneSeed(models(3), t), sb.Stacked(models(3), t)
    g_one, g_stacked = one.grads(x, y), stacked.grads(x, y)
    for a, b in zip(g_one, g_stacked, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(g_one[0]["output.weight"], g_one[1]["output.weight"])  # the seeds differ
    for _ in range(3):
        one.step(x, y)
        stacked.step(x, y)
    for i, m in enumerate(one.models):
        for k, p in m.named_parameters():
            torch.testing.assert_close(stacked.params[k][i].detach(), p.detach(), rtol=1e-4, atol=1e-6)
