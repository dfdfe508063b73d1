"""The lifecycle of a run, recorded in status.json: the one vocabulary of run states."""

from __future__ import annotations

import json
import math
import os
import socket
import time
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from mirai_lab.errors import CorruptFile
from mirai_lab.files.atomic import read_json, write_json
from mirai_lab.files.tensors import load_tensors
from mirai_lab.messages import warn
from mirai_lab.results_dir import CHECKPOINT, CONFIG, CURVE, FINAL, STATUS
from mirai_lab.runs.curve import Curve, Row, read_rows

RECORD = (STATUS, CONFIG, FINAL, CURVE)  # the files that say what a run is and what it measured


class RunState(StrEnum):
    """pending: not started (no status.json); running: claimed or training (also a done status
    whose final.json is missing); done: final.json written; failed: diverged or crashed, with the
    error (retrained only with --retry-failed); pruned: stopped early by a tuner's pruner, final
    for that study and never retrained by a sweep."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    PRUNED = "pruned"

    def needs_training(self, retry_failed: bool = False) -> bool:
        """Whether a sweep (sequential or a claiming worker alike) still has to train this run."""
        return self in (RunState.PENDING, RunState.RUNNING) or (retry_failed and self is RunState.FAILED)


def set_status(path: Path, state: RunState, **extra: Any) -> None:
    """Write status.json atomically; `extra` carries the error of a failed run, the step, etc."""
    write_json(path / STATUS, {"state": RunState(state).value, "time": time.time(),
                                      "host": socket.gethostname(), "pid": os.getpid(), **extra})


def run_state(path: Path) -> RunState:
    """The state of the run in `path` from its status.json (missing or unreadable = pending). A done
    status is trusted only with a sound record beside it: with final.json missing (being written)
    or any file of the record damaged (`damage`), the run is still running, i.e. to be made."""
    try:
        state = RunState(read_json(path / STATUS)["state"])
    except (OSError, ValueError, KeyError, TypeError):
        return RunState.PENDING
    if state is RunState.DONE and (not (path / FINAL).exists() or damage(path) is not None):
        return RunState.RUNNING
    return state


class Damage(NamedTuple):
    """The files of a run folder that exist but cannot be read as what they should be."""

    run: Path
    files: tuple[Path, ...]
    text: str  # "<file> is damaged (<why>)", one clause per file

    def names(self) -> str:
        return ", ".join(f.name for f in self.files)


# run folder -> (the stat of its record files, what `damage` found): a sweep's live table asks for
# every run's state twice a second, and a record is parsed again only when one of its files changed
_checked: dict[Path, tuple[tuple[Any, ...], Damage | None]] = {}
_warned: set[tuple[Path, tuple[Any, ...]]] = set()


def _signature(path: Path) -> tuple[Any, ...]:
    out: list[Any] = []
    for name in RECORD:
        try:
            st = (path / name).stat()
        except OSError:
            out.append(None)
        else:
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def damage(path: Path) -> Damage | None:
    """What is damaged in the record of the run in `path`, None when nothing is.

    A status.json that cannot be read is damage whatever the run's state (its state is unknown).
    A run whose status says done must also have a config.json and a final.json that are JSON
    objects, and a curve.csv that parses and ends at the step and values final.json reports. A
    missing file is not damage: final.json is written last, and fixtures carry only some files."""
    path = Path(path)
    signature = _signature(path)
    cached = _checked.get(path)
    if cached is not None and cached[0] == signature:
        return cached[1]
    found = _find_damage(path)
    _checked[path] = (signature, found)
    return found


def _find_damage(path: Path) -> Damage | None:
    problems: dict[Path, str] = {}

    def load(name: str) -> Any:
        try:
            text = (path / name).read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            problems[path / name] = f"unreadable: {exc}"
            return None
        if not text.strip():
            problems[path / name] = "empty"
            return None
        try:
            value = json.loads(text)
        except ValueError as exc:
            problems[path / name] = f"not JSON: {exc}"
            return None
        if not isinstance(value, dict):
            problems[path / name] = f"a JSON {type(value).__name__}, not an object"
            return None
        return value

    status = load(STATUS)
    if status is not None and status.get("state") not in {s.value for s in RunState}:
        problems[path / STATUS] = f"no run state (state={status.get('state')!r})"
    if status is not None and status.get("state") != RunState.DONE.value and not problems:
        return None  # pending, running, failed, pruned: only a done run vouches for its record
    if status is None and not problems:
        return None  # not started
    load(CONFIG)
    final = load(FINAL)
    if (path / CURVE).exists():
        try:
            rows = read_rows(path / CURVE)
        except CorruptFile as exc:
            problems[path / CURVE] = "empty" if _empty(path / CURVE) else str(exc).split(": ", 1)[-1]
        else:
            if (why := _curve_mismatch(rows, final)) is not None:
                problems[path / CURVE] = why
    if not problems:
        return None
    files = tuple(sorted(problems, key=lambda f: RECORD.index(f.name)))
    return Damage(path, files, "; ".join(f"{f} is damaged ({problems[f]})" for f in files))


def _empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _curve_mismatch(rows: list[Row], final: dict[str, Any] | None) -> str | None:
    """Why a curve that parses is not the one final.json was written after, or None. The trainer
    writes the last point (val_nll, then the final evaluation's sample metrics) and then
    final.json, so a metric of final.json that the curve logs is at its last step, equal to it; a
    copy cut at a row's end or inside a number loses or changes one of them."""
    if final is None or not isinstance(final.get("steps"), int) or isinstance(final.get("steps"), bool):
        return None
    if not rows:
        return "no rows"
    last = max(r[1] for r in rows)
    if last != final["steps"]:
        return f"it ends at step {last}, final.json at step {final['steps']}"
    logged = {r[4] for r in rows}
    at_last = {r[4]: r[5] for r in rows if r[1] == last}
    for metric, known in final.items():
        if metric not in logged or not isinstance(known, int | float) or isinstance(known, bool):
            continue
        if metric not in at_last:
            return f"no {metric} at step {last}, where final.json has {known!r}"
        value = at_last[metric]
        if not (math.isclose(value, known, rel_tol=1e-4, abs_tol=1e-12) or (math.isnan(value) and math.isnan(known))):
            return f"its {metric} at step {last} is {value!r}, final.json says {known!r}"
    return None


def warn_damage(found: Damage, consequence: str) -> None:
    """One warning line for this damage, once per process (a sweep meets a run several times)."""
    key = (found.run, _signature(found.run))
    if key in _warned:
        return
    _warned.add(key)
    warn(f"{found.text}: {consequence}")


def remake_note(path: Path) -> str:
    return f"run {path.name} is made again (evaluated again from its checkpoint if that is intact, else retrained)"


def done_record(path: Path) -> dict[str, Any] | None:
    """The final.json of a done run, for a caller that reuses it instead of training (a sweep, a
    tuner's trial). None when the run is not done, or when its record is damaged (warned here):
    the caller then makes the run again (runs/lock.py `claim_run`), which mends the folder so that
    the trainer re-evaluates from the last checkpoint instead of training from scratch."""
    if run_state(path) is RunState.DONE:
        try:
            final = read_json(path / FINAL)
        except (OSError, ValueError):
            final = None
        if isinstance(final, dict):
            return final
    if (found := damage(path)) is not None:
        warn_damage(found, remake_note(path))
    return None


def mend(path: Path) -> None:
    """Make a damaged run folder one the trainer can finish, just before it does (under the run's
    lock), and warn once: a bad status.json or final.json is simply written again; a bad
    config.json is removed so that the trainer writes it again (it keeps one that exists); a bad
    curve.csv is cut to the rows the checkpoint vouches for, so the trainer resumes from the
    checkpoint and evaluates again, or, when the checkpoint cannot restore it, removed with the
    checkpoint, so the run trains again from step 0 (deterministic: to the same numbers)."""
    found = damage(path)
    if found is None:
        return
    warn_damage(found, remake_note(path))
    for file in found.files:
        if file.name == CONFIG:
            file.unlink(missing_ok=True)
        elif file.name == CURVE:
            _mend_curve(path)


def _mend_curve(path: Path) -> None:
    try:
        checkpoint = load_tensors(path / CHECKPOINT, checked=True)
        rows, digest = int(checkpoint["curve_rows"]), str(checkpoint["curve_sha256"])
    except (CorruptFile, OSError, KeyError, TypeError, ValueError, RuntimeError):
        rows, digest = -1, ""
    head = Curve.readable_head(path / CURVE, path.name).head(max(rows, 0))
    if rows >= 0 and len(head.rows) == rows and head.digest() == digest:
        head.save(path / CURVE)
        return
    (path / CURVE).unlink(missing_ok=True)
    (path / CHECKPOINT).unlink(missing_ok=True)
