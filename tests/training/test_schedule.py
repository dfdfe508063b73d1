"""The run's schedules with hand-computed values: the learning rate and the EMA decay warm-up."""

import math

import pytest
import torch

from mirai_lab.config import build_config
from mirai_lab.model.gpt import GPT, GPTShape
from mirai_lab.training.ema import update_ema
from mirai_lab.training.schedule import learning_rate


def lr_config(schedule: str, warmup: int, steps: int, lr: float = 0.8, min_lr_ratio: float = 0.25):
    return build_config(None, {"train.lr": lr, "train.lr_schedule": schedule, "train.warmup_steps": warmup,
                               "train.steps": steps, "train.min_lr_ratio": min_lr_ratio})


@pytest.mark.parametrize(("step", "expected"), [
    (0, 0.2), (1, 0.4), (2, 0.6), (3, 0.8),  # linear warm-up: lr * (step + 1) / 4
    (4, 0.8),  # decay starts at the peak (progress 0)
    (8, 0.65),  # progress 1/3: cos = 1/2 -> 0.8 * (0.25 + 0.75 * 0.75)
    (10, 0.5),  # progress 1/2: 0.8 * (0.25 + 0.75 * 0.5)
    (12, 0.35),  # progress 2/3: cos = -1/2 -> 0.8 * (0.25 + 0.75 * 0.25)
    (16, 0.2),  # the end: lr * min_lr_ratio
])
def test_cosine_with_warmup_and_floor(step, expected):
    assert learning_rate(lr_config("cosine", warmup=4, steps=16), step) == pytest.approx(expected, rel=1e-12)


def test_cosine_without_warmup_starts_at_the_peak():
    cfg = lr_config("cosine", warmup=0, steps=4, lr=1.0, min_lr_ratio=0.0)
    assert learning_rate(cfg, 0) == 1.0
    assert learning_rate(cfg, 1) == pytest.approx(0.5 + math.sqrt(2) / 4, rel=1e-12)  # (1 + cos(pi/4)) / 2
    assert learning_rate(cfg, 2) == pytest.approx(0.5, rel=1e-12)
    assert learning_rate(cfg, 4) == pytest.approx(0.0, abs=1e-15)


def test_constant_after_warmup():
    cfg = lr_config("constant", warmup=4, steps=16)
    assert [learning_rate(cfg, s) for s in (0, 1, 3, 4, 10, 16)] == pytest.approx([0.2, 0.4, 0.8, 0.8, 0.8, 0.8])
    assert learning_rate(lr_config("constant", warmup=0, steps=16), 0) == 0.8


TINY = GPTShape(vocab_size=4, num_classes=2, grid=(1, 2), n_layer=1, dim=4, n_head=1, ffn_hidden=8)


def filled(value: float) -> GPT:
    model = GPT(TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    return model


def values(model: GPT) -> set[float]:
    return {round(v, 6) for p in model.parameters() for v in p.detach().flatten().tolist()}


def test_ema_decay_warms_up_as_min_decay_and_1_plus_step_over_10_plus_step():
    ema = filled(0.0)
    update_ema(ema, filled(1.0), decay=0.999, step=0)  # d = min(0.999, 1/10) = 0.1: ema = 0.1*0 + 0.9*1
    assert values(ema) == {0.9}
    update_ema(ema, filled(-1.0), decay=0.999, step=1)  # d = 2/11: ema = (2/11)*0.9 + (9/11)*(-1) = -7.2/11
    assert values(ema) == {round(-7.2 / 11, 6)}


@pytest.mark.parametrize(("decay", "step", "expected"), [
    (0.999, 2, 0.75),  # d = 3/12 = 0.25 < decay
    (0.2, 2, 0.8),  # d = decay = 0.2 < 3/12
    (0.999, 10_000, 0.001),  # 10001/10010 > 0.999: the decay itself
])
def test_ema_decay_is_capped_by_the_configured_decay(decay, step, expected):
    ema, model = filled(0.0), filled(1.0)
    update_ema(ema, model, decay=decay, step=step)
    assert values(ema) == {expected}
    assert values(model) == {1.0}  # the trained model is only read
