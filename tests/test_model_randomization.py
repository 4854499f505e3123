"""The model randomization engine: tidy output, resume, targets, bad inputs, the papers' findings."""

import pandas as pd
import pytest
import torch
from torch import nn

from sanitas.checks import model_randomization
from sanitas.errors import ConfigError, InputError, ModelError, UnknownNameError
from sanitas.models import build_model
from sanitas.utils.hashing import model_fingerprint


@pytest.fixture
def small():
    torch.manual_seed(0)
    return build_model("cnn"), torch.rand(6, 1, 28, 28), torch.arange(6) % 10


def test_tidy_table_and_contract_files(small, tmp_path):
    m, x, y = small
    before = model_fingerprint(m)
    res = model_randomization(m, x, y, methods=["gradient", "guided_backprop"],
                              metrics=["spearman_abs", "ssim"], out=tmp_path)
    assert model_fingerprint(m) == before
    t = res.table
    assert {"method", "variant", "stage", "metric", "image", "value"} <= set(t.columns)
    # 5 stages (original + 4 layers) x 2 methods x 2 metrics x 6 images
    assert len(t) == 5 * 2 * 2 * 6
    assert res.stages == ["original", "output", "fc1", "features.conv2", "features.conv1"]
    orig = t[t["stage"] == 0]
    assert (orig["value"] - 1).abs().max() < 1e-9
    for f in ["results.parquet", "results.csv", "meta.json"]:
        assert (tmp_path / f).exists()
    assert len(pd.read_parquet(tmp_path / "results.parquet")) == len(t)
    s = res.summary()
    assert {"mean", "ci_low", "ci_high", "nan_count"} <= set(s.columns)
    assert set(res.calibration["baseline"]) >= {"input_x_uniform", "uniform_vs_uniform"}


def test_resume_skips_finished_cells(small, tmp_path, monkeypatch):
    m, x, y = small
    first = model_randomization(m, x, y, methods=["gradient"], metrics=["spearman_abs"], out=tmp_path, calibrate=False)
    calls = []
    import sanitas.explain.gradients as g

    orig = g.Gradient.attribute
    monkeypatch.setattr(g.Gradient, "attribute", lambda self, *a: calls.append(1) or orig(self, *a))
    again = model_randomization(m, x, y, methods=["gradient"], metrics=["spearman_abs"], out=tmp_path, calibrate=False)
    assert calls == []  # every (stage, method) cell came from disk
    pd.testing.assert_frame_equal(first.table.reset_index(drop=True), again.table.reset_index(drop=True),
                                  check_dtype=False)
    # a different config recomputes
    model_randomization(m, x, y, methods=["gradient"], metrics=["spearman_abs"], out=tmp_path, calibrate=False, seed=1)
    assert calls


def test_independent_mode_and_targets(small):
    m, x, y = small
    res = model_randomization(m, x, y, methods=["gradient"],
                              metrics=["spearman_abs"], mode="independent", target="predicted",
                              calibrate=False)
    assert res.table["stage"].nunique() == 5
    targets = res.table.groupby("stage")["target"].apply(lambda s: tuple(s)).tolist()
    assert len(set(targets)) > 1  # each randomized model explains its own prediction
    fixed = model_randomization(m, x, y, methods=["gradient"],
                                metrics=["spearman_abs"], target="label", calibrate=False)
    assert (fixed.table["target"].to_numpy() == y.repeat(5).numpy()).all() or \
        set(fixed.table["target"]) <= set(y.tolist())


def test_bad_inputs(small):
    m, x, y = small
    with pytest.raises(ModelError, match="no parameters"):
        model_randomization(nn.Sequential(nn.Flatten()), x, y, methods=["gradient"], metrics=["spearman_abs"])
    with pytest.raises(UnknownNameError):
        model_randomization(m, x, y, methods=["gradient"], metrics=["spearman_abs"], blocks=["features.conv9"])
    with pytest.raises(InputError):
        model_randomization(m, torch.rand(6, 3, 32, 32), y, methods=["gradient"], metrics=["spearman_abs"])
    with pytest.raises(InputError, match="out of range"):
        model_randomization(m, x, y + 10, methods=["gradient"], metrics=["spearman_abs"])
    with pytest.raises(InputError, match="NaN"):
        model_randomization(m, x * float("nan"), y, methods=["gradient"], metrics=["spearman_abs"])
    with pytest.raises(ConfigError):
        model_randomization(m, x, y, methods=["gradient"], metrics=["spearman_abs"], mode="sideways")
    with pytest.raises(UnknownNameError):
        model_randomization(m, x, y, methods=["gradient"], metrics=["spearman_abss"])


