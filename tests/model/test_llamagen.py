"""LlamaGen artifacts built in the test: a training checkpoint (with argparse args), a model
without the null-class row, CFG as LlamaGen applies it, DINOv2 input resizing as the official code."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

from mirai_lab.errors import UserError
from mirai_lab.foresight.dinov2 import resize_crops
from mirai_lab.foresight.sources import load_gpt_weights
from mirai_lab.model.gpt import GPT, GPTShape
from mirai_lab.model.sample import sample_tokens

SHAPE = GPTShape(vocab_size=16, num_classes=3, grid=(2, 2), n_layer=2, dim=32, n_head=2, ffn_hidden=64)


class Payload:
    """Any class but argparse.Namespace: its unpickling could run code, so it must be refused."""


def trained_model(seed: int, shape: GPTShape = SHAPE) -> GPT:
    torch.manual_seed(seed)
    model = GPT(shape)
    with torch.no_grad():
        model.output.weight.normal_(0, 0.5)  # a zero head samples uniformly: give the logits something to say
    return model


def test_a_llamagen_training_checkpoint_loads(tmp_path):
    model = trained_model(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 1]))[0].sum().backward()
    opt.step()
    args = argparse.Namespace(gpt_model="GPT-B", image_size=256, class_dropout_prob=0.1, lr=1e-4, epochs=300,
                              mixed_precision="bf16", vq_ckpt=None, results_dir="results")
    path = tmp_path / "0050000.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "steps": 50000, "args": args}, path)
    fresh = GPT(SHAPE)
    load_gpt_weights(fresh, path)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values(),
                                                 strict=True))


def test_arbitrary_pickled_objects_stay_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": trained_model(0).state_dict(), "args": Payload()}, path)
    with pytest.raises(UserError, match=r"refusing to load .*evil\.pt"):
        load_gpt_weights(GPT(SHAPE), path)


def test_a_model_without_the_null_class_row_loads_and_refuses_cfg(tmp_path):
    source = trained_model(1)
    source.drop_null_class()  # LlamaGen with class_dropout_prob=0: the table has num_classes rows
    assert source.cls_embedding.embedding_table.weight.shape == (3, 32)
    path = tmp_path / "no-null.pt"
    torch.save({"model": source.state_dict()}, path)
    model = GPT(SHAPE)
    load_gpt_weights(model, path)
    assert not model.cls_embedding.null_row
    assert torch.equal(model.cls_embedding.embedding_table.weight, source.cls_embedding.embedding_table.weight)
    labels = torch.tensor([0, 1, 2])
    with pytest.raises(UserError, match=r"cfg scale 2.0: this model has no null-class row .* expected a scale <= 1"):
        sample_tokens(model, labels, cfg_scale=2.0)
    out = sample_tokens(model, labels, cfg_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 4)
    model.train()
    logits, _ = model(torch.zeros(3, 3, dtype=torch.long), labels)  # training never draws the missing null row
    assert logits.shape == (3, 4, 16)


def test_cfg_applies_only_above_one_as_in_llamagen():
    model = trained_model(2)
    labels = torch.tensor([0, 1, 2, 0])

    def draw(scale: float) -> torch.Tensor:
        return sample_tokens(model, labels, cfg_scale=scale, generator=torch.Generator().manual_seed(5))

    plain = draw(1.0)
    assert torch.equal(draw(0.5), plain) and torch.equal(draw(0.0), plain)  # <= 1: the conditional model alone
    guided = [draw(4.0) for _ in range(2)]
    assert torch.equal(guided[0], guided[1]) and not torch.equal(guided[0], plain)


def test_dinov2_inputs_are_resized_as_the_official_code():
    torch.manual_seed(0)
    crops = torch.rand(2, 3, 32, 32)
    out = resize_crops(crops, 28)
    assert torch.equal(out, F.interpolate(crops, size=(28, 28), mode="bicubic", align_corners=False))
    assert not torch.allclose(out, F.interpolate(crops, size=(28, 28), mode="bicubic", antialias=True))
    assert resize_crops(out, 28) is out  # crops already at the input size (the PIL path) pass through
