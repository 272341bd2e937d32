"""Shared fixtures: small subsets of the real Fashion-MNIST, loaded once."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("CLEANTRAIN_NO_APT", "1")
torch.set_num_threads(os.cpu_count() or 1)


@pytest.fixture(scope="session")
def fmnist():
    from cleantrain.data.io import load_dataset

    return load_dataset("fashion-mnist")


@pytest.fixture(scope="session")
def small(fmnist):
    """(train 4000, test 1000) real Fashion-MNIST images."""
    train, test = fmnist
    return train.head(4000, seed=1), test.head(1000, seed=1)


@pytest.fixture()
def run_cli(capsys):
    from cleantrain.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(autouse=True)
def _fresh_shared_cache():
    """Each test starts without the shared-work results other tests left in memory (defenses/shared.py) and
    with the same global RNG state, so its outcome does not depend on which tests ran before it."""
    from cleantrain.defenses import shared

    shared._memory.clear()
    torch.manual_seed(0)
    yield
