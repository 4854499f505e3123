"""Fault injection (issue 21): kill -9 at random moments, every kind of stored file damaged, two writers at
once, a read-only and a full output directory. Each ends in the same results as a clean run, or in a clear
error; never in a mixed or silently changed table.

The workload is tests/_fault_run.py (a small cnn on 8x8 inputs, three methods, five stages). The linear
kernels that sanitas picks by timing are turned off here, in the test process and its children, so that
equal work gives equal bytes whatever the machine's load.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from sanitas.cli import main
from sanitas.errors import StorageError

import _fault_run

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _plain_kernels(monkeypatch):
    monkeypatch.setattr("sanitas.explain.kernels.ENABLED", False)
    monkeypatch.setenv("SANITAS_CPU_KERNELS", "0")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A clean run (6 images) and its duration; the tables every faulted run must reproduce exactly."""
    out = tmp_path_factory.mktemp("reference")
    t = time.perf_counter()
    with _like_a_test():
        res = _fault_run.run(out)
    return out, res, time.perf_counter() - t


@contextlib.contextmanager
def _like_a_test():
    """Module fixtures run before the per-test fixtures: the same settings, restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("sanitas.explain.kernels.ENABLED", False)
            yield
    finally:
        torch.set_num_threads(threads)


def _same_as(reference, out: Path, res=None) -> None:
    ref_dir, ref_res, _ = reference
    for name in ("results.csv", "results.parquet", "calibration.csv"):
        assert (out / name).read_bytes() == (ref_dir / name).read_bytes(), name
    if res is not None:
        pd.testing.assert_frame_equal(res.table, ref_res.table)
        for key, maps in ref_res.maps.items():
            assert torch.equal(res.maps[key], maps), key


def _child(out: Path, images: int = 6) -> subprocess.Popen:
    env = {**os.environ, "SANITAS_CPU_KERNELS": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, str(HERE / "_fault_run.py"), str(out), str(images)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# -- kill -9 ----------------------------------------------------------------------------------------------

def test_kill_9_at_random_moments_then_resume_equals_a_clean_run(reference, tmp_path):
    """Three runs killed at random moments (seeded) of their work; a fourth resumes: the same bytes as a
    clean run. A killed run leaves no lock behind (the next one starts) and no half-written file."""
    ref_dir, _, seconds = reference
    total = len(list((ref_dir / "cells").glob("*.pt")))
    out = tmp_path / "killed"
    rnd = random.Random(21)

    def cells() -> int:
        return len(list((out / "cells").glob("*.pt")))

    finished = []  # cells on disk after each kill
    # random moments: once a random number of cells is on disk, a random fraction of a cell's time later
    for target in sorted(rnd.sample(range(1, total), 3)):
        child = _child(out)
        assert child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while cells() < target and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rnd.uniform(0, seconds / total))
        child.send_signal(signal.SIGKILL)
        _, stderr = child.communicate(timeout=60)
        assert "error" not in stderr, stderr
        finished.append(cells())
    assert any(0 < n < total for n in finished), finished  # the kills landed mid-run
    if (out / "results.csv").exists():  # written atomically: complete, or not there at all
        assert (out / "results.csv").read_bytes() == (reference[0] / "results.csv").read_bytes()
    res = _fault_run.run(out)
    _same_as(reference, out, res)


# -- damaged files ------------------------------------------------------------------------------------------

def _copy(reference, tmp_path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(reference[0], out)
    return out


def _flip(path: Path, fraction: float) -> None:
    data = bytearray(path.read_bytes())
    data[int(fraction * (len(data) - 1))] ^= 0x5A
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _cell(out: Path, stage: int, method: str) -> Path:
    (path,) = [p for p in (out / "cells").glob(f"{stage:03d}-*.pt") if p.name.split("-", 1)[1].startswith(method)]
    return path


CELL_DAMAGE = {
    **{f"flip-at-{f:.2f}": (lambda out, f=f: _flip(_cell(out, 2, "integrated"), f))
       for f in (0.0, 0.02, 0.1, 0.35, 0.6, 0.85, 1.0)},
    "truncated": lambda out: _truncate(_cell(out, 3, "gradient")),
    "empty": lambda out: _cell(out, 1, "smoothgrad").write_bytes(b""),
    "copied-from-another-stage": lambda out: shutil.copy(_cell(out, 3, "gradient"), _cell(out, 1, "gradient")),
}


@pytest.mark.parametrize("damage", list(CELL_DAMAGE))
def test_damaged_cell_is_recomputed_with_a_warning(reference, tmp_path, capfd, damage):
    out = _copy(reference, tmp_path)
    CELL_DAMAGE[damage](out)
    capfd.readouterr()
    res = _fault_run.run(out)
    assert "recomputing this cell" in capfd.readouterr().err
    _same_as(reference, out, res)


def test_cell_of_another_config_is_not_mixed_in(reference, tmp_path, capfd):
    """Item 2/3: a cell written by a run with another config (4 images) into this directory is rejected."""
    other = tmp_path / "other"
    _fault_run.run(other, images=4)
    out = _copy(reference, tmp_path)
    shutil.copy(_cell(other, 2, "gradient"), _cell(out, 2, "gradient"))
    capfd.readouterr()
    res = _fault_run.run(out)
    assert "written by a run with another config" in capfd.readouterr().err
    _same_as(reference, out, res)


@pytest.mark.parametrize("name", ["run.json", "results.csv", "results.parquet", "meta.json", "calibration.csv"])
def test_damaged_output_file_is_rewritten(reference, tmp_path, name):
    out = _copy(reference, tmp_path)
    _truncate(out / name)
    res = _fault_run.run(out)
    _same_as(reference, out, res)


@pytest.mark.parametrize("name", ["meta.json", "results.parquet"])
def test_report_names_a_damaged_file_in_one_line(reference, tmp_path, name):
    out = _copy(reference, tmp_path)
    _truncate(out / name)
    r = CliRunner().invoke(main, ["report", str(out)])
    assert r.exit_code == 1 and f"{name} is damaged" in r.output and "Traceback" not in r.output


STUDY = """\
paper: faults
dataset: digits
images: 4
experiments:
  casc:
    check: model_randomization
    model: {model}
    methods: [gradient]
    metrics: [spearman_abs]
