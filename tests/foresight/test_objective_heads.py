"""The grouped foresight heads compute what K separate projectors computed before them.

`ReferenceHeads` below is the previous implementation, kept here as the reference: one
nn.Sequential projector per head, the student states sliced to the aligned positions, the
targets gathered per head, torch's cosine_similarity and a masked mean per head. The fast
heads must give the same losses, per-head logs and gradients within 1e-6 (float rounding)
and the same initial weights from the same seed, for alignment and for mtp."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mirai_lab.config import build_config
from mirai_lab.foresight.layout import build_layout, student_positions
from mirai_lab.foresight.objective import ForesightHeads
from mirai_lab.foresight.sources import FeatureTableSource, TeacherSource
from mirai_lab.model.gpt import GPT, GPTShape

GRID = (4, 5)
N = GRID[0] * GRID[1]
D, P, VOCAB = 16, 12, 24


class ReferenceHeads(nn.Module):
    """The per-head implementation the grouped one replaced."""

    def __init__(self, f, layout, d_target: int) -> None:
        super().__init__()
        self.mtp = f.injection == "mtp"
        out = VOCAB if self.mtp else d_target
        self.heads = nn.ModuleList(nn.Sequential(nn.Linear(D, P), nn.SiLU(), nn.Linear(P, P), nn.SiLU(),
                                                 nn.Linear(P, out)) for _ in range(f.k))
        positions, base = student_positions("predict" if self.mtp else f.align_index, N)
        self.positions = positions
        self.cells, self.valid = layout.cells[base], layout.valid[base]
        self.coefs = list(f.head_coefs) if f.head_coefs else [f.coef] * f.k

    def forward(self, hidden, targets, scale: float):
        h = hidden[:, self.positions]
        total, logs = torch.zeros(()), []
        for k, head in enumerate(self.heads):
            valid = self.valid[:, k].expand(h.shape[0], -1).float()
            if self.mtp:
                per = F.cross_entropy(head(h).flatten(0, 1), targets[:, self.cells[:, k]].flatten(),
                                      reduction="none").view_as(valid)
            else:
                per = -F.cosine_similarity(head(h), targets[:, self.cells[:, k]], dim=-1)
            loss = (per * valid).sum() / valid.sum().clamp(min=1.0)
            logs.append(loss.detach())
            total = total + self.coefs[k] * scale * loss
        return total, logs


def config(**over):
    base = {"model.n_layer": 3, "model.dim": D, "model.n_head": 4, "foresight.source": "bidirectional",
            "foresight.student_block": 2, "foresight.projector_dim": P}
    return build_config(None, base | {f"foresight.{k}": v for k, v in over.items()}).foresight


CASES = {
    "2d-k3-read": {"layout": "2d", "k": 3},
    "1d-k4-predict": {"layout": "1d", "k": 4, "align_index": "predict"},
    "2d-wide-k5-coefs": {"layout": "2d-wide", "k": 5, "head_coefs": "[2, 1, 0.5, 0, 3]"},
    "2d-k1-step-schedule": {"layout": "2d", "k": 1, "schedule": "step", "step_factor": 0.25},
    "mtp-2d-k3": {"layout": "2d", "k": 3, "injection": "mtp", "source": "none"},
}


@pytest.mark.parametrize("case", CASES)
def test_grouped_heads_match_the_per_head_reference(case):
    f = config(**CASES[case])
    layout = build_layout(f.layout, f.k, GRID)
    torch.manual_seed(3)
    fast = ForesightHeads(f, layout, D, 7, N, total_steps=10, vocab_size=VOCAB)
    torch.manual_seed(3)
    ref = ReferenceHeads(f, layout, 7)
    # the same draws in the same order: head by head, weight then bias, layer by layer
    for k, seq in enumerate(ref.heads):
        rows = slice(k * P, (k + 1) * P)
        assert torch.equal(fast.w1[rows], seq[0].weight) and torch.equal(fast.b1[rows], seq[0].bias)
        assert torch.equal(fast.w2[k], seq[2].weight) and torch.equal(fast.b2[rows], seq[2].bias)
        out = seq[4].weight.shape[0]
        assert torch.equal(fast.w3[k], seq[4].weight) and torch.equal(fast.b3[k * out : (k + 1) * out], seq[4].bias)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, N, D, generator=g, requires_grad=True)
    targets = torch.randint(0, VOCAB, (6, N), generator=g) if f.injection == "mtp" else \
        torch.randn(6, N, 7, generator=g)
    step = 7  # past step_at for the step schedule
    total, logs = fast(hidden, targets, step)
    ref_total, ref_logs = ref(hidden, targets, fast.scale(step))
    assert total.item() == pytest.approx(ref_total.item(), abs=1e-6)
    name = "mtp_loss" if f.injection == "mtp" else "align_loss"
    assert list(logs) == [f"{name}_k{k}" for k in range(f.k)]
    for k in range(f.k):
        assert logs[f"{name}_k{k}"].item() == pytest.approx(ref_logs[k].item(), abs=1e-6)
    grads = torch.autograd.grad(total, [hidden, fast.w1, fast.w2, fast.w3])
    layers = [[s[i].weight for s in ref.heads] for i in (0, 2, 4)]
    ref_grads = torch.autograd.grad(ref_total, [hidden, *layers[0], *layers[1], *layers[2]])
    k = f.k
    assert torch.allclose(grads[0], ref_grads[0], atol=1e-6)
    assert torch.allclose(grads[1], torch.cat(ref_grads[1 : 1 + k]), atol=1e-6)
    assert torch.allclose(grads[2], torch.stack(ref_grads[1 + k : 1 + 2 * k]), atol=1e-6)
    assert torch.allclose(grads[3], torch.stack(ref_grads[1 + 2 * k :]), atol=1e-6)


def test_stacked_biases_are_not_weight_decayed_like_the_per_head_ones():
    fast = ForesightHeads(config(k=3), build_layout("2d", 3, GRID), D, 7, N, total_steps=10, vocab_size=VOCAB)
    assert {n: p.ndim for n, p in fast.named_parameters()} == {"w1": 2, "b1": 1, "w2": 3, "b2": 1, "w3": 3, "b3": 1}


def test_a_head_with_no_valid_target_in_the_batch_contributes_zero_not_nan():
    f = config(layout="2d", k=3)
    fast = ForesightHeads(f, build_layout("2d", 3, GRID), D, 7, N, total_steps=10, vocab_size=VOCAB)
    fast.valid[2] = False  # as if head 2 had no target on this grid
    total, logs = fast(torch.randn(2, N, D), torch.randn(2, N, 7), 0)
    assert logs["align_loss_k2"].item() == 0.0 and torch.isfinite(total)


def test_teacher_targets_equal_a_plain_no_grad_forward_and_are_constants():
    s = GPTShape(vocab_size=VOCAB, num_classes=3, grid=GRID, n_layer=3, dim=D, n_head=4, ffn_hidden=32)
    torch.manual_seed(0)
    teacher = GPT(s).train()
    x, y = torch.randint(0, VOCAB, (2, N)), torch.tensor([0, 2])
    got = TeacherSource(teacher, block=2).targets(x, y, torch.arange(2))
    teacher.eval()
    with torch.no_grad():
        _, hidden = teacher(x, y, hidden_blocks=(1, 2, 3))
    assert torch.equal(got, hidden[2][:, 1:]) and not got.requires_grad


def test_feature_table_lookup_is_the_indexed_rows_in_fp32():
    table = torch.randn(5, N, 7).half()
    idx = torch.tensor([4, 0, 4])
    got = FeatureTableSource(table).targets(None, None, idx)
    assert got.dtype == torch.float32 and torch.equal(got, table[idx].float())
