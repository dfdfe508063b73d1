"""LlamaGen's own GPT step on the same device, when its code is present locally.

The code is read from an ignored folder (default third_party/LlamaGen, a clone of
https://github.com/FoundationVision/LlamaGen), never shipped or committed. Its step is
timed as its `autoregressive/train/train_c2i.py` takes it: bf16 autocast, the model's own
loss, gradient clipping at 1.0, AdamW (fused on CUDA) with LlamaGen's defaults, and
torch.compile when the bench compiles ours.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path

import torch

LLAMAGEN_DIR = Path("third_party/LlamaGen")
NAMES = {"gpt-b": "GPT-B", "gpt-l": "GPT-L", "gpt-xl": "GPT-XL"}


def llamagen_step(root: Path, preset: str, batch: int, device: torch.device, compile_: bool,
                  vocab: int = 16384, grid: int = 16, classes: int = 1000) -> Callable[[], None] | str:
    """A closure that takes one LlamaGen training step, or the reason there is none."""
    if preset not in NAMES:
        return f"LlamaGen has no model for preset {preset!r} (only {', '.join(NAMES)})"
    if not (root / "autoregressive" / "models" / "gpt.py").is_file():
        return (f"LlamaGen's code is not at {root} (clone https://github.com/FoundationVision/LlamaGen "
                "there to time its step side by side)")
    sys.path.insert(0, str(root.resolve()))  # its modules import each other from the repository root
    gpt = importlib.import_module("autoregressive.models.gpt")  # optional third-party code, present only locally
    torch.manual_seed(0)
    model = gpt.GPT_models[NAMES[preset]](vocab_size=vocab, block_size=grid * grid, num_classes=classes,
                                          cls_token_num=1, model_type="c2i", resid_dropout_p=0.1,
                                          ffn_dropout_p=0.1, token_dropout_p=0.1).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=5e-2, betas=(0.9, 0.95),
                            fused=device.type == "cuda")
    forward = torch.compile(model) if compile_ else model
    g = torch.Generator().manual_seed(0)
    z = torch.randint(0, vocab, (batch, grid * grid), generator=g).to(device)
    c = torch.randint(0, classes, (batch,), generator=g).to(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            _, loss = forward(cond_idx=c, idx=z[:, :-1], targets=z)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step
