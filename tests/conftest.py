"""Shared fixtures: one results directory per test session (caches are reused across tests)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from cli_helpers import SMALL

from mirai_lab.config import build_config
from mirai_lab.data.tokens import prepare_tokens
from mirai_lab.evaluate.evaluator import Evaluator

torch.set_num_threads(1)  # tests run beside other processes; one thread avoids oversubscription

TINY = {
    "data.dataset": "synthetic",
    "tokenizer.codebook_size": 32,
    "tokenizer.iters": 5,
    "model.preset": "tiny",
    "train.steps": 12,
    "train.batch_size": 16,
    "train.eval_every": 6,
    "train.threads": 1,
    "eval.metrics": False,
    "eval.n_samples": 20,
    "eval.n_samples_final": 20,
    "foresight.encoder_steps": 20,
}


@pytest.fixture(scope="session")
def session_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("results")


@pytest.fixture
def tiny_overrides() -> dict:
    return dict(TINY)


@pytest.fixture(scope="session")
def small_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The caches that every SMALL smoke run reads (tokens, the domain classifier, the floors at
    its sample count), built once per session: the classifier alone costs about as much as
    five smoke runs. Building them inside a sweep, by
    workers that start together, stays covered by test_two_worker_processes_through_the_journal
    (tests/e2e/test_sweep.py), which starts cold."""
    cache = tmp_path_factory.mktemp("small") / "cache"
    cfg = build_config(None, SMALL, "smoke")
    Evaluator(cfg, prepare_tokens(cfg.data, cfg.tokenizer, cache), cache).floors(cfg.eval.n_samples_final)
    return cache


@pytest.fixture
def warm_results(tmp_path: Path, small_cache: Path) -> Path:
    """A fresh results directory (the test's tmp_path) holding a copy of the SMALL caches."""
    shutil.copytree(small_cache, tmp_path / "cache")
    return tmp_path
