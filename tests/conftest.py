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


@pytest.fixture(scope="session")
def trained_cnn_seed1():
    """The same CNN and training as ``trained_cnn`` with another seed: the ceiling of the verdicts."""
    _need_fashion_mnist()
    from sanitas.models import train

    return train("cnn", "fashion-mnist", epochs=1, train_size=12000, seed=1).model


@pytest.fixture(scope="session")
def trained_vit():
    """Hugging Face's ViT (the ``hf-vit`` reference model) trained for one epoch on 3,000 Fashion-MNIST
    images (~50% test accuracy, about 20 s on 2 cores): its maps depend on learned weights."""
    _need_fashion_mnist()
    from sanitas.models import train

    return train("hf-vit", "fashion-mnist", epochs=1, train_size=3000, seed=0, quiet=True).model


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


# A tiny study config: a few seconds on 2 cores (cnn trains on digits in ~5 s).
TINY = """
paper: tiny
title: Tiny test study
dataset: digits
seed: 0
images: 6
experiments:
  cascading:
    check: model_randomization
    model: cnn
    methods: [gradient, "competitive(input_x_gradient)"]
    metrics: [spearman_abs, ssim]
    map_stats: [nonzero_fraction]
  complete:
    check: completeness
    model: cnn
    methods: [input_x_gradient]
  never:
    check: model_randomization
    model: cnn
    methods: [gradient]
claims:
  - {id: t1, claim: the gradient changes, experiment: cascading,
     measure: {method: gradient, metric: spearman_abs, stages: first}, expect: "< 0.99"}
  - {id: t2, claim: impossible R2, experiment: complete, measure: {scalar: r2/input_x_gradient}, expect: "> 2"}
  - {id: t3, claim: skipped experiment, experiment: never, measure: {method: gradient, metric: spearman_abs},
     expect: "< 1"}
  - {id: t4, claim: unknown metric, experiment: cascading, measure: {method: gradient, metric: hog}, expect: "< 1"}
quick:
  experiments:
    never: {skip: not in the quick profile}
"""


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="session")
def tiny_run(tiny_config, tmp_path_factory):
    """A small real study (cnn on digits, a few seconds): what the report and browser tests read."""
    from sanitas.experiments import run_config

    out = tmp_path_factory.mktemp("run")
    return run_config(tiny_config, out, quick=True, quiet=True)


def tiny_study(body: str, images: int = 6) -> dict:
    """A study config on digits (``paper: tiny``, seed 0, ``images`` images) with the experiments and claims of
    ``body`` (YAML)."""
    import yaml

    return yaml.safe_load(f"paper: tiny\ndataset: digits\nseed: 0\nimages: {images}\n{body}")


def study_config(path, experiment: dict, **top):
    """Write a one-experiment study config (``paper: study``, digits, 4 images unless ``top`` says otherwise)."""
    import yaml

    cfg = {"paper": "study", "dataset": "digits", "images": 4, **top, "experiments": {"one": experiment}}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def stand_in_runners(monkeypatch):
    """Every experiment of a reproduce/run_config call runs a fast stand-in (check classes and registered
    runners alike), which writes a one-row table; the specs it was given are listed in the returned list."""
    import importlib

    import pandas as pd

    from sanitas.experiments.runners import Outcome

    reproduce_mod = importlib.import_module("sanitas.experiments.reproduce")  # the package exports a function too

    seen: list[dict] = []

    def fake(spec, out, quiet):
        seen.append(spec)
        t = pd.DataFrame({"method": ["x"], "variant": ["v"], "stage": [1], "metric": ["m"], "image": [0],
                          "value": [0.0]})
        t.to_parquet(out / "results.parquet")
        return Outcome(t, {"inverse_num_classes": 0.1}, None, [], None, 0.0)

    monkeypatch.setattr(reproduce_mod, "runner_for", lambda kind: fake)
    return seen
