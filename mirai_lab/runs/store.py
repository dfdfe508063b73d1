"""Results layout and atomic writes.

Every file a reader may open while a writer is killed is written to a temporary file in
the same directory and renamed over the target, so a reader sees the old file or the new
one, never half of one. Directory layout (docs/design.md, "Results layout"):

    <results>/runs/<run_id>/{config.json,status.json,curve.csv,final.json,samples.png,checkpoint.pt}
    <results>/sweeps/<name>/manifest.json
    <results>/cache/<kind>-<hash>.<ext>     tokenizer, token codes, classifiers, encoders, features
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import re
import socket
import stat
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from mirai_lab.errors import UserError

RESULTS_ENV = "MIRAI_LAB_RESULTS"
PSEUDO_FILE_SYSTEMS = ("/proc", "/sys", "/dev")  # kernel interfaces, never a place for results
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]{0,199}")


def _current_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; restored at once
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_current_umask()  # what open() gives; mkstemp's 0600 would lock a shared group out


def results_root(explicit: str | Path | None = None) -> Path:
    """The results directory: explicit option, then $MIRAI_LAB_RESULTS, then ./results.

    Checked before anything is written, so that an unusable one is one line, not a traceback
    halfway through a run."""
    root = Path(explicit) if explicit else Path(os.environ.get(RESULTS_ENV) or "results")
    check_results_dir(root)
    return root


def check_results_dir(root: Path) -> None:
    """Raise UserError unless `root` is, or can be created as, a writable directory."""
    where = f"results directory {str(root)!r}"
    resolved = root.resolve()
    for pseudo in map(Path, PSEUDO_FILE_SYSTEMS):
        if resolved == pseudo or pseudo in resolved.parents:
            raise UserError(f"{where} is inside {pseudo}, a kernel file system: expected an ordinary directory")
    existing = resolved
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == resolved else f"lies under the file {str(existing)!r}"
        raise UserError(f"{where} {what}: expected a directory")
    writable_bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    # the mode bits too: root passes os.access everywhere, but a folder nobody may write is read-only on purpose
    if (os.statvfs(existing).f_flag & os.ST_RDONLY or not os.access(existing, os.W_OK | os.X_OK)
            or not existing.stat().st_mode & writable_bits):
        at = "" if existing == resolved else f" (its parent {str(existing)!r})"
        raise UserError(f"{where}{at} is read-only: expected a writable directory")


def safe_name(name: str, what: str) -> str:
    """A name that becomes one path component under the results directory (run id, sweep,
    study): letters, digits and _ . + = -, not starting with a dot, so it can never climb out."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UserError(f"{what} {name!r}: expected a plain name (letters, digits, _ . + = -; no '/' and no "
                        "leading '.'), at most 200 characters")
    return name


def cache_dir(root: Path) -> Path:
    path = root / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_dir(root: Path, run_id: str) -> Path:
    return root / "runs" / safe_name(run_id, "run id")


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


Guard = Callable[[Path], None]
_fences: dict[Path, Guard] = {}
_HOST = socket.gethostname().replace(".", "_").replace("-", "_")


@contextlib.contextmanager
def fenced(folder: Path, guard: Guard) -> Iterator[None]:
    """While the block runs, every atomic write inside `folder` first calls `guard(path)`,
    once before the temporary file is made and once just before the rename; a guard that
    raises stops the write and keeps the previous file. A sweep worker fences its run's
    folder with its claim, so a worker that lost the claim (frozen past its heartbeat)
    cannot overwrite what the new holder writes."""
    folder = Path(folder).absolute()
    _fences[folder] = guard
    try:
        yield
    finally:
        _fences.pop(folder, None)


def _check_fences(path: Path) -> None:
    for folder, guard in list(_fences.items()):
        if folder in path.parents:
            guard(path)


def remove_orphan_temps(folder: Path) -> None:
    """Delete the temporary files that writers on this host left when they were killed
    (SIGKILL skips the cleanup): their process no longer exists. Files of live processes
    (a frozen worker's included) and of other hosts are left alone."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        match = re.fullmatch(r"\..+\.(?P<host>[^.]+)-(?P<pid>\d+)\.[^.]+\.tmp", entry.name)
        if match is None or match["host"] != _HOST or _alive(int(match["pid"])):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    The temporary file is `.<name>.<host>-<pid>.<random>.tmp`, so that a later writer in the
    same folder can remove it once its process is gone, and gets the mode open() would give
    (0666 minus the umask)."""
    path = Path(path).absolute()
    _check_fences(path)
    kept = "; the previous version is kept" if path.exists() else ""  # said only where there is one
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_orphan_temps(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".tmp")
        os.fchmod(fd, FILE_MODE)
        os.close(fd)
    except OSError as exc:
        raise UserError(f"could not write {path}: {exc.strerror or exc}") from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        _check_fences(path)
        os.replace(tmp_path, path)
    except OSError as exc:
        raise UserError(f"could not write {path}: {exc.strerror or exc}{kept}") from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def warn(message: str) -> None:
    """Report a fault the toolkit recovers from (a corrupt cache rebuilt, a run restarted): one line on stderr,
    so that `--json` output on stdout stays parseable."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


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


class CorruptFile(ValueError):
    """A cache or checkpoint that exists but cannot be read; callers rebuild or fall back."""
