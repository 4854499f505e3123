"""The Ray executor computes the same cells as the local one: byte-equal results tables, resumable across
executors (a local Ray with two CPUs, started and shut down by the test)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from sanitas.checks import model_randomization
from sanitas.models import build_model

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_executor():
    from sanitas.executors import RayExecutor

    ex = RayExecutor(num_cpus=2)
    yield ex
    ex.close()
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return build_model("cnn").eval(), torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])


METHODS = ["gradient", "integrated_gradients(steps=4)", "guided_backprop"]


def _run(small, out, executor, **kw):
    m, x, y = small
    return model_randomization(m, x, y, METHODS, ["spearman_abs", "ssim"], draws=2, out=out, calibrate=False,
                               executor=executor, **kw)


def test_ray_writes_the_same_tables_as_the_local_executor(small, ray_executor, tmp_path):
    local = _run(small, tmp_path / "local", None)
    remote = _run(small, tmp_path / "ray", ray_executor)
    for name in ("results.csv", "results.parquet", "references.csv"):
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes(), name
    pd.testing.assert_frame_equal(local.verdicts(per="stage"), remote.verdicts(per="stage"))
    assert ray.is_initialized()  # the caller's Ray is left running


def test_a_run_started_locally_resumes_on_ray(small, ray_executor, tmp_path):
    out = tmp_path / "mixed"
    full = _run(small, tmp_path / "full", None)
    cells = out / "cells"
    _run(small, out, None)
    for f in sorted(cells.glob("*.pt"))[::2]:  # half the cells lost, as after an interruption
        f.unlink()
    resumed = _run(small, out, ray_executor)
    assert (out / "results.csv").read_bytes() == (tmp_path / "full" / "results.csv").read_bytes()
    assert len(resumed.table) == len(full.table)


def test_the_executor_can_be_named(small, tmp_path):
    from sanitas.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown executor"):
        _run(small, tmp_path / "x", "dask")
