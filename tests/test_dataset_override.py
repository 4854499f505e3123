"""`reproduce --dataset mnist`: the same protocol on another dataset, here a tiny fake MNIST written as IDX
files where the loader looks ($SANITAS_DATA/mnist/, the official file names; files found on disk are read as
they are, only downloads are checked against the published SHA-256), so no test needs the network."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from sanitas.data import load_dataset, write_idx
from sanitas.data.idx_datasets import SPLIT_FILES, locate
from sanitas.errors import DatasetNotFoundError
from sanitas.experiments import resolve, run_config

SIZES = {"train": 60, "test": 12}


def _fake_mnist(root, compress=False):
    """Digit-like 28x28 images: a bright bar whose position is the label, plus noise."""
    rng = np.random.default_rng(0)
    for split, (images, labels) in SPLIT_FILES.items():
        n = SIZES[split]
        y = np.arange(n) % 10
        x = (rng.random((n, 28, 28)) * 40).astype(np.uint8)
        for i, label in enumerate(y):
            x[i, 4:24, 2 + 2 * label:4 + 2 * label] = 250
        suffix = ".gz" if compress else ""
        write_idx(root / "mnist" / (images + suffix), x)
        write_idx(root / "mnist" / (labels + suffix), y.astype(np.uint8))
    return root / "mnist"


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch):
    monkeypatch.setenv("SANITAS_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SANITAS_SYSTEM_DATA", str(tmp_path / "no-system-data"))
    monkeypatch.setenv("SANITAS_CACHE", str(tmp_path / "cache"))   # the models trained on it stay here
    return _fake_mnist(tmp_path / "data")


CONFIG = {
    "paper": "mini", "dataset": "digits", "classes": [str(i) for i in range(10)], "images": 4, "seed": 0,
    "experiments": {
        "cascading": {"check": "model_randomization", "model": "cnn", "methods": ["gradient"],
                      "metrics": ["spearman_abs"]},
        "sum-pool": {"check": "sum_pool_conv", "methods": ["gradient"], "metrics": ["spearman_abs"]},
    },
    "claims": [{"id": "c1", "claim": "gradient changes", "experiment": "cascading",
                "measure": {"method": "gradient", "metric": "spearman_abs", "stages": "first"}, "expect": "< 2"}],
}


def test_resolve_replaces_every_experiments_dataset_and_its_classes():
    cfg = {**CONFIG, "experiments": {**CONFIG["experiments"],
                                     "own": {"check": "input_noise", "dataset": "sample-images"}}}
    got = resolve(cfg, dataset="mnist")
    assert got["dataset"] == "mnist" and "classes" not in got
    assert {e["dataset"] for e in got["experiments"].values()} == {"mnist"}
    assert not any("classes" in e for e in got["experiments"].values())
    assert resolve(cfg)["experiments"]["own"]["dataset"] == "sample-images"   # no override: as written


def test_the_fake_mnist_is_what_the_loader_finds(fake_mnist, tmp_path):
    assert locate("mnist") == fake_mnist
    ds = load_dataset("mnist", "test")
    assert ds.x.shape == (SIZES["test"], 1, 28, 28) and ds.y.tolist() == [i % 10 for i in range(SIZES["test"])]
    # gzip-compressed files are found as well (the official downloads are .gz)
    gz = _fake_mnist(tmp_path / "gz", compress=True)
    assert sorted(p.name for p in gz.iterdir())[0].endswith(".gz")


def test_run_config_runs_the_protocol_on_mnist(fake_mnist, tmp_path):
    out = tmp_path / "out"
    run = run_config(CONFIG, out, quiet=True, report=False, dataset="mnist")
    assert not run.failed, run.failed
    for name in CONFIG["experiments"]:
        assert json.loads((out / name / "done.json").read_text())["spec"]["dataset"] == "mnist"
    study = json.loads((out / "study.json").read_text())
    assert study["config"]["dataset"] == "mnist"
    # the model was trained on the fake MNIST (its cache entry names the dataset) and explained on its images
    from sanitas.utils.paths import cache_dir

    assert list((cache_dir() / "models").glob("cnn-mnist-*.pt"))
    assert not list((cache_dir() / "models").glob("cnn-digits-*.pt"))
    table = pd.read_parquet(out / "sum-pool" / "results.parquet")
    assert table["image"].nunique() == 4
    shown = __import__("torch").load(out / "cascading" / "shown-inputs.pt")
    assert shown.shape[1:] == (1, 28, 28)                       # digits are 8x8: these are the fake MNIST's
    assert run.claims.set_index("id").loc["c1", "verdict"] != "not run"
    # the same directory without the override runs digits again (the dataset is part of an experiment's key)
    again = run_config(CONFIG, out, quiet=True, report=False, only=["sum-pool"])
    assert json.loads((out / "sum-pool" / "done.json").read_text())["spec"]["dataset"] == "digits"
    assert not again.failed


def test_a_dataset_that_is_not_there_fails_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("SANITAS_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("SANITAS_SYSTEM_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("SANITAS_OFFLINE", "1")
    with pytest.raises(DatasetNotFoundError, match="mnist"):
        run_config(CONFIG, tmp_path / "out", quiet=True, report=False, dataset="mnist")
    assert not (tmp_path / "out" / "cascading").exists()


def test_reproduce_and_the_command_line_pass_the_dataset_through(fake_mnist, tmp_path, stand_in_runners):
    from sanitas.cli import main
    from sanitas.experiments import reproduce

    seen = stand_in_runners
    reproduce("sanity-checks", tmp_path / "api", quick=True, quiet=True, dataset="mnist")
    assert seen and {spec["dataset"] for spec in seen} == {"mnist"}
    assert json.loads((tmp_path / "api" / "reproduce.json").read_text())["dataset"] == "mnist"
    seen.clear()
    res = CliRunner().invoke(main, ["reproduce", "sanity-checks", "--quick", "--quiet", "--dataset", "mnist",
                                    "--out", str(tmp_path / "cli")])
    assert seen and {spec["dataset"] for spec in seen} == {"mnist"}, res.output
    cfg = yaml.safe_load(json.dumps(json.loads((tmp_path / "cli" / "sanity-checks" / "study.json").read_text())))
    assert cfg["config"]["dataset"] == "mnist"