def test_papers_findings_on_trained_cnn(trained_cnn, fmnist_test):
    ds = fmnist_test.sample(24, seed=0)
    res = model_randomization(trained_cnn, ds.x, ds.y, methods=["gradient", "guided_backprop", "input_x_gradient",
                                                       "competitive(input_x_gradient)"], metrics=["spearman_abs", "spearman"], calibrate=False)
    ab = res.pivot("spearman_abs")
    signed = res.pivot("spearman")
    assert ab.loc["gradient", "output"] < 0.5          # gradient changes with the top layer
    assert ab.loc["guided_backprop", "output"] > 0.8   # guided backprop does not
    assert ab.loc["input_x_gradient", "features.conv1"] > 0.6  # x*grad keeps the input's structure ...
    assert abs(signed.loc["input_x_gradient", "output"]) < 0.35  # ... but its signs decorrelate
    assert ab.loc["competitive(input_x_gradient)", "output"] < 0.4  # competition removes the input


@pytest.mark.parametrize("mode", ["smooth", "efficient", "random_logit"])
def test_follow_up_modes(small, mode):
    m, x, y = small
    res = model_randomization(m, x, y, methods=["gradient"], metrics=["spearman_abs"], mode=mode, calibrate=False,
                              smooth_samples=3)
    t = res.table
    if mode == "smooth":
        assert res.stages[1] == "features.conv1"  # bottom-up
        assert t["stage"].nunique() == 5
    elif mode == "efficient":
        rise = t[(t["metric"] == "entropy_rise") & (t["stage"] == 1)]["value"]
        assert len(rise) == 6 and rise.notna().all()
        assert res.stages == ["original", "fully_randomized"]
    else:
        assert "ssim_max_sign" in set(t["metric"])
        other = t[(t["stage"] == 1) & (t["metric"] == "spearman_abs")]["target"].to_numpy()
        assert (other != y.numpy()).all()


def test_histogram_entropy():
    from sanitas.checks.model_randomization import histogram_entropy

    flat = torch.ones(1, 1, 10, 10)
    spread = torch.arange(100.0).view(1, 1, 10, 10)
    assert histogram_entropy(flat)[0] == 0
    assert abs(histogram_entropy(spread, bins=100)[0] - torch.log(torch.tensor(100.0))) < 1e-6


def test_fast_layout_gives_the_same_scores(small, monkeypatch):
    """The check explains channels_last copies on CPU; the plain NCHW run must score the same."""
    import sys

    import sanitas.randomize.variants as rv

    mr = sys.modules["sanitas.checks.model_randomization"]  # the package re-exports the function's name

    m, x, y = small
    methods, metrics = ["gradient", "guided_backprop", "gradcam"], ["spearman_abs", "ssim"]
    fast = model_randomization(m, x, y, methods=methods, metrics=metrics, calibrate=False).table
    monkeypatch.setattr(rv, "prefer_fast_layout", lambda model, example=None: model)
    monkeypatch.setattr(mr, "layout_would_change", lambda model: False)
    plain = model_randomization(m, x, y, methods=methods, metrics=metrics, calibrate=False).table
    assert len(fast) == len(plain) == 5 * 3 * 2 * 6
    assert (fast["value"] - plain["value"]).abs().max() < 1e-4
    assert all(p.is_contiguous() for p in m.parameters())


def test_vit_gradient_loses_similarity_once_its_top_block_is_randomized(trained_vit, fmnist_test):
    """adebayo2018's finding on a vision transformer (Hugging Face ViTForImageClassification, trained
    here): randomizing the head and then the transformer layers top-down changes the gradient."""
    ds = fmnist_test.sample(12, seed=0)
    res = model_randomization(trained_vit, ds.x, ds.y, methods=["gradient", "gradcam"],
                              metrics=["spearman_abs"], blocks="auto",
                              calibrate=False)
    assert res.stages[:4] == ["original", "classifier", "vit.layernorm", "vit.layers.3"]
    p = res.pivot("spearman_abs")
    assert p.loc["gradient", "classifier"] < 0.85
    assert p.loc["gradient", res.stages[-1]] < 0.4
    assert "layernorm_before" in res.meta["resolved"]["gradcam"]["layer"]
