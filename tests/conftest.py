"""Shared fixtures. Tests never touch the user's cache and never download anything."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory):
    old = {k: os.environ.get(k) for k in ("SANITAS_CACHE", "SANITAS_QUIET", "SANITAS_OFFLINE")}
    # SANITAS_TEST_CACHE lets a developer keep trained test models between runs.
    os.environ["SANITAS_CACHE"] = os.environ.get("SANITAS_TEST_CACHE") or str(tmp_path_factory.mktemp("cache"))
    os.environ["SANITAS_QUIET"] = "1"
    os.environ["SANITAS_OFFLINE"] = "1"
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _need_fashion_mnist():
    from sanitas.data import idx_datasets

    if idx_datasets.locate("fashion-mnist") is None:
        msg = ("Fashion-MNIST is not installed here (`apt-get install dataset-fashion-mnist` as root, "
               "or put the IDX files in $SANITAS_DATA/fashion-mnist/)")
        if os.environ.get("SANITAS_REQUIRE_DATA"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="session")
def fmnist_test():
    """The Fashion-MNIST test split (skips, or fails under SANITAS_REQUIRE_DATA, if absent)."""
    _need_fashion_mnist()
    from sanitas.data import load_dataset

    return load_dataset("fashion-mnist", "test")


@pytest.fixture(scope="session")
def trained_cnn():
    """The paper CNN trained briefly on 12k Fashion-MNIST images (~85-88% test accuracy).

    Small enough for CI (about 20 s on 2 CPU cores), trained enough that explanations
    depend on learned weights. Cached under the test cache for the session.
    """
    _need_fashion_mnist()
    from sanitas.models import train

    return train("cnn", "fashion-mnist", epochs=1, train_size=12000, seed=0).model


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a busy 2-core machine two threads make small ops 4-100x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)
