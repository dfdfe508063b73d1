"""Share one ordered list of runs among many worker processes through an Optuna storage.

Why Optuna: sweeps on a cluster already need a database every machine can reach for tuning
(docs/scale.md). Claiming runs through the same storage means one thing to deploy, no
home-made lock files, and optuna-dashboard shows which run is where: a sweep is an ordinary
study named ``mirai-lab-sweep:<sweep>``, each claim an ordinary trial whose user attr
``run_id`` names the run.

Mutual exclusion rests on two operations that Optuna storages make atomic:

- trial creation: the trials of a study are numbered in creation order, and a trial is
  visible to every reader once its creation has returned (RDB: creation locks the study
  row; journal: the order of the log);
- popping a WAITING trial: WAITING -> RUNNING succeeds for exactly one caller
  (RDB: ``SELECT ... FOR UPDATE``; journal: the first log line wins).

To claim run R, a worker pops R's lowest WAITING trial, creating one first if R has none,
then checks that no *lower-numbered* trial of R is live. If one is, two workers raced and
the lower trial wins: this one is withdrawn (PRUNED). Live states (WAITING, RUNNING,
COMPLETE, counted failure) only ever end in states that are not live, so a trial that a
later claimer saw as not live can never run again, and the earliest claimer never sees the
later ones: at most one claim of a run runs at a time, without a retry loop.

Trial states, as the dashboard shows them:

- WAITING: a claim being taken (or left by a worker that died while taking it; adopted).
- RUNNING: held; the holder records a heartbeat every ``heartbeat_s`` seconds.
- COMPLETE: done, never handed out again; the value is the claim's wall time in seconds.
- FAIL with user attr ``error``: the run failed; not retried unless ``retry_failed``.
- FAIL without ``error``: the holder missed its heartbeats for the grace period and is
  presumed dead (Optuna's ``fail_stale_trials``, run at every ``claim``); the run is
  claimable again.
- PRUNED: a withdrawn duplicate or a released claim; the run is claimable again.

Storages are opened by experiments/storage.py.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState, create_trial

from mirai_lab.experiments.optuna_adapter import heartbeat_interval, quiet_experimental, record_heartbeat
from mirai_lab.files.atomic import write_text
from mirai_lab.runs.state import RunState

RUN_ID_KEY = "run_id"

ERROR_KEY = "error"

NOTE_KEY = "note"

WORKER_KEY = "worker"

STUDY_PREFIX = "mirai-lab-sweep:"


_log = logging.getLogger(__name__)

class ClaimLost(Exception):
    """This worker no longer holds the run (presumed dead after missing its heartbeats, e.g.
    frozen); another worker may be training it. Raised before a write: stop, write nothing."""

class Claim:
    """One worker's hold on one run, kept alive by a heartbeat thread until a verdict.

    The thread records a beat every heartbeat interval while the run trains, so the caller
    needs no cooperation from the training loop. It is a daemon: a worker that exits or is
    killed without a verdict stops beating and its run is claimed again after the grace
    period. ``done``, ``failed`` and ``release`` return False when the claim had already been
    lost (this worker was presumed dead and another may be re-running the run).
    """

    def __init__(self, storage: BaseStorage, trial_id: int, trial_number: int, run_id: str) -> None:
        self.run_id = run_id
        self.trial_number = trial_number
        self._storage = storage
        self._trial_id = trial_id
        self._started = time.monotonic()
        self._fence_file: Path | None = None
        self._closed = threading.Event()
        interval = storage.get_heartbeat_interval()
        self._thread = threading.Thread(target=self._beat, args=(interval,), name=f"heartbeat-{run_id}", daemon=True)
        self._thread.start()

    def _beat(self, interval: float) -> None:
        while not self._closed.wait(interval):
            try:
                record_heartbeat(self._storage, self._trial_id)
            except UpdateFinishedTrialError:
                _log.warning("run %s: presumed dead by another worker; it may be re-run there", self.run_id)
                return
            except Exception as err:  # a transient storage error must not stop the beats
                _log.warning("run %s: heartbeat failed (%s); retrying", self.run_id, err)

    def check(self, path: Path | None = None) -> None:
        """Raise ClaimLost unless this claim still holds its run, and no later claimant's
        ``token`` stands in the run's ``fence`` file (see :meth:`fence`). A guard for writes."""
        what = f" (not writing {path.name})" if path is not None else ""
        if self._storage.get_trial(self._trial_id).state != TrialState.RUNNING:
            raise ClaimLost(f"run {self.run_id}: this worker's claim was given to another worker{what}")
        if self._fence_file is not None:
            try:
                holder = self._fence_file.read_text().strip()
            except OSError:
                holder = ""
            if holder != self.token:
                raise ClaimLost(f"run {self.run_id}: claimed since by {holder or 'another worker'}{what}")

    @property
    def token(self) -> str:
        """Who holds the run: trial number, host and pid; later claims have higher numbers."""
        return f"trial {self.trial_number} {socket.gethostname()}:{os.getpid()}"

    def fence(self, fence_file: Path) -> None:
        """Write this claim's token to ``fence_file`` (in the run's folder): from now on a
        worker whose claim was lost sees a token that is not its own and stops before
        writing, even if the storage still answers it with a stale state."""
        write_text(fence_file, self.token + "\n")
        self._fence_file = fence_file

    def done(self) -> bool:
        """The run finished: it is never handed out again."""
        return self._close(TrialState.COMPLETE, {}, [time.monotonic() - self._started])

    def failed(self, message: str) -> bool:
        """The run failed with ``message``: not retried unless a queue asks for ``retry_failed``."""
        return self._close(TrialState.FAIL, {ERROR_KEY: message}, None)

    def release(self) -> bool:
        """Give the run back without a verdict (e.g. on Ctrl-C): claimable again at once."""
        return self._close(TrialState.PRUNED, {NOTE_KEY: "released by its worker"}, None)

    def _close(self, state: TrialState, attrs: dict[str, str], values: list[float] | None) -> bool:
        if self._closed.is_set():
            raise RuntimeError(f"the claim of run {self.run_id} is already closed")
        self._closed.set()
        self._thread.join()
        try:
            for key, value in attrs.items():
                self._storage.set_trial_user_attr(self._trial_id, key, value)
            self._storage.set_trial_state_values(self._trial_id, state, values)
        except UpdateFinishedTrialError:
            _log.warning("run %s: the claim was lost before its verdict; another worker took over", self.run_id)
            return False
        return True

