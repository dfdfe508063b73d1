"""A tuning study's winner as an experiment spec, with the study's record (tune.json) beside it.

The spec has the format of experiments/specs/*.toml, so `mirai-lab sweep --experiment FILE` runs it
as it is: [experiment] (name, budget, the selection seeds, the baseline row), [base] (the source's
settings and the --set values) and [axes.variant] with the baseline, the paper's default
coefficient and the tuned values (no tuned row when the default won). It holds what the user chose
and what the study searched, never what the budget resolved (a projector width, a block index),
so it means the same under every budget; at the study's budget and seeds a sweep of it reuses
the study's own runs.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mirai_lab.config import flatten
from mirai_lab.experiments.tune import RESCORE_SEEDS, SOURCES, TuneOptions, params_to_overrides
from mirai_lab.experiments.tune_blocks import BASELINE, DEFAULT, TUNED
from mirai_lab.files.atomic import write_json, write_text
from mirai_lab.foresight.fit import configure

RECORD = "tune.json"


def spec_name(study: str) -> str:
    """The study's name as an experiment name (letters, digits, - and _; spec.py's rule)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", study)


def export(folder: Path, opts: TuneOptions, record: dict[str, Any]) -> tuple[Path, Path]:
    """Write <folder>/<study>.toml and <folder>/tune.json; returns their paths."""
    study, winner = record["study"], record["winner"]
    base = {k: v for k, v in {**SOURCES[opts.source], **(opts.base or {})}.items() if k != "budget"}
    coefs = {k: v for k, v in record["default_params"].items() if k == "coef" or k.startswith("coef_k")}
    default_won = record["confirmation"]["default_is_winner"]
    rows = {DEFAULT: params_to_overrides(coefs)}
    if not default_won:  # else a tuned row would train the default again
        rows[TUNED] = params_to_overrides(winner["params"])
    n = opts.seeds
    pooled = (f" (and on seeds {n}-{n + RESCORE_SEEDS - 1}, rescoring)"
              if str(winner["trial"]) in record["rescore"].get("pooled", {}) else "")
    comments = textwrap.wrap(
        f"Tuned by `mirai-lab tune --source {opts.source} --budget {opts.budget} --seeds {n} --study {study}`: "
        f"the winner is trial {winner['trial']} of {record['counts']['trials']}"
        + (", the default coefficient itself. " if default_won else ". ")
        + f"seeds = {n} are the study's selection seeds: the winner was chosen on them{pooled}, so on them the "
        "tuned row is favoured. Its confirmation on fresh seeds is in tune.json; for another look, sweep this "
        "file with --seeds N --name NEW and run `mirai-lab confirm NEW`.", width=98, break_on_hyphens=False)
    text = experiment_spec(spec_name(study), opts.budget, n, base, rows, comments,
                           f"study {study}: baseline, default coefficient and the tuned values")
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / f"{study}.toml"
    write_text(spec, text)
    path = folder / RECORD
    write_json(path, {**record, "spec": spec.name})
    return spec, path


def experiment_spec(name: str, budget: str, seeds: int, base: Mapping[str, Any], rows: Mapping[str, dict[str, Any]],
                    comments: list[str], description: str) -> str:
    """TOML text of an experiment with a baseline row and `rows` (variant -> dotted overrides on `base`).
    Values are written as the config coerces them (a --set "24" becomes 24)."""
    lines = [*(f"# {c}" for c in comments), "", "[experiment]", f"name = {json.dumps(name)}",
             f"description = {json.dumps(description)}", f"budget = {json.dumps(budget)}", f"seeds = {seeds}",
             f'baseline = "{BASELINE}"', "", "[base]"]
    lines += [f"{section} = {_inline(values)}" for section, values in _sections(_coerced(base, budget)).items()]
    lines += ["", "[axes.variant]", f"{BASELINE} = {{ baseline = true }}"]
    for variant, over in rows.items():
        values = _coerced({**base, **over}, budget)
        tables = _sections({k: values[k] for k in over})
        lines.append(f"{variant} = {{ {', '.join(f'{s} = {_inline(v)}' for s, v in tables.items())} }}")
    return "\n".join(lines) + "\n"


def _coerced(overrides: Mapping[str, Any], budget: str) -> dict[str, Any]:
    """Each override's value as the config holds it (types coerced, nothing resolved added)."""
    resolved = flatten(configure(None, dict(overrides), budget).to_dict())
    return {key: resolved[key] for key in overrides}


def _sections(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key in sorted(flat):
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = flat[key]
    return out


def _inline(values: Mapping[str, Any]) -> str:
    """`{ k = 3, layout = "2d" }`: JSON's numbers, strings, booleans and lists are TOML's."""
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in values.items()) + " }"
