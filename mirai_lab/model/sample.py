"""Class-conditional sampling: KV cache, classifier-free guidance, temperature, top-k/top-p.

CFG follows LlamaGen (autoregressive/models/generate.py in FoundationVision/LlamaGen): the
[cond; null] batch and the guided mix are used only for a scale above 1.

Sampling draws from its own `torch.Generator`, so evaluating in the middle of training
never moves the training RNG (exact resume depends on that).
"""

from __future__ import annotations

import torch

from mirai_lab.errors import UserError
from mirai_lab.model.gpt import GPT


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask everything outside the top-k and outside the smallest set with mass >= top_p."""
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p (the first always stays)
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def guided_logits(logits: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Batch is [conditional; unconditional]: uncond + scale * (cond - uncond)."""
    cond, uncond = logits.chunk(2)
    return uncond + cfg_scale * (cond - uncond)


@torch.no_grad()
def sample_tokens(
    model: GPT,
    labels: torch.Tensor,
    cfg_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Draw (B, N) token grids. `use_cache=False` recomputes the whole prefix each step
    (the reference the cache is tested and benchmarked against).

    Guidance as in LlamaGen's generate(): applied only when cfg_scale > 1; a scale <= 1
    samples the conditional model alone. A model without a null-class row cannot be guided."""
    guided = cfg_scale > 1.0
    if guided and not model.cls_embedding.null_row:
        raise UserError(f"cfg scale {cfg_scale}: this model has no null-class row (trained without class "
                        "dropout), so it cannot be guided; expected a scale <= 1 (--cfg 1)")
    was_training = model.training
    model.eval()
    n = model.shape.n_tokens
    cond = torch.cat([labels, torch.full_like(labels, model.shape.num_classes)]) if guided else labels
    out = torch.empty(labels.shape[0], n, dtype=torch.long, device=labels.device)
    cache = model.new_cache(cond.shape[0]) if use_cache else None
    next_input = model.cls_embedding(cond, train=False)[:, None]
    for i in range(n):
        if cache is not None:
            logits = model.step_logits(next_input, cache)
        else:
            toks = torch.cat([out[:, :i]] * 2) if guided else out[:, :i]
            logits = model(toks, cond)[0][:, -1]
        if guided:
            logits = guided_logits(logits, cfg_scale)
        logits = filter_logits(logits / temperature, top_k, top_p)
        token = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
        out[:, i] = token
        tok_in = torch.cat([token, token]) if guided else token
        next_input = model.tok_embeddings(tok_in)[:, None]
    model.train(was_training)
    return out
