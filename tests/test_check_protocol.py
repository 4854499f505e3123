"""The check protocol (sanitas.checks.base): a new check is one class and a config entry, and every check has
the same signature shape and the same result services (resume, refused methods, verdict tables, files)."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

from sanitas import engine
from sanitas.checks import CHECKS, Check, data_randomization, input_invariance, model_randomization
from sanitas.errors import ConfigError
from sanitas.evaluate import evaluate_quality
from sanitas.experiments.schema import _number


class WeightNoise(Check):
    """A check written for this test only: the model against a copy whose weights carry Gaussian noise of
    ``sigma`` times each tensor's standard deviation (a toy 'randomization')."""

    name = "weight_noise_test"
    options = {"sigma": _number(minimum=0)}

    def __init__(self, model, x, y=None, *, sigma: float = 0.1, **common):
        super().__init__(model, x, y, **common)
        self.sigma = sigma

    def prepare(self):
        super().prepare()
        g = torch.Generator().manual_seed(self.seed)
        self.noisy = copy.deepcopy(self.model)
        with torch.no_grad():
            for p in self.noisy.parameters():
                p.add_(torch.randn(p.shape, generator=g) * p.std().nan_to_num(0.0) * self.sigma)

    def variants(self):
        yield engine.Variant("original", 0, self.model)
        yield engine.Variant(f"noise_{self.sigma:g}", 1, self.noisy)

    def config(self):
        return {"sigma": self.sigma}

    def scalars(self, result):
        return {"sigma": self.sigma}


def _net():
    from sanitas.models import build_model

    torch.manual_seed(0)
    return build_model("cnn", (1, 8, 8), 10).eval()


def test_a_new_check_is_one_class_and_a_config_entry(tmp_path):
    """Registered by its class alone: the schema takes its options (and refuses unknown ones), sanitas run runs
    it from a config entry, and its claims read its table and scalars."""
    from sanitas.experiments import run_config

    assert CHECKS["weight_noise_test"] is WeightNoise
    cfg = {"paper": "toy", "dataset": "digits", "seed": 0, "images": 6,
           "experiments": {"noise": {"check": "weight_noise_test", "model": "cnn", "sigma": 0.5,
                                     "methods": ["gradient", "gradcam"], "metrics": ["spearman_abs"]}},
           "claims": [{"id": "n1", "claim": "noise changes the gradient", "experiment": "noise",
                       "measure": {"method": "gradient", "metric": "spearman_abs", "stages": "last"},
                       "expect": "< 1"},
                      {"id": "n2", "claim": "the scalar", "experiment": "noise", "measure": {"scalar": "sigma"},
                       "expect": "> 0.4"}]}
    run = run_config(cfg, tmp_path, quiet=True)
    assert not run.failed
    table = run.outcomes["noise"].table
    assert set(table["variant"]) == {"original", "noise_0.5"} and set(table["method"]) == {"gradient", "gradcam"}
    assert (tmp_path / "noise" / "results.parquet").exists() and (tmp_path / "noise" / "report.html").exists()
    verdicts = dict(zip(run.claims["id"], run.claims["verdict"]))
    assert verdicts["n2"] == "holds" and verdicts["n1"] in ("holds", "inconclusive")
    bad = {**cfg, "experiments": {"noise": {**cfg["experiments"]["noise"], "sigmaa": 1}}}
    with pytest.raises(ConfigError, match="sigmaa"):
        run_config(bad, tmp_path / "bad", quiet=True)


def test_a_check_resumes_and_leaves_refused_methods_out(tmp_path):
    """What the base class gives every check: finished cells are not recomputed, and a method that cannot
    explain the model is recorded with its reason instead of failing the run."""
    from sanitas.models import build_model

    torch.manual_seed(0)
    net, x = build_model("mlp", (1, 8, 8), 10).eval(), torch.rand(4, 1, 8, 8)  # no conv layer: no GradCAM
    calls = {"n": 0}

    def counted(model, xx, target):
        calls["n"] += 1
        return xx * 2.0

    kw = dict(methods={"counted": counted, "gradcam": "gradcam"}, metrics=["spearman_abs"], out=tmp_path,
              quiet=True, calibrate=False)
    first = WeightNoise(net, x, **kw).run()
    assert calls["n"] == 2  # the model, then its noisy copy
    again = WeightNoise(net, x, **kw).run()
    assert calls["n"] == 2 and again.table.equals(first.table)
    assert set(first.table["method"]) == {"counted"} and "gradcam" in first.meta["refused"]
    assert "conv" in first.meta["refused"]["gradcam"].lower()


def test_every_check_has_one_signature_shape():
    """(model, x, y=None, *, methods, metrics, target, seed, out, quiet, ...) for every check function."""
    for fn in (model_randomization, data_randomization, input_invariance, evaluate_quality):
        params = inspect.signature(fn).parameters
        names = list(params)
        assert names[:3] == ["model", "x", "y"], fn.__name__
        assert params["y"].default is None, fn.__name__
        for key in ("methods", "metrics", "target", "seed", "out", "quiet"):
            if fn is evaluate_quality and key == "metrics":
                continue  # its metrics are the decision-flip metrics, all of them
            assert key in params, (fn.__name__, key)
            assert params[key].kind in (inspect.Parameter.KEYWORD_ONLY,), (fn.__name__, key)


def test_the_older_positional_forms_still_work_with_a_warning():
    net, x, y = _net(), torch.rand(4, 1, 8, 8), torch.arange(4)
    with pytest.warns(FutureWarning, match="by keyword"):
        old = model_randomization(net, x, y, ["gradient"], ["spearman_abs"], calibrate=False, quiet=True)
    new = model_randomization(net, x, y, methods=["gradient"], metrics=["spearman_abs"], calibrate=False, quiet=True)
    assert old.table.equals(new.table)
    twin = _net()
    with pytest.warns(FutureWarning, match="permuted_model"):
        old = data_randomization(net, twin, x, y, ["gradient"], ["spearman_abs"], calibrate=False, quiet=True)
    new = data_randomization(net, x, y, permuted_model=twin, methods=["gradient"], metrics=["spearman_abs"],
                             calibrate=False, quiet=True)
    assert old.table.equals(new.table)
