"""Storages: a journal file (the default: several processes on one machine, or a shared file
system), PostgreSQL (many machines) and SQLite (one process only: SQLite ignores the row
lock the pop relies on). Optuna's RDB storage has heartbeats built in; its journal storage
has none in this version, so :class:`HeartbeatJournalStorage` adds Optuna's heartbeat
interface to it, keeping the beat in a trial system attr. Both then work with Optuna's own
``fail_stale_trials`` and with ``Study.optimize`` (tuning shares this module's storages).
"""

from __future__ import annotations

import importlib.util
import os
import stat
import time
from pathlib import Path

import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from mirai_lab.errors import UserError
from mirai_lab.experiments.optuna_adapter import HeartbeatJournalStorage, quiet_experimental
from mirai_lab.results_dir import PSEUDO_FILE_SYSTEMS

SCHEMA_ATTEMPTS = 5  # concurrent workers creating the schema race; the loser retries
GRACE_BEATS = 3
"""A holder is presumed dead after this many missed heartbeats, not one: a loaded machine
may delay a beat, and a false verdict makes a second worker train the same run."""

CONNECT_TIMEOUT_S = 5  # a database that does not answer in this time is reported down, not waited for

STORAGE_FORMS = "journal:PATH, sqlite:///PATH (one process only) or postgresql://USER@HOST[:PORT]/DB"

def check_storage_url(url: str | None, processes: int = 1) -> None:
    """Reject a storage URL that `open_storage` would not understand, or SQLite shared by
    several processes, before anything is written (a sweep writes its manifest first)."""
    if url is None:
        return
    scheme, _, rest = url.partition(":")
    ok = ((scheme == "journal" and bool(rest)) or (scheme == "sqlite" and rest.startswith("///") and len(rest) > 3)
          or (scheme.split("+")[0] == "postgresql" and rest.startswith("//") and len(rest) > 2))
    if not ok:
        raise UserError(f"storage URL {_redacted(url)!r} not understood: expected {STORAGE_FORMS}")
    if scheme == "sqlite" and processes > 1:
        raise UserError(f"storage {_redacted(url)} is SQLite, which serves one process only (it ignores the row "
                        f"lock a claim relies on), but {processes} workers would share it: use journal:PATH or "
                        "postgresql://...")

