"""Runs of a sweep are shared among worker processes and executed exactly once.

Workers are real processes on a real storage (a journal file, and PostgreSQL where a
server can be started): the guarantees come from the storage engine, which threads in
one process would not exercise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from mirai_lab.errors import UserError
from mirai_lab.experiments.queue import RUN_ID_KEY, ClaimLost, RunQueue
from mirai_lab.experiments.storage import check_storage_url, open_storage

pytest_plugins = ["pg"]

REPO = Path(__file__).resolve().parents[2]
HEARTBEAT_S = 1

# A worker: open the queue, wait for the start signal, then claim, "train" (log pid and run
# id, fsync'd, sleep), and mark done until nothing is left. With "hang" it claims one run,
# logs it and never finishes, to be killed.
WORKER = """
import json, os, sys, time
from pathlib import Path
from mirai_lab.experiments.queue import RunQueue
from mirai_lab.experiments.storage import open_storage

args = json.loads(sys.argv[1])
storage = open_storage(args["url"], Path(args["journal"]), heartbeat_s=args["heartbeat_s"])
queue = RunQueue(storage, args["sweep"], args["run_ids"], is_finished=lambda run_id: False)
Path(args["ready_dir"], str(os.getpid())).touch()
while not Path(args["go"]).exists():
    time.sleep(0.01)
while (claim := queue.claim(wait=True)) is not None:
    with open(args["log"], "a") as fh:
        fh.write(f"{os.getpid()} {claim.run_id}\\n")
        fh.flush()
        os.fsync(fh.fileno())
    if args["hang"]:
        time.sleep(600)
    time.sleep(args["train_s"])
    claim.done()
