"""Load-or-build: the one way every cache of the results directory is read and made.

Tokenizer and token codes, packed code folders, encoder feature tables, the domain
classifier and the evaluator's floors all go through `load_or_build`:

1. a present file is loaded without a lock (caches are written atomically, so a reader sees
   a whole file or none);
2. otherwise the builder takes a lock beside the file, so that sweep workers starting
   together build it once: the others wait, then load what it wrote;
3. a file that is unreadable, truncated, fails its checksum or does not hold what its name
   promises is reported in one warning line, deleted and rebuilt;
4. the built value is saved atomically, and the lock file is removed before it is released
   (filelock's waiters notice an unlinked lock and retry on the path), so neither a build
   nor a rejected input leaves a `.lock` file behind.

Cache files are this toolkit's own: one that carries pickled objects is never unpickled,
only replaced.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from filelock import FileLock

from mirai_lab.errors import CorruptFile, UserError
from mirai_lab.messages import warn
from mirai_lab.timing import part

T = TypeVar("T")

# what a loader may raise on a file that does not hold what it should: all mean "rebuild it"
INCONSISTENT = (CorruptFile, UserError, KeyError, IndexError, TypeError, ValueError, RuntimeError, OSError)


def lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def load_or_build(path: Path, load: Callable[[Path], T], build: Callable[[], T],
                  save: Callable[[Path, T], None]) -> T:
    """The cached value at `path`: `load(path)` when it holds one, else `build()` saved by `save`.

    `load` raises (CorruptFile, KeyError, ...) on a file that is not what it should be; it
    must not touch torch's global RNG, and neither does anything here."""
    if path.exists():
        try:
            return load(path)
        except INCONSISTENT:
            pass  # decided under the lock: another process may be replacing it right now
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_path(path)
    with FileLock(lock):
        try:
            if path.exists():
                try:
                    return load(path)
                except INCONSISTENT as exc:
                    warn(f"cache {path} is corrupt ({_reason(exc)}); rebuilding it")
                    path.unlink(missing_ok=True)
            with part("cache_build"):  # waiting on the lock stays in the caller's part
                value = build()
                save(path, value)
            return value
        finally:
            lock.unlink(missing_ok=True)


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, CorruptFile | UserError) else text
