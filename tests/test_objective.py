"""Foresight losses on hand-built tensors, schedules, and gradient flow."""

import math

import pytest
import torch

from mirai_lab.config import build_config
from mirai_lab.foresight.layout import build_layout
from mirai_lab.foresight.objective import ForesightHeads, masked_neg_cosine
from mirai_lab.foresight.schedule import lambda_scale
from mirai_lab.foresight.sources import FeatureTableSource, TeacherSource
from mirai_lab.model.gpt import GPT, GPTShape


def test_identical_vectors_give_minus_one_orthogonal_zero():
    a = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 1.0, 0.0]]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    assert masked_neg_cosine(a, a * 3.0, valid).item() == pytest.approx(-1.0)
    b = torch.tensor([[[-2.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])
    assert masked_neg_cosine(a, b, valid).item() == pytest.approx(0.0, abs=1e-7)


def test_masked_positions_do_not_count():
    pred = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]])
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    valid = torch.tensor([[True, True, False]])
    assert masked_neg_cosine(pred, target, valid).item() == pytest.approx(-0.5)  # (-1 + 0) / 2


def test_schedules():
    assert lambda_scale("constant", 0, 100) == 1.0
    assert lambda_scale("delayed", 9, 100, warmup=10) == 0.0
    assert lambda_scale("delayed", 10, 100, warmup=10) == 1.0
    assert lambda_scale("step", 49, 100, step_at=0.5, step_factor=0.5) == 1.0
    assert lambda_scale("step", 50, 100, step_at=0.5, step_factor=0.5) == 0.5
    assert lambda_scale("step", 5, 100, warmup=10) == 0.0
    assert lambda_scale("cosine", 10, 110, warmup=10) == 1.0
    assert lambda_scale("cosine", 60, 110, warmup=10) == pytest.approx(0.5)
    assert lambda_scale("cosine", 110, 110, warmup=10) == pytest.approx(0.0, abs=1e-12)
    assert lambda_scale("cosine", 35, 110, warmup=10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


SHAPE = GPTShape(vocab_size=20, num_classes=3, grid=(3, 3), n_layer=3, dim=16, n_head=4, ffn_hidden=32,
                 token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0, class_dropout=0.0)


def heads_for(overrides: dict, d_target: int) -> ForesightHeads:
    cfg = build_config(None, {"model.n_layer": 3, "model.dim": 16, "model.n_head": 4, **overrides})
    layout = build_layout(cfg.foresight.layout, cfg.foresight.k, SHAPE.grid)
    return ForesightHeads(cfg.foresight, layout, 16, d_target, 9, total_steps=10, vocab_size=20)


@pytest.mark.parametrize("source", ["ema", "static"])
def test_gradients_reach_student_and_projector_never_the_teacher(source):
    torch.manual_seed(0)
    student, teacher = GPT(SHAPE), GPT(SHAPE)
    teacher.requires_grad_(False)
    heads = heads_for({"foresight.source": source, "foresight.static_checkpoint": "x",
                       "foresight.student_block": 2, "foresight.teacher_block": 1}, 16)
    src = TeacherSource(teacher, block=1)
    x = torch.randint(0, 20, (4, 9))
    y = torch.randint(0, 3, (4,))
    _, hidden = student(x[:, :-1], y, hidden_blocks=(2,))
    loss, logs = heads(hidden[2], src.targets(x, y, torch.arange(4)), step=0)
    loss.backward()
    assert set(logs) == {"align_loss_k0", "align_loss_k1", "align_loss_k2"}
    assert all(p.grad is not None for p in heads.parameters())
    assert student.layers[0].attention.wqkv.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    assert teacher.training  # the teacher was put back in its mode after the no-grad pass


def test_encoder_features_get_no_gradient_and_total_is_weighted_sum():
    feats = torch.randn(6, 9, 5, requires_grad=False)
    heads = heads_for({"foresight.source": "bidirectional", "foresight.k": 2, "foresight.head_coefs": "[2, 0.5]",
                       "foresight.student_block": 2, "foresight.layout": "1d"}, 5)
    hidden = torch.randn(6, 9, 16, requires_grad=True)
    src = FeatureTableSource(feats)
    total, logs = heads(hidden, src.targets(None, None, torch.arange(6)), step=3)
    assert total.item() == pytest.approx(2 * logs["align_loss_k0"].item() + 0.5 * logs["align_loss_k1"].item(),
                                         rel=1e-6)
    total.backward()
    assert hidden.grad is not None and feats.grad is None


def test_teacher_target_of_cell_m_has_read_x_m():
    torch.manual_seed(1)
    teacher = GPT(SHAPE)
    src = TeacherSource(teacher, block=1)
    x = torch.randint(0, 20, (2, 9))
    y = torch.tensor([0, 1])
    t = src.targets(x, y, torch.arange(2))
    assert t.shape == (2, 9, 16)
    x2 = x.clone()
    x2[:, 4] = (x2[:, 4] + 1) % 20  # change cell 4: targets of cells < 4 stay, cell 4 changes
    t2 = src.targets(x2, y, torch.arange(2))
    assert torch.allclose(t[:, :4], t2[:, :4]) and not torch.allclose(t[:, 4], t2[:, 4])


def test_mtp_heads_predict_layout_tokens():
    heads = heads_for({"foresight.injection": "mtp", "foresight.k": 3, "foresight.student_block": 2}, 16)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    x = torch.randint(0, 20, (2, 9))
    total, logs = heads(hidden, x, step=0)
    assert set(logs) == {"mtp_loss_k0", "mtp_loss_k1", "mtp_loss_k2"}
    # uniform-ish logits at init: cross-entropy near log(20)
    assert 1.5 < logs["mtp_loss_k0"].item() < 5.0
    total.backward()
    assert hidden.grad is not None