claims:
  - {{id: null-band, claim: c, experiment: casc, measure: {{calibration: input_x_uniform, metric: spearman_abs}},
     expect: "< 2"}}
  - {{id: drop, claim: c, experiment: casc, measure: {{method: gradient, metric: spearman_abs, stages: last}},
     expect: "< 2"}}
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A one-experiment study on the workload's model, run once cleanly."""
    from sanitas.experiments import run_config

    d = tmp_path_factory.mktemp("study")
    model, _, _ = _fault_run.workload()
    torch.save(model, d / "model.pt")
    (d / "study.yaml").write_text(STUDY.format(model=d / "model.pt"))
    with _like_a_test():
        run = run_config(d / "study.yaml", d / "clean", quiet=True)
    return d, run


@pytest.mark.parametrize("name", ["casc/results.parquet", "casc/summary.parquet", "casc/calibration.csv",
                                  "casc/done.json"])
def test_damaged_study_file_is_recomputed_with_a_warning(study, tmp_path, capfd, name):
    """Item 11: these crashed every re-run (parquet) or turned a claim into 'not run' for good (csv)."""
    from sanitas.experiments import run_config

    d, clean = study
    out = tmp_path / "study"
    shutil.copytree(d / "clean", out)
    _truncate(out / name)
    capfd.readouterr()
    again = run_config(d / "study.yaml", out, quiet=True)
    assert "stored results cannot be used" in capfd.readouterr().err
    pd.testing.assert_frame_equal(again.claims, clean.claims)
    if name != "casc/done.json":  # done.json records the run's seconds
        assert (out / name).read_bytes() == (d / "clean" / name).read_bytes()
    assert set(again.claims["verdict"]) == {"holds"}


@pytest.mark.parametrize("name", ["study.json", "casc/results.parquet", "claims.csv", "reproduce.json"])
def test_report_on_a_damaged_study(study, tmp_path, name):
    """`sanitas report` gave a traceback on each of these; now a one-line error naming the file, or (for one
    experiment's table, or the claims it re-judges anyway) a warning and a report."""
    d, _ = study
    out = tmp_path / "study"
    shutil.copytree(d / "clean", out)
    if name == "reproduce.json":
        (out / name).write_text('{"papers": ["fau')
    else:
        _truncate(out / name)
    r = CliRunner().invoke(main, ["report", str(out)])
    assert "Traceback" not in r.output
    if name in ("study.json", "reproduce.json"):
        assert r.exit_code == 1 and f"{name} is damaged" in r.output
    else:
        assert r.exit_code == 0, r.output
        expected = "not run" if name.startswith("casc") else "holds"
        assert expected in r.output


