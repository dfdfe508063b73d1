"""Atomic files: a reader sees the old file or the new one, never half of one.

Every file a reader may open while a writer is killed is written to a temporary file in the
same directory and renamed over the target. A fence (`fenced`) lets a sweep worker stop its
own writes into a run folder the moment it no longer holds the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mirai_lab.errors import UserError


def _current_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; restored at once
    os.umask(mask)
    return mask

FILE_MODE = 0o666 & ~_current_umask()  # what open() gives; mkstemp's 0600 would lock a shared group out

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
