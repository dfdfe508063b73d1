"""A finished run whose final.json is damaged is evaluated again, by a sweep or a tuner alike,
never a traceback."""

from __future__ import annotations

import json

import optuna
from conftest import TINY

from mirai_lab.config import build_config
from mirai_lab.experiments.tune import TuneOptions, objective_fn
from mirai_lab.runs.state import RunState, done_record, set_status
from mirai_lab.runs.store import run_dir, write_json
from mirai_lab.training.run import execute


def test_a_done_run_with_a_damaged_final_json_is_made_again(tmp_path, capsys):
    cfg = build_config(None, TINY)
    first, path, skipped = execute(cfg, tmp_path)
    assert not skipped
    (path / "final.json").write_text('{"val_nll": 2.1')  # cut mid-write by something outside our control
    capsys.readouterr()
    again, _, skipped = execute(cfg, tmp_path)
    err = capsys.readouterr().err
    assert not skipped and "final.json is damaged" in err and "Traceback" not in err
    assert again["val_nll"] == first["val_nll"]  # the same weights (from the checkpoint) measured again
    assert json.loads((path / "final.json").read_text())["val_nll"] == first["val_nll"]
    assert execute(cfg, tmp_path)[2]  # and now it is done again


def test_done_record_reads_only_a_sound_record_of_a_done_run(tmp_path, capsys):
    assert done_record(tmp_path) is None  # pending: no status.json
    set_status(tmp_path, RunState.DONE)
    assert done_record(tmp_path) is None  # done, final.json not written yet: still running
    write_json(tmp_path / "final.json", {"val_nll": 2.5})
    assert done_record(tmp_path) == {"val_nll": 2.5}
    assert capsys.readouterr().err == ""
    for damaged in ('{"val_nll": 2.', "[2.5]"):  # cut mid-write; valid JSON but not a record
        (tmp_path / "final.json").write_text(damaged)
        assert done_record(tmp_path) is None
        assert "final.json is damaged" in capsys.readouterr().err


def test_a_tuner_trial_on_a_damaged_done_run_evaluates_it_again(tmp_path, capsys):
    opts = TuneOptions(source="ema", trials=1, budget="smoke", study="s", base=TINY,
                       objective="val_nll")
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective_fn(opts, tmp_path), n_trials=1)
    first = study.trials[0]
    path = run_dir(tmp_path, first.user_attrs["run_id"])
    (path / "final.json").write_text('{"val_nll": 2.1')
    capsys.readouterr()
    study.enqueue_trial(first.params)
    study.optimize(objective_fn(opts, tmp_path), n_trials=1)
    again = study.trials[1]
    assert again.user_attrs["run_id"] == first.user_attrs["run_id"]
    assert again.state is optuna.trial.TrialState.COMPLETE and again.value == first.value
    assert "final.json is damaged" in capsys.readouterr().err
    assert json.loads((path / "final.json").read_text())["val_nll"] == first.value
