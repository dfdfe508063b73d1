"""Shared fixtures: one results directory per test session (caches are reused across tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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