def test_damaged_checkpoint_metadata_retrains_with_a_warning(capfd):
    from sanitas.models import train

    first = train("linear", "digits", epochs=1, seed=8, quiet=True)
    _truncate(first.path.with_suffix(".json"))
    capfd.readouterr()
    again = train("linear", "digits", epochs=1, seed=8, quiet=True)
    assert "unreadable cache entry" in capfd.readouterr().err and not again.from_cache
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    assert train("linear", "digits", epochs=1, seed=8, quiet=True).from_cache  # repaired


# -- two writers ---------------------------------------------------------------------------------------------

def test_two_concurrent_writers_never_mix(reference, tmp_path):
    """Item 2: two runs with different configs (6 and 4 images) into one directory at the same time. Each
    finishes or is refused with a clear message; the table left is exactly one config's, never a mix."""
    other = tmp_path / "four"
    _fault_run.run(other, images=4)
    out = tmp_path / "shared"
    a, b = _child(out, 6), _child(out, 4)
    results = [p.communicate(timeout=120) + (p.returncode,) for p in (a, b)]
    for _, stderr, code in results:
        assert code in (0, 1), stderr
        if code == 1:
            assert "is being written by another sanitas run" in stderr, stderr
    assert any(code == 0 for *_, code in results)
    table = (out / "results.csv").read_bytes()
    assert table in ((reference[0] / "results.csv").read_bytes(), (other / "results.csv").read_bytes())
    n_images = pd.read_csv(out / "results.csv")["image"].nunique()
    assert _fault_run.run(out, images=n_images).table.equals(pd.read_parquet(out / "results.parquet"))


# -- read-only and full output directories ------------------------------------------------------------------

@pytest.fixture
def tmpfs():
    """``mount(path, size, ro)``: a small tmpfs at ``path``; skips where this process may not mount."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(path: Path, size: str, ro: bool = False) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        opts = f"size={size}" + (",ro" if ro else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True,
                           check=False)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _remount(path: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", str(path)], check=True, capture_output=True)


def test_read_only_output_directory(reference, tmp_path, tmpfs):
    """A new results directory on a read-only file system, and finished results whose file system became
    read-only: a clear error naming the directory; the finished results are left exactly as they were."""
    ro = tmpfs(tmp_path / "ro", "1m", ro=True)
    with pytest.raises(StorageError, match="Read-only file system; choose a directory you can write to"):
        _fault_run.run(ro / "results")
    disk = tmpfs(tmp_path / "disk", "4m")
    _fault_run.run(disk / "results")
    _same_as(reference, disk / "results")
    _remount(disk, "ro")
    with pytest.raises(StorageError, match="Read-only file system"):
        _fault_run.run(disk / "results")
    _same_as(reference, disk / "results")
    r = CliRunner().invoke(main, ["report", str(disk / "results")])
    assert r.exit_code == 1 and "Read-only file system" in r.output and "Traceback" not in r.output


def test_full_output_directory(reference, tmp_path, tmpfs):
    """A disk that fills up mid-run: a clear error and no table; with space again, the run resumes to the
    same bytes as a clean run."""
    disk = tmpfs(tmp_path / "small", "96k")
    with pytest.raises(StorageError, match="No space left on device; free some space there"):
        _fault_run.run(disk / "results")
    assert not (disk / "results" / "results.csv").exists()
    assert list((disk / "results" / "cells").glob("*.pt"))  # it failed mid-run, after some cells
    _remount(disk, "size=4m")
    res = _fault_run.run(disk / "results")
    _same_as(reference, disk / "results", res)


def test_full_cache_keeps_the_trained_model_in_memory(tmp_path, tmpfs, monkeypatch, capfd):
    """Item 14: train lost the model it had just trained when the checkpoint could not be written."""
    from sanitas.models import train

    cache = tmpfs(tmp_path / "cache", "64k")
    (cache / "filler").write_bytes(b"\0" * (60 * 1024))
    monkeypatch.setenv("SANITAS_CACHE", str(cache))
    res = train("linear", "digits", epochs=1, seed=9, quiet=True)
    err = capfd.readouterr().err
    assert not res.saved and "could not be saved" in err and str(cache / "models") in err
    assert 0 < res.test_accuracy <= 1 and not list((cache / "models").glob("*.pt"))
    monkeypatch.setenv("SANITAS_CACHE", str(tmp_path / "roomy"))
    saved = train("linear", "digits", epochs=1, seed=9, quiet=True)
    assert saved.saved
    for a, b in zip(res.model.state_dict().values(), saved.model.state_dict().values()):
        assert torch.equal(a, b)
    r = CliRunner().invoke(main, ["train", "linear", "-d", "digits", "--epochs", "1", "--seed", "9"],
                           env={"SANITAS_CACHE": str(cache)})
    assert r.exit_code == 0 and "NOT saved" in r.output
