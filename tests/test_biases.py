"""Biases (grabska2020): Eq. 13, zero-bias networks, the f^{b=0} regression, bias decay by distillation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sanitas.errors import ConfigError, InputError, ModelError, SanitasError
from sanitas.evaluate import (bias_analysis, bias_decomposition, bias_regression, bias_summary, cutting_layers,
                              distill_zero_bias, max_abs_bias, zero_bias, zero_bias_accuracy)
from sanitas.explain.layers import layer_bias
from sanitas.models import build_model
from sanitas.utils.hashing import model_fingerprint


def _random_net(name, seed=0, shape=(1, 16, 16)):
    """An untrained reference net with non-trivial biases and BatchNorm statistics."""
    torch.manual_seed(seed)
    net = build_model(name, shape, 10)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.5)
            elif isinstance(getattr(m, "bias", None), nn.Parameter):
                m.bias.normal_(0, 0.2)
    return net.eval()


@pytest.mark.parametrize("name", ["cnn", "vgg-small", "resnet-small"])
def test_eq13_holds_at_every_layer_that_cuts_the_graph(name):
    net = _random_net(name)
    x = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    d = bias_decomposition(net, x)
    assert len(d) == 6 * d["stage"].nunique()
    cut = d[d["cuts"]]
    assert cut["residual"].max() < 1e-4
    # the check is not vacuous: biases carry a visible part of the logit
    assert d.loc[d["stage"] == 0, "bias_above"].abs().min() > 1e-3
    # A_h at the output layer is the logit; layers that do not cut report no residual
    top = d[d["stage"] == d["stage"].max()]
    assert torch.allclose(torch.tensor(top["A_h"].values), torch.tensor(top["logit"].values), atol=1e-5)
    assert d.loc[~d["cuts"], "residual"].isna().all()
    cuts = [layer for layer, c in cutting_layers(net, x).items() if c]
    if name == "resnet-small":  # skip connections: only the stem and the output cut the graph
        assert cuts == ["stem.conv", "stem.bn", "output"]
    else:
        assert len(cuts) == d["stage"].max()
    s = bias_summary(d)
    assert list(s["stage"]) == sorted(d["stage"].unique()) and (s["n"] == 6).all()


def test_eq13_with_explicit_targets_and_batches():
    net = _random_net("cnn")
    x = torch.rand(5, 1, 16, 16)
    d = bias_decomposition(net, x, target=torch.tensor([0, 1, 2, 3, 4]), batch_size=2)
    assert list(d.drop_duplicates("image")["target"]) == [0, 1, 2, 3, 4]
    assert d["residual"].max() < 1e-4


def test_zero_bias_removes_every_bias_and_leaves_the_model_alone():
    net = _random_net("cnn")
    before = model_fingerprint(net)
    zb = zero_bias(net)
    assert model_fingerprint(net) == before
    assert max_abs_bias(net) > 0 and max_abs_bias(zb) == 0.0
    zeros = torch.zeros(2, 1, 16, 16)
    with torch.no_grad():
        assert net(zeros).abs().max() > 0
        assert torch.equal(zb(zeros), torch.zeros(2, 10))  # no bias path left: f^{b=0}(0) = 0 exactly
    # positively homogeneous once biases are gone
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(zb(3 * x), 3 * zb(x), atol=1e-5)
    # a zero-bias net has a complete input decomposition: A_h^0 = f
    d = bias_decomposition(zb, x)
    assert d["bias_above"].abs().max() == 0 and d["residual"].max() < 1e-5


def test_batchnorm_implicit_shift_is_zeroed_exactly():
    net = _random_net("resnet-small")
    before = model_fingerprint(net)
    zb = zero_bias(net)
    assert model_fingerprint(net) == before
    bns = [m for m in zb.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(torch.equal(layer_bias(m), torch.zeros_like(m.running_mean)) for m in bns)
    orig = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(a.weight, b.weight) and torch.equal(a.running_var, b.running_var) for a, b in zip(orig, bns))
    with torch.no_grad():
        assert torch.equal(zb(torch.zeros(1, 1, 16, 16)), torch.zeros(1, 10))


def test_regression_recovers_identity_on_a_bias_free_net():
    net = zero_bias(_random_net("vgg-small"))
    x = torch.rand(8, 1, 16, 16)
    r = bias_regression(net, x)
    assert r.alpha == pytest.approx(1.0, abs=1e-6) and r.beta == pytest.approx(0.0, abs=1e-6)
    assert r.r2 == pytest.approx(1.0, abs=1e-9)
    assert len(r.per_class) == 10 and r.per_class["alpha"].sub(1).abs().max() < 1e-5
    assert len(r.per_image) == 8 and r.per_image["alpha"].sub(1).abs().max() < 1e-5
    y = r.logits.argmax(1)
    assert zero_bias_accuracy(net, x, torch.as_tensor(y)) == 1.0


def test_regression_of_a_linear_model_is_its_bias_free_part():
    # f = W x + b, f^{b=0} = W x: the fit is alpha ~ 1 only when b is small; check the numbers it returns
    torch.manual_seed(0)
    net = build_model("linear", (1, 4, 4), 3)
    with torch.no_grad():
        net.output.bias.fill_(2.0)
    x = torch.rand(50, 1, 4, 4)
    r = bias_regression(net, x)
    assert r.alpha == pytest.approx(1.0, abs=1e-6) and r.beta == pytest.approx(-2.0, abs=1e-5)


def test_distillation_makes_a_cached_zero_bias_model(tmp_path, monkeypatch):
    monkeypatch.setenv("SANITAS_CACHE", str(tmp_path))
    kw = dict(steps=6, stages=3, batch_size=32, train_size=128, teacher_kwargs={"epochs": 1, "train_size": 128})
    first = distill_zero_bias("resnet-small", "digits", **kw)
    assert not first.from_cache and first.path.exists()
    assert max_abs_bias(first.model) == 0.0
    assert first.metrics["max_abs_bias"] == 0.0
    assert {"teacher_test_accuracy", "zero_bias_test_accuracy", "test_accuracy", "seconds"} <= set(first.metrics)
    assert [h["factor"] for h in first.history][-1] == 0.0
    second = distill_zero_bias("resnet-small", "digits", **kw)
    assert second.from_cache and second.path == first.path
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    other = distill_zero_bias("resnet-small", "digits", **{**kw, "T": 10.0})
    assert not other.from_cache and other.path != first.path
    # a corrupt checkpoint is reported and recomputed
    first.path.write_bytes(b"garbage")
    third = distill_zero_bias("resnet-small", "digits", **kw)
    assert not third.from_cache and max_abs_bias(third.model) == 0.0


def test_bad_inputs_raise_clear_errors():
    net = _random_net("cnn")
    with pytest.raises(InputError, match="torch.Tensor"):
        bias_decomposition(net, [[1.0]])
    with pytest.raises(InputError, match="one class per image"):
        bias_decomposition(net, torch.rand(2, 1, 16, 16), target="all")
    with pytest.raises(InputError, match="out of range"):
        bias_decomposition(net, torch.rand(2, 1, 16, 16), target=12)
    with pytest.raises(ModelError, match="nn.Module"):
        zero_bias("cnn")
    with pytest.raises(InputError, match="labels"):
        zero_bias_accuracy(net, torch.rand(2, 1, 16, 16), torch.tensor([1]))
    bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False), nn.Flatten(),
                       nn.LazyLinear(3))
    with pytest.raises(ModelError, match="running statistics"):
        zero_bias(bn)
    with pytest.raises(ConfigError, match="temperature"):
        distill_zero_bias("linear", "digits", T=0, teacher_kwargs={"epochs": 1})
    with pytest.raises(ConfigError, match="reference model name"):
        distill_zero_bias(net, "digits")
    with pytest.raises(SanitasError, match="unknown model"):
        distill_zero_bias("nope", "digits")
    with pytest.raises(ConfigError, match="not among the models"):
        bias_analysis(["linear"], "digits", distill=["cnn"])
    with pytest.raises(ConfigError, match="at least one model"):
        bias_analysis([], "digits")