class RunQueue:
    """The runs of one sweep, handed out once each to any number of workers.

    ``run_ids`` is the sweep's ordered list (duplicates are dropped); runs are claimed in
    that order. ``is_finished(run_id)`` says whether a run's results already exist: such
    runs are never claimed. A run that failed (``Claim.failed``) is not claimed again;
    with ``retry_failed`` the failures recorded before this queue was opened are forgiven
    once, while a run that fails again during this queue's life stays failed.
    """

    def __init__(
        self,
        storage: BaseStorage,
        sweep_name: str,
        run_ids: list[str],
        is_finished: Callable[[str], bool],
        *,
        retry_failed: bool = False,
    ) -> None:
        if not heartbeat_interval(storage):
            raise ValueError("RunQueue needs a storage with heartbeats; open it with open_storage()")
        self.run_ids = list(dict.fromkeys(run_ids))
        self.study_name = STUDY_PREFIX + sweep_name
        self._storage = storage
        self._is_finished = is_finished
        self._study = optuna.create_study(
            storage=storage, study_name=self.study_name, direction="minimize", load_if_exists=True
        )
        with quiet_experimental():
            self._study.set_metric_names(["wall_s"])
        self._study_id = storage.get_study_id_from_name(self.study_name)
        self._forgiven: set[int] = set()
        if retry_failed:
            self._forgiven = {
                t.number for trials in self._trials_by_run().values() for t in trials if self._is_failure(t)
            }

    def claim(self, *, wait: bool = False, poll_s: float | None = None) -> Claim | None:
        """Take the first run that is neither finished, done, failed nor held by a live worker.

        Returns None when no run can be taken now. Without ``wait`` that includes runs held
        by other workers; with ``wait`` it polls every ``poll_s`` seconds (default: the
        heartbeat interval) while others hold runs, since a holder may die and its run come
        back, and returns None only once every run is finished, done or failed. Never wait
        while this process holds a claim of the same sweep: it would wait for itself.
        """
        poll = heartbeat_interval(self._storage) if poll_s is None else poll_s
        while True:
            with quiet_experimental():
                fail_stale_trials(self._study)
            trials = self._trials_by_run()
            held_elsewhere = False
            for run_id in self.run_ids:
                state = self._state(trials[run_id])
                held_elsewhere |= state is RunState.RUNNING
                if state is not RunState.PENDING or self._is_finished(run_id):
                    continue
                claim = self._take(run_id, trials[run_id])
                if claim is not None:
                    return claim
                held_elsewhere = True
            if not (wait and held_elsewhere):
                return None
            time.sleep(poll)

    def states(self) -> dict[str, RunState]:
        """Each run's state in the runs' own vocabulary: done (a claim's verdict, or finished on disk
        as the caller's ``is_finished`` says), failed, running or pending."""
        states = {}
        for run_id, trials in self._trials_by_run().items():
            state = self._state(trials)
            states[run_id] = RunState.DONE if state is RunState.PENDING and self._is_finished(run_id) else state
        return states

    def _take(self, run_id: str, trials: list[FrozenTrial]) -> Claim | None:
        waiting = [t.number for t in trials if t.state == TrialState.WAITING]
        if waiting:
            trial_id = self._storage.get_trial_id_from_study_id_trial_number(self._study_id, waiting[0])
        else:
            template = create_trial(state=TrialState.WAITING, user_attrs={RUN_ID_KEY: run_id})
            trial_id = self._storage.create_new_trial(self._study_id, template_trial=template)
        try:
            # Beat before the pop, so that a RUNNING claim always has a beat that can go stale.
            self._storage.record_heartbeat(trial_id)
            if not self._storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                return None
        except UpdateFinishedTrialError:
            return None
        number = self._storage.get_trial(trial_id).number
        rivals = [t.number for t in self._trials_by_run()[run_id] if t.number < number and self._is_live(t)]
        if rivals:
            self._storage.set_trial_user_attr(
                trial_id, NOTE_KEY, f"withdrawn: trial {rivals[0]} claimed this run first"
            )
            self._storage.set_trial_state_values(trial_id, TrialState.PRUNED)
            return None
        self._storage.set_trial_user_attr(trial_id, WORKER_KEY, f"{socket.gethostname()}:{os.getpid()}")
        return Claim(self._storage, trial_id, number, run_id)

    def _trials_by_run(self) -> dict[str, list[FrozenTrial]]:
        """This sweep's trials grouped by run, in creation order; trials of other runs ignored."""
        by_run: dict[str, list[FrozenTrial]] = {run_id: [] for run_id in self.run_ids}
        for trial in sorted(self._storage.get_all_trials(self._study_id, deepcopy=False), key=lambda t: t.number):
            run_id = trial.user_attrs.get(RUN_ID_KEY)
            if run_id in by_run:
                by_run[run_id].append(trial)
        return by_run

    def _state(self, trials: list[FrozenTrial]) -> RunState:
        if any(t.state == TrialState.COMPLETE for t in trials):
            return RunState.DONE
        if any(self._is_failure(t) and t.number not in self._forgiven for t in trials):
            return RunState.FAILED
        if any(t.state == TrialState.RUNNING for t in trials):
            return RunState.RUNNING
        return RunState.PENDING

    def _is_live(self, trial: FrozenTrial) -> bool:
        """Whether the trial holds (or will hold, or did settle) its run, barring later claims."""
        if trial.state in (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE):
            return True
        return self._is_failure(trial) and trial.number not in self._forgiven

    @staticmethod
    def _is_failure(trial: FrozenTrial) -> bool:
        return trial.state == TrialState.FAIL and ERROR_KEY in trial.user_attrs
