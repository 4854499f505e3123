"""grabska2020 figure 1 (the zero-bias linear classifier), supplement B.1 (inputs scaled and shifted) and
supplement E (bilinear against block up-sampling of layer maps): closed forms on hand-built models, and the
experiments with their claims run on tiny inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sanitas.errors import ConfigError
from sanitas.experiments import run_config
from sanitas.experiments.claims import HOLDS, NOT_RUN
from sanitas.experiments.config import load_config, validate

from conftest import tiny_study


def _linear(weight, bias=None):
    k, d = weight.shape
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, k, bias=bias is not None))
    with torch.no_grad():
        model[1].weight.copy_(weight)
        if bias is not None:
            model[1].bias.copy_(bias)
    return model.eval()


def _images(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g)
    x[:, :, 0, :] = 0.0                     # a background row: not part of the object
    return x


# -- figure 1 ------------------------------------------------------------------------------------------

def test_linear_table_closed_forms():
    """Without bias the gradient x input maps sum to the logits; with a bias they miss them by exactly b_c
    (so the residual is max_c |b_c|); the gradient is the weight row; the positive fractions count the
    object's pixels with w_ck x_k > 0."""
    from sanitas.experiments.linear_zero_bias import linear_table

    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, 16, generator=g)
    b = torch.tensor([0.5, -2.0, 0.25])
    x = _images()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    table, shown = linear_table({"zero bias": _linear(w), "with bias": _linear(w, b)}, x, y)
    v = table.set_index(["method", "variant", "metric", "image"])["value"]
    for i in range(len(x)):
        assert v[("input_x_gradient", "zero bias", "completeness_residual", i)] < 1e-5
        assert v[("input_x_gradient", "with bias", "completeness_residual", i)] == pytest.approx(2.0, abs=1e-5)
        assert v[("gradient", "zero bias", "gradient_deviation", i)] == 0.0
    # positive fractions by hand
    a = w.unsqueeze(0) * x.flatten(1).unsqueeze(1)                           # (N, K, D)
    obj = x.flatten(1) > 0
    frac = ((a > 0) & obj.unsqueeze(1)).sum(2) / obj.sum(1, keepdim=True)
    pred = (x.flatten(1) @ w.T).argmax(1)
    for i in range(len(x)):
        own = float(frac[i, pred[i]])
        other = float((frac[i].sum() - frac[i, pred[i]]) / 2)
        assert v[("input_x_gradient", "zero bias", "positive_fraction_predicted", i)] == pytest.approx(own)
        assert v[("input_x_gradient", "zero bias", "positive_fraction_other", i)] == pytest.approx(other)
        assert v[("classifier", "zero bias", "correct", i)] == float(pred[i] == y[i])
    assert torch.equal(shown["zero bias"][0], w.reshape(3, 1, 4, 4))
    assert set(table["stage"]) == {1, 2}


def test_linear_table_refuses_a_network():
    from sanitas.experiments.linear_zero_bias import linear_table

    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(ConfigError, match="one nn.Linear"):
        linear_table({"zero bias": net}, _images(), torch.zeros(6, dtype=torch.long))


# -- supplement B.1 ----------------------------------------------------------------------------------------

def test_robustness_closed_forms():
    """A zero-bias linear classifier keeps every prediction under any positive scale; with a bias that
    dominates at small scales every prediction becomes argmax b; drop = correct(x1) - correct(variant)."""
    from sanitas.experiments.linear_zero_bias import robustness_table

    g = torch.Generator().manual_seed(2)
    w = torch.randn(3, 16, generator=g)
    b = torch.tensor([0.0, 0.0, 50.0])
    x = _images(12)
    y = (x.flatten(1) @ w.T).argmax(1)                 # the zero-bias model is right on every image
    table = robustness_table({"zb": _linear(w), "b": _linear(w, b)}, x, y, scales=[0.001, 10.0, 1000.0],
                             shifts=[0.5])
    assert list(dict.fromkeys(table["variant"])) == ["x1", "scale 0.001", "scale 10", "scale 1000", "shift -0.5",
                                                     "shift +0.5", "any scale"]
    m = table.groupby(["method", "variant", "metric"])["value"].mean()
    for s in ("scale 0.001", "scale 10", "scale 1000"):
        assert m[("zb", s, "changed")] == 0.0 and m[("zb", s, "correct")] == 1.0
    assert m[("zb", "any scale", "changed")] == 0.0
    assert m[("b", "scale 0.001", "correct")] == pytest.approx(float((y == 2).float().mean()))
    d = table.set_index(["method", "variant", "metric", "image"])["value"].sort_index()
    for i in range(len(x)):
        assert d[("b", "scale 0.001", "drop")][i] == d[("b", "x1", "correct")][i] - d[("b", "scale 0.001",
                                                                                       "correct")][i]
    # a shift by c times the value range: the images' range is measured, not assumed
    span = float(x.max() - x.min())
    shifted = (x + 0.5 * span).flatten(1) @ w.T
    assert m[("zb", "shift +0.5", "correct")] == pytest.approx(float((shifted.argmax(1) == y).float().mean()))


# -- supplement E ------------------------------------------------------------------------------------------

