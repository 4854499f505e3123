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
    return model_randomization(m, x, y, methods=METHODS,
                               metrics=["spearman_abs", "ssim"], draws=2, out=out, calibrate=False,
                               executor=executor, **kw)


def test_ray_writes_the_same_tables_as_the_local_executor(small, ray_executor, tmp_path):
    local = _run(small, tmp_path / "local", None)
    remote = _run(small, tmp_path / "ray", ray_executor)
    for name in ("results.csv", "results.parquet", "references.csv"):
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes(), name
    pd.testing.assert_frame_equal(local.verdicts(per="stage"), remote.verdicts(per="stage"))
    assert ray.is_initialized()  # the caller's Ray is left running


def test_the_quality_check_on_ray_writes_the_local_tables(small, ray_executor, tmp_path):
    """The decision-flip evaluation is a check on the engine too: its cells (explain, then the flip search) run as
    Ray tasks and give the local tables byte for byte."""
    from sanitas.evaluate import evaluate_quality

    m, x, _ = small
    kw = dict(methods=["gradient", "random"], n_shuffles=2, figures=False, test_method="asymptotic", quiet=True)
    evaluate_quality(m, x, out=tmp_path / "local", **kw)
    remote = evaluate_quality(m, x, out=tmp_path / "ray", executor=ray_executor, **kw)
    for name in ("results.csv", "results.parquet"):
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes(), name
    assert set(remote.table["method"]) == {"gradient", "random"}


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


def test_run_takes_the_ray_executor(tiny_config, tmp_path):
    """`sanitas run CONFIG --executor ray` computes the model randomization cells on Ray; the tables equal
    those of the local run, and the Ray the command started is shut down. (Both runs here, with this
    test's thread count: a session fixture is built before the one-thread fixture applies, and a float
    reduction may round differently with another thread count.)"""
    from click.testing import CliRunner

    from sanitas.cli import main

    if ray.is_initialized():  # the module's executor fixture may still hold a Ray: the command must start its own
        ray.shutdown()
    out, local = tmp_path / "on-ray", tmp_path / "local"
    for where, executor in ((out, "ray"), (local, "local")):
        res = CliRunner().invoke(main, ["run", str(tiny_config), "--quick", "--out", str(where), "-q",
                                        "--executor", executor], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        assert not ray.is_initialized()
    local = local / "cascading"
    for name in ("results.csv", "results.parquet"):
        assert (out / "cascading" / name).read_bytes() == (local / name).read_bytes(), name


def test_an_address_needs_the_ray_executor(tiny_config, tmp_path):
    from click.testing import CliRunner

    from sanitas.cli import main

    res = CliRunner().invoke(main, ["run", str(tiny_config), "--out", str(tmp_path / "x"), "--address", "auto"])
    assert res.exit_code != 0
    assert "--executor ray" in res.output


def test_use_executor_is_scoped(small, tmp_path):
    """Checks inside a use_executor block run there; after the block (also after an error) they run here."""
    from sanitas.executors import LocalExecutor, executor_for, use_executor

    class Counting(LocalExecutor):
        submitted = 0

        def submit(self, fn, *args, gpus: float = 0):
            Counting.submitted += 1
            return super().submit(fn, *args, gpus=gpus)

    ex = Counting()
    with use_executor(ex):
        assert executor_for(None) == (ex, False)
        _run(small, tmp_path / "a", None)
    assert Counting.submitted > 0
    with pytest.raises(RuntimeError):
        with use_executor(ex):
            raise RuntimeError("boom")
    current, owned = executor_for(None)
    assert current is not ex and owned


def test_input_invariance_command_takes_the_ray_executor(tmp_path):
    """The model-comparison commands take --executor too; their tables equal the local run's."""
    from click.testing import CliRunner

    from sanitas.cli import main

    if ray.is_initialized():
        ray.shutdown()
    for executor in ("local", "ray"):
        r = CliRunner().invoke(main, ["input-invariance", "linear", "--dataset", "digits", "--methods",
                                      "gradient,input_x_gradient", "--metrics", "spearman,ssim", "--images", "6",
                                      "--out", str(tmp_path / executor), "-q", "--executor", executor])
        assert r.exit_code == 0, r.output
        assert not ray.is_initialized()
    assert (tmp_path / "local" / "results.csv").read_bytes() == (tmp_path / "ray" / "results.csv").read_bytes()
