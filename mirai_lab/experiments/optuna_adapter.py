"""Every use of Optuna's internals, in one place, against the minor version pinned in pyproject.

Optuna's journal storage has no heartbeats in this version, while its RDB storage has them
built in. `HeartbeatJournalStorage` adds Optuna's (internal) heartbeat interface to the
journal, keeping the beat in a trial system attr, so that both storages work with Optuna's own
``fail_stale_trials`` and with ``Study.optimize``. The interface and the frozen trial's id are
not public API: tests/experiments/test_optuna_adapter.py fails loudly if a new Optuna moves them.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator

from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

HEARTBEAT_KEY = "mirai_lab:heartbeat"

@contextlib.contextmanager
def quiet_experimental() -> Iterator[None]:
    """Optuna marks heartbeats and metric names experimental; the warning says nothing to users."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield

class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """A journal storage with Optuna's heartbeat interface, which the journal lacks.

    The beat is a trial system attr holding the writer's wall clock, so every process that
    reads the journal sees it; the clocks of processes sharing one file agree well enough
    for a grace period of seconds. A RUNNING trial that never beat is never stale, as in
    ``RDBStorage``.
    """

    def __init__(self, backend: JournalFileBackend, heartbeat_interval: int, grace_period: int) -> None:
        super().__init__(backend)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_KEY, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        return [trial_id(t) for t in running if now - t.system_attrs.get(HEARTBEAT_KEY, now) > self.grace_period]

    def get_heartbeat_interval(self) -> int:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> None:
        return None


def trial_id(trial: FrozenTrial) -> int:
    """The storage's id of a frozen trial (Optuna keeps it private; the storage API needs it)."""
    return trial._trial_id


def heartbeat_interval(storage: BaseStorage) -> int | None:
    """The storage's heartbeat interval in seconds, or None when it has no heartbeats."""
    return storage.get_heartbeat_interval() if isinstance(storage, BaseHeartbeat) else None


def record_heartbeat(storage: BaseStorage, trial_id: int) -> None:
    """One beat of a held trial (the storage's heartbeat interface)."""
    storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
