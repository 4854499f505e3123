"""grabska2020's zero-bias ResNet (Fig. 4, supplement D) and the perturbation metrics of supplement F:
closed forms of the pieces (completeness of a zero-bias ReLU network, shares, correlations, down-sampling
points, the dip rows), and both experiments with the paper's claims run end to end on a tiny dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from sanitas.evaluate.zero_bias import zero_bias
from sanitas.experiments import flip_metrics as F
from sanitas.experiments import zero_bias_resnet as Z
from sanitas.models.architectures import ResNetSmall, VGGSmall


def _resnet(seed=0):
    torch.manual_seed(seed)
    net = ResNetSmall(widths=(4, 6, 8)).eval()
    with torch.no_grad():  # biases that matter: BatchNorm shifts and running means away from zero
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.bias.normal_()
        net.output.bias.normal_()
    return net


def test_depth_layers():
    assert Z.depth_layers(ResNetSmall()) == ["stem", "stages.stage1.block1", "stages.stage2.block1",
                                             "stages.stage3.block1"]
    assert Z.depth_layers(VGGSmall()) == [f"features.conv{b}_{i}" for b in (1, 2, 3) for i in (1, 2)]


def test_zero_bias_network_is_complete_in_every_layer():
    """Eq. 6: without biases a ReLU network is positively homogeneous from every layer that cuts the graph,
    so sum_ij a^{h,l} = f_c for the input and every block output; with biases it is not."""
    net = _resnet()
    x = torch.rand(5, 1, 12, 12)
    layers = Z.depth_layers(net)
    zb = Z.attributions(zero_bias(net), x, layers)
    gaps = torch.stack(Z.completeness_gap(zb["maps"], zb["logit"]))
    assert gaps.shape == (len(layers) + 1, 5)
    assert float(gaps.max()) < 1e-4
    van = Z.attributions(net, x, layers)
    assert float(torch.stack(Z.completeness_gap(van["maps"], van["logit"])).max()) > 1e-2
    # the input map is x * df/dx summed over channels, the gradient is df/dx of the predicted class
    np.testing.assert_allclose(van["maps"][0].numpy(), (x * van["grad"]).sum(1).numpy(), rtol=1e-6)
    assert torch.equal(van["target"], net(x).argmax(1))


def test_shares_and_correlation_closed_forms():
    a = torch.tensor([[[1.0, -3.0]], [[2.0, 2.0]]])
    np.testing.assert_allclose(Z.negative_share(a).numpy(), [0.75, 0.0])
    b = torch.randn(3, 4, 4)
    np.testing.assert_allclose(Z.pearson(b, 2 * b + 1).numpy(), 1.0, atol=1e-12)
    np.testing.assert_allclose(Z.pearson(b, -b).numpy(), -1.0, atol=1e-12)
    assert torch.isnan(Z.pearson(b, torch.ones_like(b))).all()
    up = Z.layer_maps([torch.full((2, 3, 3), -2.0)], (6, 6), signed=False)[0]
    assert up.shape == (2, 6, 6) and torch.allclose(up, torch.full_like(up, 2.0))
    same = torch.randn(2, 6, 6)
    assert torch.equal(Z.layer_maps([same], (6, 6), signed=True)[0], same)


def test_downsampling_points():
    assert F.downsampling_points([(28, 28), (28, 28), (14, 14), (7, 7)]) == [1]
    assert F.downsampling_points([(28, 28)] * 2 + [(14, 14)] * 2 + [(7, 7)] * 2) == [1, 3]
    assert F.downsampling_points([(28, 28), (14, 14), (7, 7)]) == []


def test_table_of_one_network_twice():
    """The same network as 'vanilla' and 'zero-bias': correlations are 1 and every other row is equal."""
    net = _resnet(1)
    x = torch.rand(6, 1, 8, 8)
    layers = Z.depth_layers(net)
    t, raw = Z.zero_bias_table({"vanilla": net, "zero-bias": net}, x, layers, n_shuffles=1)
    assert set(t.columns) >= {"method", "variant", "stage", "metric", "image", "value", "constant_map"}
    corr = t[t.metric == "correlation"]
    assert set(corr.stage) == set(range(len(layers) + 1))
    np.testing.assert_allclose(corr.value, 1.0, atol=1e-9)
    rest = t[t.metric != "correlation"].pivot_table(index=["method", "stage", "metric", "image"], columns="variant",
                                                     values="value")
    np.testing.assert_allclose(rest["vanilla"], rest["zero-bias"])
    assert {"e_minus", "e_minus_xi", "delta_e_minus"} <= set(t[t.method == "signed"].metric)
    assert set(t[t.method == "gradient"].stage) == {0}
    s = Z.scalars_of(t, {"vanilla": 1.0})
    assert s["accuracy/vanilla"] == 1.0 and s["max_gap/vanilla"] > 0


def test_downsampling_rows_are_layer_differences():
    net = _resnet(2)
    x = torch.rand(6, 1, 8, 8)
    t = F.model_table("r", net, x, Z.depth_layers(net), n_shuffles=2, seed=0)
    assert t.attrs["points"] == ["stages.stage1.block1"]   # 8x8, 8x8 | 4x4, 2x2
    for metric in F.DIP_METRICS:
        layer = {s: g.sort_values("image").value.to_numpy() for s, g in t[(t.method == "layer")
                                                                           & (t.metric == metric)].groupby("stage")}
        dip = t[(t.method == "downsampling") & (t.metric == metric)].sort_values("image").value.to_numpy()
        np.testing.assert_allclose(dip, layer[2] - layer[1])
    assert set(t[t.method == "all-layers"].metric) >= {"e_delta", "delta_e_delta", "e_delta_xi"}
    sc = F.scalars_of(t)
    assert 0 <= sc["stronger_delta/r"] <= 1


def test_experiments_and_claims_on_digits(tmp_path):
    """Both experiments with the paper's claims (as quality.yaml states them) on the digits dataset:
    every claim is judged."""
    from importlib.resources import files

    from sanitas.experiments import run_config
    from sanitas.experiments.claims import NOT_RUN
    from sanitas.experiments.config import validate

    paper = yaml.safe_load(files("sanitas.experiments.configs").joinpath("quality.yaml").read_text())
    mine = ("zero-bias-resnet", "flip-metrics")
    claims = [c for c in paper["claims"] if c["experiment"] in mine]
    assert len(claims) == 19
    cfg = {"paper": "tiny", "dataset": "digits", "seed": 0, "images": 12, "claims": claims, "experiments": {
        "zero-bias-resnet": {**paper["experiments"]["zero-bias-resnet"], "n_shuffles": 2, "epochs": 2,
                             "distill_options": {"steps": 20}},
        "flip-metrics": {**paper["experiments"]["flip-metrics"], "n_shuffles": 2, "epochs": 2}}}
    validate(cfg)
    run = run_config(cfg, tmp_path, quiet=True)
    verdicts = run.claims.set_index("id")
    assert not (verdicts["verdict"] == NOT_RUN).any(), verdicts[verdicts["verdict"] == NOT_RUN][["why"]]
    zb = run.outcomes["zero-bias-resnet"]
    assert zb.scalars["max_gap/zero-bias"] < 1e-3 < zb.scalars["max_gap/vanilla"]
    assert set(zb.table.variant) == {"vanilla", "zero-bias", "zeroed"}
    for name in ("zero_bias_attributions.png", "zero_bias_quality.png"):
        assert (tmp_path / "zero-bias-resnet" / "figures" / name).is_file()
    assert (tmp_path / "flip-metrics" / "figures" / "flip_metrics.png").is_file()
    assert set(run.outcomes["flip-metrics"].table.variant) == {"vgg-small", "resnet-small"}


@pytest.mark.parametrize("key, value", [("n_shuffles", 0), ("layers", [True]), ("epochs", -1)])
def test_config_is_checked(key, value):
    from sanitas.errors import ConfigError
    from sanitas.experiments.config import validate

    cfg = {"paper": "p", "dataset": "digits", "experiments": {
        "z": {"check": "zero_bias_resnet", "model": "resnet-small", key: value}}}
    with pytest.raises(ConfigError):
        validate(cfg)
