"""A finished run whose final.json is damaged is evaluated again, never a traceback."""

from __future__ import annotations

import json

from conftest import TINY

from mirai_lab.config import build_config
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
