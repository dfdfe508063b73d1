"""Parameter groups of AdamW as LlamaGen sets them."""

from __future__ import annotations

from typing import Any

import torch


def param_groups(modules: list[torch.nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and embeddings (ndim >= 2), none on norms and biases."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
