"""A new user's first hour (issue 20): method aliases that say so, runs on nn.Sequential models (layer names
are numbers) that resume, progress that suits log files, a light `import`, and the Eq. 13 check that says when
it does not hold for a model and why."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from sanitas.cli import main


def test_methods_lists_every_alias():
    """explain(method="saliency") runs gradient: that name must be visible where methods are listed."""
    from sanitas.explain import EXPLAINERS

    out = CliRunner().invoke(main, ["methods"]).output
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(" ")}
    assert "(also: saliency, vanilla_gradient)" in lines["gradient"]
    for name in EXPLAINERS.names():
        for alias in EXPLAINERS.aliases(name):
            assert alias in lines[name], (name, alias)
    assert "Captum" in out and "f(model, x, target)" in out


def _sequential(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    path = tmp_path / "seq.pt"
    torch.save(net, path)
    return net, path


def test_sequential_runs_resume_and_name_their_stages(tmp_path):
    """nn.Sequential layers are named 0, 2, 5, 7: a resumed run gives the same table (stage and layer names are
    strings), and the stages read '7 Linear' where a number alone says nothing."""
    from sanitas.checks import model_randomization
    from sanitas.data import load_dataset

    net, path = _sequential(tmp_path)
    ds = load_dataset("digits", "test").sample(4)
    out = tmp_path / "api"
    first = model_randomization(net, ds.x, ds.y, methods=["gradient", "gradcam"],
                                metrics=["spearman_abs"], out=out, quiet=True)
    again = model_randomization(net, ds.x, ds.y, methods=["gradient", "gradcam"],
                                metrics=["spearman_abs"], out=out, quiet=True)
    pd.testing.assert_frame_equal(first.table, again.table)
    assert set(map(type, first.table["variant"])) == {str}
    args = ["randomize", str(path), "-d", "digits", "-n", "4", "--methods", "gradient", "--metrics", "spearman_abs",
            "-q", "--out", str(tmp_path / "cli")]
    r1, r2 = CliRunner().invoke(main, args), CliRunner().invoke(main, args)
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    assert "7 Linear" in r1.output and "0 Conv2d" in r1.output and r1.output == r2.output
    assert "7 Linear" in (tmp_path / "cli" / "report.html").read_text()


def test_sequential_blocks_in_a_config_and_evaluate_layers(tmp_path):
    """YAML reads `blocks: [5, 7]` as numbers, and evaluate's per-layer methods named layer 0 as a number: both
    crashed on nn.Sequential models; both now run, and resume."""
    from conftest import study_config

    _, path = _sequential(tmp_path)
    config = study_config(tmp_path / "seq.yaml", {"check": "model_randomization", "model": str(path),
                                                  "blocks": [5, 7], "methods": ["gradient"],
                                                  "metrics": ["spearman_abs"]})
    for _ in range(2):
        r = CliRunner().invoke(main, ["run", str(config), "--out", str(tmp_path / "study"), "-q"])
        assert r.exit_code == 0, r.output
    table = pd.read_parquet(tmp_path / "study" / "one" / "results.parquet")
    assert list(dict.fromkeys(table["variant"])) == ["original", "7", "5", "2", "0"]
    args = ["evaluate", str(path), "-d", "digits", "-n", "4", "--layers", "all", "--shuffles", "1", "-q",
            "--out", str(tmp_path / "ev")]
    for _ in range(2):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.output


def test_progress_is_lines_in_log_files(monkeypatch, capsys):
    """Not on a terminal: a line every LINE_SECONDS and one at the end, never carriage returns."""
    from sanitas.utils import progress as P

    monkeypatch.setattr(P, "LINE_SECONDS", 0.0)
    assert list(P.progress(range(3), desc="variants", quiet=False)) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines() == ["variants: 1/3 (0 s)", "variants: 2/3 (0 s)", "variants: 3/3 done in 0 s"]
    assert list(P.progress(range(3), desc="quiet", quiet=True)) == [0, 1, 2]
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("SANITAS_QUIET", "1")
    list(P.progress(range(3), desc="env"))
    assert capsys.readouterr().err == ""


def test_quiet_environment_reaches_commands_without_the_flag(monkeypatch, tmp_path):
    """SANITAS_QUIET=1 hides progress and status lines of a command run without -q (the flag's default used to
    override it)."""
    monkeypatch.setenv("SANITAS_QUIET", "1")
    r = CliRunner().invoke(main, ["randomize", "linear", "-d", "digits", "-n", "4", "--methods", "gradient",
                                  "--metrics", "spearman_abs", "--out", str(tmp_path / "q")])
    assert r.exit_code == 0, r.output
    assert "variants" not in r.output and "model:" not in r.output


def _imported(code: str) -> set[str]:
    """Top-level packages imported by ``code`` in a fresh interpreter (of the sanitas these tests import)."""
    import os
    from pathlib import Path

    import sanitas

    env = {**os.environ, "PYTHONPATH": str(Path(sanitas.__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True, env=env).stdout.split()
    return {m.split(".")[0] for m in out}


def test_light_imports():
    """`import sanitas`, the command line's startup and reading a model spec need neither torch nor the plotting
    and science stack; those are imported where they are used."""
    heavy = {"torch", "pandas", "matplotlib", "scipy", "skimage", "sklearn"}
    assert not heavy & _imported("import sanitas")
    assert not heavy & _imported("import sanitas.cli")
    assert not heavy & _imported("from sanitas.models import model_source\nmodel_source('m.py:Net@w.pt')")
    assert not {"matplotlib", "scipy", "skimage"} & _imported("import sanitas.checks, sanitas.explain, sanitas.data")
    # the bundled digits are read from scikit-learn's file: importing scikit-learn took 2 s of `sanitas layers`
    assert "sklearn" not in _imported("from sanitas.data import load_dataset\nload_dataset('digits', 'test')")


def test_report_of_a_study_needs_no_torch(tiny_run):
    """`sanitas report DIR` of a `run`/`reproduce` directory reads tables and writes HTML: no torch, no plotting."""
    code = f"from sanitas.experiments.rebuild import rebuild\nrebuild({str(tiny_run.out)!r})"
    assert not {"torch", "matplotlib", "scipy"} & _imported(code)


class _Normalized(nn.Module):
    """Input normalization inside forward, as torchvision-style user models do."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(0.5))
        self.register_buffer("std", torch.tensor(0.25))
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 64, 10)

    def forward(self, x):
        z = torch.relu(self.conv((x - self.mean) / self.std))
        return self.fc(z.flatten(1))


