"""Optuna's internals that experiments/optuna_adapter.py relies on are still where it expects them.

They are not public API, so a new Optuna may move them; pyproject pins the tested minor, and
this test names what moved instead of letting a sweep fail halfway."""

from __future__ import annotations

import inspect

import optuna
from optuna.storages import _heartbeat

from mirai_lab.experiments import optuna_adapter


def test_the_heartbeat_interface_has_the_methods_the_journal_adapter_implements():
    abstract = {name for name, member in inspect.getmembers(_heartbeat.BaseHeartbeat)
                if getattr(member, "__isabstractmethod__", False)}
    implemented = {"record_heartbeat", "_get_stale_trial_ids", "get_heartbeat_interval",
                   "get_heartbeat_stale_trial_callback"}
    assert abstract <= implemented, f"BaseHeartbeat now also requires {sorted(abstract - implemented)}"
    assert not inspect.isabstract(optuna_adapter.HeartbeatJournalStorage)


def test_a_frozen_trial_still_carries_its_storage_id(tmp_path):
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage)
    study.ask()
    frozen = study.trials[0]
    assert optuna_adapter.trial_id(frozen) == storage.get_trial_id_from_study_id_trial_number(
        study._study_id, frozen.number)


def test_fail_stale_trials_still_reads_the_heartbeat_interface(tmp_path):
    """fail_stale_trials is what turns a dead worker's claim into a claimable run."""
    assert "BaseHeartbeat" in inspect.getsource(optuna.storages._heartbeat.fail_stale_trials)
