"""The GPT: LlamaGen names and shapes, KV cache equals recomputation, checkpoint layout."""

import pytest
import torch

from mirai_lab.errors import UserError
from mirai_lab.files.tensors import save_tensors
from mirai_lab.foresight.sources import load_gpt_weights
from mirai_lab.model.gpt import GPT, Dropout, GPTShape, apply_rope, rope_2d
from mirai_lab.model.sample import filter_logits, guided_logits, sample_tokens

SMALL = GPTShape(vocab_size=40, num_classes=5, grid=(4, 4), n_layer=2, dim=32, n_head=4, ffn_hidden=64)


def randomized(shape: GPTShape = SMALL, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(shape)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)  # the zero-initialised head would make every logit equal
    return model.eval()


def test_gpt_b_has_llamagen_names_shapes_and_111m_params():
    model = GPT(GPTShape(vocab_size=16384, num_classes=1000, grid=(16, 16), n_layer=12, dim=768, n_head=12,
                         ffn_hidden=2048))
    sd = model.state_dict()
    expected = {"tok_embeddings.weight": (16384, 768), "cls_embedding.embedding_table.weight": (1001, 768),
                "norm.weight": (768,), "output.weight": (16384, 768)}
    for i in range(12):
        expected |= {f"layers.{i}.attention.wqkv.weight": (2304, 768), f"layers.{i}.attention.wo.weight": (768, 768),
                     f"layers.{i}.feed_forward.w1.weight": (2048, 768),
                     f"layers.{i}.feed_forward.w3.weight": (2048, 768),
                     f"layers.{i}.feed_forward.w2.weight": (768, 2048),
                     f"layers.{i}.attention_norm.weight": (768,), f"layers.{i}.ffn_norm.weight": (768,)}
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert model.n_params() == 110_888_448  # LlamaGen reports GPT-B as 111M
    assert float(model.output.weight.detach().abs().max()) == 0.0


def test_rope_class_position_is_zero_and_grid_is_2d():
    table = rope_2d((3, 5), head_dim=8)
    assert table.shape == (16, 4, 2)
    assert float(table[0].abs().max()) == 0.0
    # cell (r, c) = (1, 2): first half of pairs rotate by row, second half by column
    cell = 1 + 1 * 5 + 2
    assert torch.allclose(table[cell, 0], torch.tensor([torch.cos(torch.tensor(1.0)), torch.sin(torch.tensor(1.0))]))
    assert torch.allclose(table[cell, 2], torch.tensor([torch.cos(torch.tensor(2.0)), torch.sin(torch.tensor(2.0))]))


def test_rope_rotates_adjacent_pairs_by_the_table_angles():
    table = rope_2d((3, 5), head_dim=8)  # (16, 4, 2) cos/sin
    x = torch.randn(2, 16, 3, 8)  # (B, T, heads, D)
    out = apply_rope(x, torch.view_as_complex(table))
    cos, sin = table[None, :, None, :, 0], table[None, :, None, :, 1]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    assert torch.allclose(out[..., 0::2], x0 * cos - x1 * sin, atol=1e-6)
    assert torch.allclose(out[..., 1::2], x1 * cos + x0 * sin, atol=1e-6)
    assert torch.equal(out[:, 0], torch.zeros_like(out[:, 0]))  # the class position: zero factors
    # queries and keys stacked on an extra axis rotate exactly as when rotated one by one
    qk = torch.randn(2, 16, 2, 3, 8)
    both = apply_rope(qk, torch.view_as_complex(table))
    assert torch.equal(both[:, :, 1], apply_rope(qk[:, :, 1], torch.view_as_complex(table)))


