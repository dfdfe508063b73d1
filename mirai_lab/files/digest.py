"""Short content digests: the keys of run ids and caches."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch


def content_hash(obj: Any, n: int = 12) -> str:
    """Stable short hash of a JSON-able object (dict keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]

def tensor_hash(*tensors: torch.Tensor, n: int = 12) -> str:
    """Hash of tensor contents, used to key caches by the data they were built from."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().contiguous().cpu()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:n]
