"""Tensor files: torch.save payloads that verify themselves, loaded without running pickled code."""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from mirai_lab.errors import CorruptFile, UserError
from mirai_lab.files.atomic import write_bytes

CHECKSUM_KEY = "mirai_lab_sha256"

def payload_digest(obj: Any) -> str:
    """sha256 over a nested payload of dicts, lists, tensors and plain values, in its stored order.

    torch's zip format does not verify its records, so a flipped bit in a tensor loads silently;
    this digest, stored beside the payload, makes every file `save_tensors` writes verify itself."""
    h = hashlib.sha256()

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)
            h.update(f"tensor{t.dtype}{tuple(value.shape)}".encode())
            if t.numel():
                h.update(t.view(torch.uint8).numpy())
        elif isinstance(value, dict):
            h.update(f"dict{len(value)}".encode())
            for key, item in value.items():
                h.update(repr(key).encode())
                walk(item)
        elif isinstance(value, list | tuple):
            h.update(f"{type(value).__name__}{len(value)}".encode())
            for item in value:
                walk(item)
        else:
            h.update(f"{type(value).__name__}:{value!r}".encode())

    walk(obj)
    return h.hexdigest()

def save_tensors(path: Path, obj: dict[str, Any]) -> None:
    """torch.save of a dict through a temporary file, with its `payload_digest` under CHECKSUM_KEY;
    the payload must be loadable with weights_only (tensors, containers, plain values)."""
    buf = io.BytesIO()
    torch.save({**obj, CHECKSUM_KEY: payload_digest(obj)}, buf)
    write_bytes(path, buf.getvalue())

def load_tensors(path: Path, checked: bool = False) -> Any:
    """Load a checkpoint or cache file without executing pickled code.

    A file carrying arbitrary pickled objects is refused by weights_only=True; the
    UnpicklingError is turned into a UserError so the user sees one line. A file written by
    `save_tensors` is verified against its digest (which is removed from the result); with
    `checked`, a file without one (not ours, or damaged) is corrupt too. Foreign files
    (LlamaGen or DINOv2 weights) carry no digest and load unchecked.
    """
    try:
        with warnings.catch_warnings():  # torch warns about a raw pickle's protocol before refusing it
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's text is several lines and suggests weights_only=False: say it in one line, without that advice
        text = str(exc)
        if "global" in text.lower():  # a pickled object beyond tensors and containers
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = f" ({found[1]})" if found else ""
            raise UserError(f"refusing to load {path}: it holds a pickled Python object{what}, not only tensors, "
                            "and unpickling it could run code") from None
        raise CorruptFile(f"{path} is unreadable or truncated: {_unpickler_reason(text)}") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CorruptFile(f"{path} is unreadable or truncated: {exc}") from exc
    if isinstance(blob, dict) and CHECKSUM_KEY in blob:
        stored = blob.pop(CHECKSUM_KEY)
        if stored != payload_digest(blob):
            raise CorruptFile(f"{path} fails its checksum (damaged after it was written)")
    elif checked:
        raise CorruptFile(f"{path} has no checksum: not a file this toolkit wrote")
    return blob

def _unpickler_reason(text: str) -> str:
    """What torch's weights-only unpickler objected to, without its advice (re-running with
    weights_only=False, which would execute whatever the file holds)."""
    found = re.search(r"WeightsUnpickler error:(.*?)(Check the documentation|$)", text, re.DOTALL)
    reason = " ".join((found[1] if found else "").split())
    return (reason or "not a tensor file")[:200]