def test_dropout_quantised_rate_exact_scale_and_identity_in_eval():
    d = Dropout(0.1)
    assert (d.drop_count, d.threshold) == (6554, 6554 - 32768)
    assert d.scale == 65536 / (65536 - 6554)
    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = d.train()(x)
    kept = y != 0
    assert torch.equal(y[kept], torch.full_like(y[kept], d.scale))  # survivors are scaled exactly
    dropped = 1 - kept.float().mean().item()
    assert abs(dropped - 6554 / 65536) < 0.003  # ~4.5 standard errors at n = 400,000
    assert abs(y.mean().item() - 1.0) < 0.005  # unbiased
    assert torch.equal(d.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    torch.manual_seed(1)
    a = d.train()(x)
    torch.manual_seed(1)
    assert torch.equal(d(x), a)  # masks come from torch's default generator: reseeding repeats them


def test_kv_cache_logits_equal_full_recompute():
    model = randomized()
    tokens = torch.randint(0, 40, (3, 16))
    labels = torch.tensor([0, 3, 5])  # 5 = the null class
    full, _ = model(tokens[:, :-1], labels)
    cache = model.new_cache(3)
    step = [model.step_logits(model.cls_embedding(labels, train=False)[:, None], cache)]
    for i in range(15):
        step.append(model.step_logits(model.tok_embeddings(tokens[:, i])[:, None], cache))
    assert torch.allclose(torch.stack(step, 1), full, atol=1e-5)


def test_cached_sampling_equals_recompute_sampling_with_cfg():
    model = randomized()
    labels = torch.tensor([0, 1, 2, 4])
    a = sample_tokens(model, labels, cfg_scale=2.0, top_k=10, generator=torch.Generator().manual_seed(3))
    b = sample_tokens(model, labels, cfg_scale=2.0, top_k=10, generator=torch.Generator().manual_seed(3),
                      use_cache=False)
    assert torch.equal(a, b) and a.shape == (4, 16)


# [cond; uncond] rows with dyadic values, so every expected number below is exact in float32
COND = [[1.0, 2.0, -1.0], [0.0, 0.5, 0.25]]
UNCOND = [[0.5, 3.0, 1.0], [0.0, -0.5, 0.75]]


@pytest.mark.parametrize(("scale", "expected"), [
    (1.5, [[1.25, 1.5, -2.0], [0.0, 1.0, 0.0]]),  # uncond + 1.5 * (cond - uncond)
    (2.0, [[1.5, 1.0, -3.0], [0.0, 1.5, -0.25]]),  # = 2 cond - uncond
    (4.0, [[2.5, -1.0, -7.0], [0.0, 3.5, -1.25]]),
])
def test_guided_logits_exact_values(scale, expected):
    assert guided_logits(torch.tensor(COND + UNCOND), scale).tolist() == expected


def test_guided_logits_at_scale_one_are_the_conditional_logits():
    assert guided_logits(torch.tensor(COND + UNCOND), 1.0).tolist() == COND


def greedy_reference(model: GPT, labels: torch.Tensor, scale: float) -> torch.Tensor:
    """Greedy decoding written out: full recompute, the null class as the unconditional
    branch, and guidance only above scale 1."""
    null = torch.full_like(labels, model.shape.num_classes)
    out = torch.empty(labels.shape[0], 0, dtype=torch.long)
    for _ in range(model.shape.n_tokens):
        cond = model(out, labels)[0][:, -1]
        mix = cond
        if scale > 1:
            uncond = model(out, null)[0][:, -1]
            mix = uncond + scale * (cond - uncond)
        out = torch.cat([out, mix.argmax(-1, keepdim=True)], dim=1)
    return out


def test_greedy_sampling_applies_guidance_to_the_cond_and_null_class_branches():
    model = randomized()
    labels = torch.tensor([0, 1, 2, 4])
    guided = greedy_reference(model, labels, 3.0)
    unguided = greedy_reference(model, labels, 1.0)
    assert not torch.equal(guided, unguided)  # guidance changes the samples, so the checks below can fail
    for use_cache in (True, False):
        g = torch.Generator().manual_seed(0)
        assert torch.equal(sample_tokens(model, labels, cfg_scale=3.0, top_k=1, generator=g, use_cache=use_cache),
                           guided)
        assert torch.equal(sample_tokens(model, labels, cfg_scale=1.0, top_k=1, generator=g, use_cache=use_cache),
                           unguided)


def test_hidden_states_and_early_stop():
    model = randomized()
    tokens = torch.randint(0, 40, (2, 15))
    labels = torch.tensor([1, 2])
    logits, hidden = model(tokens, labels, hidden_blocks=(1, 2))
    none, early = model(tokens, labels, hidden_blocks=(1,), stop_after=1)
    assert none is None and torch.equal(early[1], hidden[1])
    assert torch.allclose(model.output(model.norm(hidden[2])), logits, atol=1e-6)


def test_filter_logits():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[True, False, False, True]]
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = ~torch.isinf(filter_logits(probs, top_p=0.8))
    assert kept.tolist() == [[True, True, False, False]]


def test_llamagen_checkpoint_layout_loads(tmp_path):
    model = randomized(seed=1)
    path = tmp_path / "llamagen.pt"
    save_tensors(path, {"model": model.state_dict()})
    other = GPT(SMALL)
    load_gpt_weights(other, path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values(),
                                                  strict=True))


def test_checkpoint_missing_or_mismatched_key_is_named(tmp_path):
    sd = randomized().state_dict()
    missing = dict(sd)
    missing.pop("norm.weight")
    save_tensors(tmp_path / "a.pt", {"model": missing})
    with pytest.raises(UserError, match="missing key 'norm.weight'"):
        load_gpt_weights(GPT(SMALL), tmp_path / "a.pt")
    bad = dict(sd)
    bad["output.weight"] = torch.zeros(7, 32)
    save_tensors(tmp_path / "b.pt", {"model": bad})
    with pytest.raises(UserError, match="key 'output.weight' has shape"):
        load_gpt_weights(GPT(SMALL), tmp_path / "b.pt")


def test_pickle_payload_checkpoint_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, path)
    with pytest.raises(UserError, match="refusing to load"):
        load_gpt_weights(GPT(SMALL), path)
