"""Results layout and atomic writes.

Every file a reader may open while a writer is killed is written to a temporary file in
the same directory and renamed over the target, so a reader sees the old file or the new
one, never half of one. Directory layout (DESIGN section 4):

    <results>/runs/<run_id>/{config.json,status.json,curve.csv,final.json,samples.png,checkpoint.pt}
    <results>/sweeps/<name>/manifest.json
    <results>/cache/<kind>-<hash>.<ext>     tokenizer, token codes, classifiers, encoders, features
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mirai_lab.errors import UserError

RESULTS_ENV = "MIRAI_LAB_RESULTS"


def results_root(explicit: str | Path | None = None) -> Path:
    """The results directory: explicit option, then $MIRAI_LAB_RESULTS, then ./results."""
    if explicit:
        return Path(explicit)
    return Path(os.environ.get(RESULTS_ENV, "results"))


def cache_dir(root: Path) -> Path:
    path = root / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_dir(root: Path, run_id: str) -> Path:
    return root / "runs" / run_id


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


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:

        raise UserError(f"could not write {path}: {exc.strerror or exc}; the previous version is kept") from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def cache_lock(path: Path) -> Iterator[None]:
    """Exclusive lock beside a cache file, so that parallel workers build it once: the
    second one waits, then finds the file and loads it."""

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def save_tensors(path: Path, obj: Any) -> None:
    """torch.save through a temporary file; the payload must be loadable with weights_only."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def load_tensors(path: Path) -> Any:
    """Load a checkpoint or cache file without executing pickled code.

    A file carrying arbitrary pickled objects is refused by weights_only=True; the
    UnpicklingError is turned into a UserError so the user sees one line.
    """


    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        globals_ = [ln.strip() for ln in str(exc).splitlines() if "global" in ln.lower()]
        if globals_:  # a pickled object beyond tensors and containers
            reason = globals_[0]
            raise UserError(f"refusing to load {path}: it carries pickled objects, not only tensors "
                            f"({reason})") from exc
        raise CorruptFile(f"{path} is unreadable or truncated: {exc}") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CorruptFile(f"{path} is unreadable or truncated: {exc}") from exc


class CorruptFile(Exception):
    """A cache or checkpoint that exists but cannot be read; callers rebuild or fall back."""