def check_storage_reachable(url: str | None) -> None:
    """Check that the storage named by `url` can be opened, writing nothing: a journal or SQLite
    file must be creatable (or writable) where it is named, a database must answer a connection
    within CONNECT_TIMEOUT_S.

    A sweep writes its manifest before its workers open the storage, so a storage that cannot
    be opened must be found here: afterwards it is a manifest left behind and a traceback per
    worker. `check_storage_url` has checked the form."""
    if url is None:
        return
    scheme, _, rest = url.partition(":")
    if scheme == "journal":
        _check_file_location(Path(rest).expanduser(), url)
    elif scheme == "sqlite":
        _check_file_location(Path(rest[3:]).expanduser(), url)  # sqlite:///relative, sqlite:////absolute
    else:
        engine = None
        try:
            engine = sqlalchemy.create_engine(_driver_url(url), poolclass=sqlalchemy.pool.NullPool,
                                              connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
            with engine.connect():
                pass
        except (sqlalchemy.exc.SQLAlchemyError, ValueError) as err:
            raise _storage_error(url, err) from None
        finally:
            if engine is not None:
                engine.dispose()

def _check_file_location(path: Path, url: str) -> None:
    """`path` is, or can be created as, a writable file outside the kernel's file systems."""
    where = f"storage {_redacted(url)}"
    try:
        resolved = path.resolve()
        if any(len(part.encode()) > 255 for part in resolved.parts) or len(str(resolved).encode()) >= 4096:
            raise UserError(f"{where}: the path is too long for the file system")
        for pseudo in map(Path, PSEUDO_FILE_SYSTEMS):
            if resolved == pseudo or pseudo in resolved.parents:
                raise UserError(f"{where} is inside {pseudo}, a kernel file system: expected an ordinary file")
        if resolved.is_dir():
            raise UserError(f"{where} is a directory: expected a file")
        existing = resolved if resolved.exists() else resolved.parent
        while not existing.exists():
            existing = existing.parent
    except OSError as exc:
        raise UserError(f"{where}: {exc.strerror or exc}") from None
    if existing != resolved and not existing.is_dir():
        raise UserError(f"{where} lies under the file {str(existing)!r}: expected a directory there")
    writable_bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH  # root passes os.access: the mode says read-only
    if (os.statvfs(existing).f_flag & os.ST_RDONLY or not existing.stat().st_mode & writable_bits
            or not os.access(existing, os.W_OK | (0 if existing == resolved else os.X_OK))):
        raise UserError(f"{where}: {str(existing)!r} is read-only: expected a writable file or directory")

def _driver_url(url: str) -> str:
    """A PostgreSQL URL with the driver we ship (SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3)."""
    scheme, _, rest = url.partition(":")
    if scheme not in ("postgresql", "postgresql+psycopg2"):
        return url
    if importlib.util.find_spec("psycopg2") is None:
        raise UserError(f"storage {_redacted(url)} needs the PostgreSQL driver: pip install mirai-lab[postgres]")
    return "postgresql+psycopg2:" + rest

def open_storage(url: str | None, default_journal: Path, *, heartbeat_s: int = 30) -> BaseStorage:
    """Open the storage named by ``--storage`` with heartbeats every ``heartbeat_s`` seconds.

    None means a journal file at ``default_journal``; ``journal:PATH`` a journal file
    elsewhere; ``sqlite:///PATH`` and ``postgresql://...`` an RDB storage. A holder is
    presumed dead after ``GRACE_BEATS * heartbeat_s`` seconds without a beat. The heartbeat
    belongs to the storage, not to the queue, because that is where Optuna keeps it: a
    tuning study opened here recovers from dead workers the same way.
    """
    if heartbeat_s < 1:
        raise UserError(f"heartbeat interval {heartbeat_s!r} s: expected a whole number of seconds >= 1")
    grace = GRACE_BEATS * heartbeat_s
    if url is None:
        return _open_journal(Path(default_journal), heartbeat_s, grace)
    check_storage_url(url)
    scheme, _, rest = url.partition(":")
    if scheme == "journal":
        return _open_journal(Path(rest).expanduser(), heartbeat_s, grace)
    return _open_rdb(_driver_url(url), heartbeat_s, grace)

def _open_journal(path: Path, heartbeat_s: int, grace: int) -> HeartbeatJournalStorage:
    path.parent.mkdir(parents=True, exist_ok=True)
    return HeartbeatJournalStorage(JournalFileBackend(str(path)), heartbeat_s, grace)

def _open_rdb(url: str, heartbeat_s: int, grace: int) -> RDBStorage:
    """Open an RDB storage, creating its tables on first use.

    Workers started together on an empty database all create Optuna's tables at once, and
    all but one fail on the duplicates; a retry finds the tables there and goes on.
    """
    attempt = 1
    while True:
        try:
            with quiet_experimental():
                return RDBStorage(
                    url,
                    # A worker may train for hours between two reads on its main thread.
                    engine_kwargs={"pool_pre_ping": True},
                    heartbeat_interval=heartbeat_s,
                    grace_period=grace,
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as err:
            if attempt == SCHEMA_ATTEMPTS:
                raise _storage_error(url, err) from err
            time.sleep(0.2 * attempt)
            attempt += 1
        except sqlalchemy.exc.SQLAlchemyError as err:
            raise _storage_error(url, err) from err

def _storage_error(url: str, err: Exception) -> UserError:
    reason = (str(getattr(err, "orig", None) or err).strip().splitlines() or [type(err).__name__])[0]
    return UserError(f"cannot open storage {_redacted(url)}: {reason}")

def _redacted(url: str) -> str:
    """The URL without its password, fit for an error message."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return url