def test_biases_say_when_eq13_does_not_hold_and_why(tmp_path):
    from sanitas.data import load_dataset
    from sanitas.evaluate.biases import bias_analysis, offset_without_biases

    torch.manual_seed(0)
    norm = _Normalized().eval()
    x = load_dataset("digits", "test").x[:4]
    assert offset_without_biases(norm, x) > 0.1
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10)).eval()
    assert offset_without_biases(plain, x) == 0.0
    res = bias_analysis([norm, plain], "digits", 8, quiet=True)
    holds = dict(zip(res.models["model"], res.models["decomposition_holds"]))
    assert holds == {"_Normalized0": False, "Sequential1": True}
    assert "input normalization (x - mean) / std" in res.meta["notes"]["_Normalized0"]
    torch.save(norm, tmp_path / "norm.pt")
    r = CliRunner().invoke(main, ["biases", str(tmp_path / "norm.pt"), "-d", "digits", "-n", "8", "-q",
                                  "--out", str(tmp_path / "b")])
    assert r.exit_code == 0 and "Eq. 13 does not hold" in r.output and "-mean / std is a bias" in r.output


def test_captum_objects_and_functions_as_methods():
    """A function works wherever a method name does; a Captum object explains the model it was built with, so
    in a check (which explains copies) it is refused with the function to write instead, never run silently on
    the unchanged model (every stage then scored 1.0)."""
    captum = pytest.importorskip("captum.attr")
    from sanitas.checks import model_randomization
    from sanitas.data import load_dataset
    from sanitas.errors import ConfigError
    from sanitas.explain import explain
    from sanitas.models import build_model

    torch.manual_seed(0)
    net = build_model("cnn", (1, 8, 8), 10)
    ds = load_dataset("digits", "test").sample(3)
    assert torch.allclose(explain(net, ds.x, ds.y, method=captum.Saliency(net)),
                          explain(net, ds.x, ds.y, method="gradient").abs(), atol=1e-6)
    with pytest.raises(ConfigError, match=r"lambda model, x, target: Saliency\(model\)"):
        model_randomization(net, ds.x, ds.y, methods={"captum": captum.Saliency(net)},
                            metrics=["spearman_abs"], quiet=True)
    res = model_randomization(net, ds.x, ds.y,
                              methods={"captum": lambda model, x, target: captum.Saliency(model).attribute(x, target=target)},
                              metrics=["spearman_abs"], quiet=True)
    assert res.pivot("spearman_abs").iloc[0, 1:].max() < 0.9  # the randomized stages are explained