"""


def run_ids(n: int) -> list[str]:
    return [f"{i:02x}{uuid.uuid4().hex[:6]}" for i in range(n)]


@pytest.fixture(params=["journal", "postgres"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same tests on a journal file (one machine) and on PostgreSQL (many machines)."""
    if request.param == "journal":
        return f"journal:{tmp_path / 'claims.log'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen]]:
    """Worker processes of one test; any still alive when it ends (a failed test) are killed."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start_workers(
    spawned: list[subprocess.Popen],
    url: str,
    tmp_path: Path,
    sweep: str,
    ids: list[str],
    n: int,
    *,
    hang: bool = False,
    train_s: float = 0.2,
) -> list[subprocess.Popen]:
    """Start n worker processes and release them together once all have opened the queue."""
    ready = tmp_path / f"ready-{uuid.uuid4().hex}"
    ready.mkdir()
    go = tmp_path / f"go-{uuid.uuid4().hex}"
    args = {
        "url": url,
        "journal": str(tmp_path / "unused.log"),
        "heartbeat_s": HEARTBEAT_S,
        "sweep": sweep,
        "run_ids": ids,
        "ready_dir": str(ready),
        "go": str(go),
        "log": str(tmp_path / "train.log"),
        "hang": hang,
        "train_s": train_s,
    }
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(args)], env=env) for _ in range(n)]
    spawned.extend(procs)
    deadline = time.monotonic() + 30
    while len(list(ready.iterdir())) < n:
        assert all(p.poll() is None for p in procs), "a worker exited before opening the queue"
        assert time.monotonic() < deadline, "workers did not open the queue within 30 s"
        time.sleep(0.05)
    go.touch()
    return procs


def training_log(tmp_path: Path) -> list[tuple[int, str]]:
    path = tmp_path / "train.log"
    if not path.exists():
        return []
    return [(int(pid), run_id) for pid, run_id in (line.split() for line in path.read_text().splitlines())]


def open_queue(
    url: str,
    tmp_path: Path,
    sweep: str,
    ids: list[str],
    finished: frozenset[str] = frozenset(),
    retry_failed: bool = False,
) -> RunQueue:
    storage = open_storage(url, tmp_path / "unused.log", heartbeat_s=HEARTBEAT_S)
    return RunQueue(storage, sweep, ids, is_finished=finished.__contains__, retry_failed=retry_failed)


def test_two_workers_run_every_run_exactly_once(
    storage_url: str, tmp_path: Path, spawned: list[subprocess.Popen]
) -> None:
    sweep, ids = uuid.uuid4().hex, run_ids(8)
    procs = start_workers(spawned, storage_url, tmp_path, sweep, ids, 2)
    assert [p.wait(timeout=60) for p in procs] == [0, 0]

    log = training_log(tmp_path)
    assert Counter(run_id for _, run_id in log) == Counter(ids)
    assert {pid for pid, _ in log} == {p.pid for p in procs}, "both workers should have trained runs"
    queue = open_queue(storage_url, tmp_path, sweep, ids)
    assert set(queue.states().values()) == {"done"}
    assert queue.claim() is None


def test_dead_workers_run_is_reclaimed_after_heartbeat_timeout(
    storage_url: str, tmp_path: Path, spawned: list[subprocess.Popen]
) -> None:
    sweep, ids = uuid.uuid4().hex, run_ids(3)
    (dead,) = start_workers(spawned, storage_url, tmp_path, sweep, ids, 1, hang=True)
    deadline = time.monotonic() + 30
    while not training_log(tmp_path):
        assert time.monotonic() < deadline, "the worker never claimed a run"
        time.sleep(0.05)
    dead.send_signal(signal.SIGKILL)
    dead.wait(timeout=10)
    [(_, orphan)] = training_log(tmp_path)

    queue = open_queue(storage_url, tmp_path, sweep, ids)
    assert queue.states()[orphan] == "running", "the dead worker still looks alive before the grace period"
    t0 = time.monotonic()
    taken = []
    while (claim := queue.claim(wait=True, poll_s=0.2)) is not None:
        taken.append(claim.run_id)
        assert claim.done()
    grace = 3 * HEARTBEAT_S
    assert sorted(taken) == sorted(ids) and taken[-1] == orphan
    # The last beat came up to one interval before the kill.
    assert grace - HEARTBEAT_S <= time.monotonic() - t0 < grace + 10

    storage = open_storage(storage_url, tmp_path / "unused.log")
    trials = optuna.load_study(study_name=queue.study_name, storage=storage).trials
    orphan_states = [t.state for t in trials if t.user_attrs[RUN_ID_KEY] == orphan]
    assert orphan_states == [TrialState.FAIL, TrialState.COMPLETE]
    assert queue.claim() is None and open_queue(storage_url, tmp_path, sweep, ids).claim() is None


def test_finished_runs_are_skipped_and_failed_runs_retried_only_when_asked(tmp_path: Path) -> None:
    url, sweep, ids = f"journal:{tmp_path / 'claims.log'}", "s", ["aa", "bb", "cc"]
    queue = open_queue(url, tmp_path, sweep, ids, finished=frozenset({"aa"}))
    first = queue.claim()
    assert first is not None and first.run_id == "bb"
    assert first.failed("loss diverged at step 12")
    second = queue.claim()
    assert second is not None and second.run_id == "cc"
    assert second.done()
    assert queue.claim(wait=True) is None
    assert queue.states() == {"aa": "done", "bb": "failed", "cc": "done"}  # aa: finished on disk, no claim
    assert open_queue(url, tmp_path, sweep, ids, finished=frozenset({"aa"})).claim() is None

    retry = open_queue(url, tmp_path, sweep, ids, finished=frozenset({"aa"}), retry_failed=True)
    again = retry.claim()
    assert again is not None and again.run_id == "bb"
    assert again.failed("diverged again")
    assert retry.claim() is None, "a run that fails again in the same queue stays failed"


def test_released_run_is_claimable_at_once_and_closing_twice_is_refused(tmp_path: Path) -> None:
    queue = open_queue(f"journal:{tmp_path / 'claims.log'}", tmp_path, "s", ["aa"])
    claim = queue.claim()
    assert claim is not None and claim.release()
    with pytest.raises(RuntimeError, match="already closed"):
        claim.done()
    again = queue.claim()
    assert again is not None and again.run_id == "aa"
    assert again.done()


def test_racing_claims_of_one_run_leave_the_earliest(tmp_path: Path) -> None:
    """A claimer that took a run on a stale view withdraws; a waiting claim left by a dead
    claimer is adopted rather than duplicated."""
    queue = open_queue(f"journal:{tmp_path / 'claims.log'}", tmp_path, "s", ["aa"])
    storage, study_id = queue._storage, queue._study_id
    left = create_trial(state=TrialState.WAITING, user_attrs={RUN_ID_KEY: "aa"})
    storage.create_new_trial(study_id, template_trial=left)

    assert queue._take("aa", []) is None  # as if it had read the trials before the one above
    claim = queue.claim()
    assert claim is not None and claim.trial_number == 0
    assert claim.done()
    states = [t.state for t in storage.get_all_trials(study_id)]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED]


def test_default_storage_is_a_journal_file(tmp_path: Path) -> None:
    path = tmp_path / "sweeps" / "s" / "claims.log"
    queue = RunQueue(open_storage(None, path), "s", ["aa"], is_finished=lambda run_id: False)
    claim = queue.claim()
    assert claim is not None and path.exists()
    assert claim.done()


@pytest.mark.parametrize(
    "url",
    ["mysql://u@h/db", "redis://localhost", "results/claims.log", "journal:", "sqlite://", "sqlite:///"],
)
def test_unknown_storage_url_is_a_one_line_user_error(url: str, tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        open_storage(url, tmp_path / "claims.log")
    message = str(err.value)
    assert "\n" not in message and repr(url) in message and "postgresql://" in message


def test_postgres_without_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "psycopg2" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(UserError, match=r"pip install mirai-lab\[postgres\]"):
        open_storage("postgresql://u:secret@127.0.0.1/db", tmp_path / "claims.log")


def test_unreachable_postgres_is_a_user_error_without_the_password(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        open_storage("postgresql://u:secret@127.0.0.1:1/db", tmp_path / "claims.log")
    assert "cannot open storage" in str(err.value) and "secret" not in str(err.value)
    assert "\n" not in str(err.value)


def test_a_claim_lost_to_the_heartbeat_verdict_refuses_writes(tmp_path: Path) -> None:
    """What a frozen worker sees when it wakes: its trial was failed as stale, so every check
    before a write raises, and so does a later claimant's token in the fence file."""
    queue = open_queue(f"journal:{tmp_path / 'claims.log'}", tmp_path, "s", ["aa"])
    claim = queue.claim()
    assert claim is not None
    claim.fence(tmp_path / "aa" / "claim.txt")
    claim.check()  # held: no error
    (tmp_path / "aa" / "claim.txt").write_text("trial 7 otherhost:1\n")
    with pytest.raises(ClaimLost, match="claimed since by trial 7 otherhost:1"):
        claim.check()
    claim.fence(tmp_path / "aa" / "claim.txt")
    queue._storage.set_trial_state_values(claim._trial_id, TrialState.FAIL)  # what fail_stale_trials does
    with pytest.raises(ClaimLost, match="given to another worker"):
        claim.check(tmp_path / "aa" / "curve.csv")
    assert not claim.release()  # the verdict is not this worker's to give any more


def test_sqlite_is_refused_for_several_processes() -> None:
    check_storage_url("sqlite:///x.db", 1)
    with pytest.raises(UserError) as err:
        check_storage_url("sqlite:///x.db", 3)
    assert "one process only" in str(err.value) and "3 workers" in str(err.value) and "\n" not in str(err.value)
