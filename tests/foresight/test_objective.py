"""Foresight losses on hand-built tensors, schedules, and gradient flow."""

import copy
import math

import pytest
import torch

from mirai_lab.config import build_config
from mirai_lab.foresight.layout import build_layout
from mirai_lab.foresight.objective import ForesightHeads, masked_neg_cosine
from mirai_lab.foresight.schedule import lambda_scale
from mirai_lab.foresight.sources import FeatureTableSource, TargetSource, TeacherSource
from mirai_lab.model.gpt import GPT, GPTShape
from mirai_lab.training.build import Foresight
from mirai_lab.training.step import StepLoss


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


class UndetachedTeacherSource(TargetSource):
    """A broken Mirai-E source: runs the teacher with autograd on, as a source that forgot its
    `no_grad` would. The leak check must flag it, or a clean result of the check proves nothing."""

    def __init__(self, teacher: GPT, block: int) -> None:
        self.teacher, self.block, self.dim = teacher, block, teacher.shape.dim

    def targets(self, tokens, labels, index, crop=None):
        _, hidden = self.teacher(tokens, labels, hidden_blocks=(self.block,), stop_after=self.block)
        return hidden[self.block][:, 1:]


def teacher_leaks(source_class: type, teacher_requires_grad: bool, teacher_is_student: bool = False) -> list[str]:
    """One real training step (StepLoss with ForesightHeads, backward, an SGD step on every
    parameter the step owns) with an EMA teacher that is a drifted deep copy of the student
    (or, to prove the check, the student itself); returns each way in which the teacher or
    its targets took part in the student's gradient or update."""
    torch.manual_seed(0)
    student = GPT(SHAPE)
    teacher = student if teacher_is_student else copy.deepcopy(student).requires_grad_(teacher_requires_grad)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.1 * torch.randn_like(p))  # an EMA that has drifted from the student
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    source = source_class(teacher, 1)
    heads = heads_for({"foresight.source": "ema", "foresight.student_block": 2, "foresight.teacher_block": 1}, 16)
    step_loss = StepLoss(student, Foresight(heads, source, student_block=2))
    opt = torch.optim.SGD(step_loss.parameters(), lr=0.5)
    x = torch.randint(0, 20, (4, 9))
    y = torch.randint(0, 3, (4,))
    targets = source.targets(x, y, torch.arange(4))
    targets_before = targets.detach().clone()
    total, _, logs = step_loss(x, y, targets, step=0)
    total.backward()
    opt.step()
    assert set(logs) == {"align_loss_k0", "align_loss_k1", "align_loss_k2"}
    assert all(p.grad is not None for p in heads.parameters())  # the step trains the heads ...
    assert student.layers[0].attention.wqkv.weight.grad is not None  # ... and the student
    leaks = ["targets are part of the autograd graph"] if targets.requires_grad else []
    leaks += [f"gradient on teacher {n}" for n, p in teacher.named_parameters() if p.grad is not None]
    leaks += [f"teacher {k} changed" for k, v in teacher.state_dict().items() if not torch.equal(v, teacher_before[k])]
    if not torch.equal(source.targets(x, y, torch.arange(4)).detach(), targets_before):
        leaks.append("the step changed the targets")
    return leaks


@pytest.mark.parametrize("teacher_requires_grad", [False, True])  # as the trainer leaves it; a teacher left trainable
def test_teacher_gets_no_gradient_and_is_unchanged_by_a_training_step(teacher_requires_grad):
    assert teacher_leaks(TeacherSource, teacher_requires_grad) == []


def test_leak_check_flags_a_source_that_does_not_detach():
    leaks = teacher_leaks(UndetachedTeacherSource, teacher_requires_grad=True)
    assert leaks[0] == "targets are part of the autograd graph"
    assert "gradient on teacher layers.0.attention.wqkv.weight" in leaks
    assert not any(leak.endswith("changed") for leak in leaks)  # the optimizer does not own the teacher


def test_leak_check_flags_a_teacher_that_shares_the_student_weights():
    leaks = teacher_leaks(TeacherSource, teacher_requires_grad=True, teacher_is_student=True)
    assert "targets are part of the autograd graph" not in leaks  # the source itself still detaches
    assert "gradient on teacher layers.0.attention.wqkv.weight" in leaks
    assert "teacher layers.0.attention.wqkv.weight changed" in leaks
    assert "the step changed the targets" in leaks


def test_teacher_is_read_in_eval_mode_and_put_back_in_its_mode():
    torch.manual_seed(0)
    teacher = GPT(GPTShape(vocab_size=20, num_classes=3, grid=(3, 3), n_layer=2, dim=16, n_head=4, ffn_hidden=32,
                           resid_dropout=0.5))
    x = torch.randint(0, 20, (2, 9))
    y = torch.tensor([0, 1])
    source = TeacherSource(teacher.train(), block=2)
    a, b = source.targets(x, y, torch.arange(2)), source.targets(x, y, torch.arange(2))
    assert torch.equal(a, b)  # no dropout: the targets do not depend on the dropout stream
    assert teacher.training


def test_feature_table_targets_are_constants_even_for_a_table_that_requires_grad():
    feats = torch.randn(6, 9, 5, requires_grad=True)
    heads = heads_for({"foresight.source": "bidirectional", "foresight.k": 2, "foresight.student_block": 2,
                       "foresight.layout": "1d"}, 5)
    hidden = torch.randn(6, 9, 16, requires_grad=True)
    targets = FeatureTableSource(feats).targets(None, None, torch.arange(6))
    total, _ = heads(hidden, targets, step=0)
    grad_hidden, grad_feats = torch.autograd.grad(total, (hidden, feats), allow_unused=True)
    assert grad_hidden is not None and grad_hidden.abs().sum() > 0
    assert grad_feats is None and not targets.requires_grad


def test_total_is_the_coefficient_weighted_sum_of_the_head_losses():
    feats = torch.randn(6, 9, 5)
    heads = heads_for({"foresight.source": "bidirectional", "foresight.k": 2, "foresight.head_coefs": "[2, 0.5]",
                       "foresight.student_block": 2, "foresight.layout": "1d"}, 5)
    hidden = torch.randn(6, 9, 16)
    total, logs = heads(hidden, FeatureTableSource(feats).targets(None, None, torch.arange(6)), step=3)
    assert total.item() == pytest.approx(2 * logs["align_loss_k0"].item() + 0.5 * logs["align_loss_k1"].item(),
                                         rel=1e-6)


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
