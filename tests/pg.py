"""A throw-away PostgreSQL 15 server for tests that need a real multi-machine storage.

The cluster lives in a temporary directory, listens on 127.0.0.1 only (and on a Unix
socket inside that directory, so it needs nothing under /var/run), runs without fsync
for speed, and is stopped and removed after the session. ``initdb`` refuses to run as
root, so as root the server runs as the ``postgres`` system user. Where no server can be
started the tests that need one are skipped, with the reason.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DB_NAME = "mirai_test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_server_user() -> list[str]:
    """The command prefix that runs a PostgreSQL binary as a user it accepts."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
    if shutil.which("runuser") is None:
        pytest.skip("running as root and 'runuser' is missing, so PostgreSQL cannot drop root")
    return ["runuser", "-u", "postgres", "--"]


def _run(prefix: list[str], *args: str | Path) -> None:
    result = subprocess.run([*prefix, *map(str, args)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:]
        pytest.skip(f"PostgreSQL did not start: {Path(str(args[0])).name} failed: {' '.join(tail)}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL of an empty database on a fresh local server, for this test session."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL 15 is not installed ({PG_BIN}/initdb missing)")
    prefix = _as_server_user()
    root = Path(tempfile.mkdtemp(prefix="mirai-pg-"))
    if prefix:
        shutil.chown(root, user="postgres")
    data = root / "data"
    port = _free_port()
    try:
        _run(prefix, PG_BIN / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
        _run(prefix, PG_BIN / "pg_ctl", "-D", data, "-o", options, "-l", root / "server.log", "-w", "start")
        _run(prefix, PG_BIN / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", DB_NAME)
        yield f"postgresql://postgres@127.0.0.1:{port}/{DB_NAME}"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*prefix, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)