class _TwoRes(nn.Module):
    """conv at the input's size, max-pool, conv at half the size, linear head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        h = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        return self.head(torch.relu(self.conv2(h)).flatten(1))


def test_upsampling_table_on_a_two_resolution_net():
    """Only the half-size layer is resized; its block-up-sampled map is constant on 2x2 blocks; the layer means
    equal the single layer's rows when one layer is resized; both interpolations share the noise pairing."""
    from sanitas.experiments.upsampling import resized_layers, upsampling_table

    model = _TwoRes().eval()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(10, 1, 8, 8, generator=g)
    assert resized_layers(model, x) == [(2, "conv2")]
    table, shown = upsampling_table(model, x, n_shuffles=2, seed=0, fullgrad=False)
    assert set(table["metric"]) == {"e_minus", "e_minus_xi", "delta_e_minus"}
    assert set(table["variant"]) == {"bilinear", "nearest", "input resolution"}
    assert {"activity[2]", "bias[2]", "activity (all layers)", "activity (layer mean)", "bias (layer mean)",
            "gradient"} == set(table["method"])
    block = shown["activity[2] | nearest"][0, 0]
    assert torch.equal(block, block[::2, ::2].repeat_interleave(2, 0).repeat_interleave(2, 1))
    smooth = shown["activity[2] | bilinear"][0, 0]
    assert not torch.equal(smooth, smooth[::2, ::2].repeat_interleave(2, 0).repeat_interleave(2, 1))
    v = table.set_index(["method", "variant", "metric", "image"])["value"].sort_index()
    for interp in ("bilinear", "nearest"):
        one = v.loc[("activity[2]", interp, "delta_e_minus")]
        mean = v.loc[("activity (layer mean)", interp, "delta_e_minus")]
        assert one.to_numpy() == pytest.approx(mean.to_numpy())
    e = v.loc[(slice(None), slice(None), "e_minus")]
    xi = v.loc[(slice(None), slice(None), "e_minus_xi")]
    assert v.loc[(slice(None), slice(None), "delta_e_minus")].to_numpy() == pytest.approx((e - xi).to_numpy())


# -- the config and its claims ----------------------------------------------------------------------------

BODY = """
experiments:
  linear:
    check: linear_zero_bias
    model: linear
  robust:
    check: input_robustness
    model: [cnn]
    linear: true
    scales: [0.001, 100]
    shifts: [1.0]
    images: 40
  up:
    check: upsampling
    model: cnn
    n_shuffles: 2
    fullgrad: false
claims:
  - {id: a, claim: c, experiment: linear, measure: {method: input_x_gradient, metric: completeness_residual,
     stages: zero bias}, expect: "< 1e-4"}
  - {id: b, claim: c, experiment: linear, measure: {method: input_x_gradient, metric: completeness_residual,
     stages: with bias}, expect: "> 1e-4"}
  - {id: c, claim: c, experiment: robust, measure: {method: linear (zero bias), metric: changed,
     stages: any scale}, expect: "<= 0"}
  - {id: d, claim: c, experiment: robust, measure: {ratio: [{method: cnn, metric: correct, stages: scale 100},
     {method: cnn, metric: correct, stages: x1}]}, expect: "> -1"}
  - {id: e, claim: c, experiment: robust, measure: {method: vgg-small, metric: drop, stages: scale 10},
     expect: "> 0"}
  - {id: f, claim: c, experiment: up, measure: {sub: [{method: activity (layer mean), metric: delta_e_minus,
     stages: bilinear}, {method: activity (layer mean), metric: delta_e_minus, stages: nearest}]}, expect: "> -2"}
"""


def test_experiments_and_claims_on_digits(tmp_path):
    cfg = tiny_study(BODY, images=12)
    run = run_config(cfg, tmp_path, quiet=True)
    assert list(run.claims["verdict"]) == [HOLDS, HOLDS, HOLDS, HOLDS, NOT_RUN, HOLDS]
    assert "no rows for method 'vgg-small'" in run.claims.iloc[4]["why"]
    # the residual with a bias is max_c |b_c| of the trained model, the same for every image
    assert run.claims.iloc[1]["ci_low"] == pytest.approx(run.claims.iloc[1]["ci_high"])
    for name, fig in (("linear", "linear_zero_bias"), ("robust", "input_robustness"), ("up", "upsampling")):
        assert (tmp_path / name / "figures" / f"{fig}.png").is_file()
        assert (tmp_path / name / "report.html").is_file()


def test_config_keys_are_checked():
    cfg = tiny_study(BODY, images=12)
    cfg["experiments"]["up"]["against"] = "linear"
    with pytest.raises(ConfigError, match="against"):
        validate(cfg)
    cfg = tiny_study(BODY, images=12)
    cfg["experiments"]["robust"]["shifts"] = [-1.0]
    with pytest.raises(ConfigError, match="shifts"):
        validate(cfg)


def test_quality_config_has_the_new_experiments_and_claims():
    cfg = load_config("quality")
    for name in ("linear-zero-bias", "input-robustness", "upsampling-cnn", "upsampling-vgg-small"):
        assert name in cfg["experiments"]
    ids = [c["id"] for c in cfg["claims"] if c["id"].startswith("QA")]
    assert len(ids) == len(set(ids)) == 18
    quick = cfg["quick"]["experiments"]
    assert quick["upsampling-vgg-small"]["skip"] and "vgg-small" not in quick["input-robustness"]["model"]
