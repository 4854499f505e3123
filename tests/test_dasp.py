"""DASP: probabilistic layers against Monte Carlo, the converter, exact Shapley values, DASP accuracy."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
from torch import nn

from sanitas.errors import ConfigError, InputError, ModelError, UnsupportedLayerError
from sanitas.models import build_model
from sanitas.shapley import (coalition_sizes, dasp, max_moments, player_labels, relu_moments, shapley_exact,
                             to_probabilistic)
from sanitas.shapley.probabilistic import SUPPORTED
from sanitas.utils.hashing import model_fingerprint

D = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def monte_carlo(fn, mean, var, n=200_000, seed=0, with_se=False):
    """Mean and variance of fn(X) for X ~ N(mean, diag(var)), independent units; samples on dim 0.

    ``with_se`` also returns the standard errors of both estimates (the variance's from the
    sample fourth central moment).
    """
    z = torch.randn(n, *mean.shape[1:], generator=gen(seed), dtype=mean.dtype)
    with torch.no_grad():
        y = fn(mean + var.sqrt() * z)
    mm, mv = y.mean(0, keepdim=True), y.var(0, keepdim=True)
    if not with_se:
        return mm, mv
    m4 = ((y - mm) ** 4).mean(0, keepdim=True)
    return mm, mv, (mv / n).sqrt(), ((m4 - mv ** 2).clamp_min(0) / n).sqrt()


def assert_moments(layer, fn, mean, var, n=100_000):
    """Exact moment propagation: the twin's mean and variance within 5 Monte Carlo standard errors."""
    pm, pv = layer(mean, var)
    mm, mv, se_m, se_v = monte_carlo(fn, mean, var, n, with_se=True)
    assert pm.shape == mm.shape and pv.shape == mv.shape
    assert ((pm - mm).abs() <= 5 * se_m + 1e-12).all(), float(((pm - mm).abs() / (se_m + 1e-15)).max())
    assert ((pv - mv).abs() <= 5 * se_v + 1e-12).all(), float(((pv - mv).abs() / (se_v + 1e-15)).max())


def twin_layer(module):
    return SUPPORTED[type(module)](module)


def rand_moments(shape, seed=0, scale=1.0):
    g = gen(seed)
    return (torch.randn(1, *shape, generator=g, dtype=D) * scale,
            torch.rand(1, *shape, generator=g, dtype=D) * scale ** 2 + 0.05)


# --------------------------------------------------------------------------- moment formulas


def test_relu_moments_match_monte_carlo_and_closed_forms():
    mean = torch.tensor([[-3.0, -1.0, -0.2, 0.0, 0.3, 1.5, 4.0]], dtype=D)
    var = torch.tensor([[1.0, 0.5, 2.0, 1.0, 0.1, 3.0, 0.2]], dtype=D)
    assert_moments(relu_moments, torch.relu, mean, var)
    m, v = relu_moments(torch.zeros(1, dtype=D), torch.ones(1, dtype=D))  # half-normal
    assert torch.allclose(m, torch.tensor([1 / math.sqrt(2 * math.pi)], dtype=D))
    assert torch.allclose(v, torch.tensor([0.5 - 1 / (2 * math.pi)], dtype=D))


def test_relu_moments_are_stable_in_float32():
    mean = torch.tensor([-1e4, -30.0, 30.0, 1e4, 5.0])
    var = torch.tensor([1e-6, 1.0, 1.0, 1e-6, 1e-12])
    m, v = relu_moments(mean, var)
    assert torch.isfinite(m).all() and torch.isfinite(v).all() and (v >= 0).all()
    assert torch.allclose(m, torch.relu(mean)) and torch.allclose(v, torch.tensor([0, 0, 1, 1e-6, 1e-12]),
                                                                  rtol=1e-3, atol=1e-12)


def test_max_of_two_gaussians_is_clark():
    g = gen(1)
    m1, m2 = torch.randn(1, 50, generator=g, dtype=D), torch.randn(1, 50, generator=g, dtype=D)
    v1, v2 = torch.rand(1, 50, generator=g, dtype=D) + 0.05, torch.rand(1, 50, generator=g, dtype=D) + 0.05
    pm, pv = max_moments(m1, v1, m2, v2)
    z1 = torch.randn(200_000, 50, generator=g, dtype=D)
    z2 = torch.randn(200_000, 50, generator=g, dtype=D)
    y = torch.maximum(m1 + v1.sqrt() * z1, m2 + v2.sqrt() * z2)
    assert torch.allclose(pm, y.mean(0), atol=5e-3) and torch.allclose(pv, y.var(0), rtol=0.02)
    # two iid N(0, v): variance v (1 - 1/pi); -inf (padding) loses; zero variance is the max
    _, v = max_moments(torch.zeros(1, dtype=D), torch.full((1,), 2.0, dtype=D), torch.zeros(1, dtype=D),
                       torch.full((1,), 2.0, dtype=D))
    assert torch.allclose(v, torch.tensor([2 * (1 - 1 / math.pi)], dtype=D))
    m, v = max_moments(torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([-math.inf]), torch.tensor([0.0]))
    assert m.item() == 1.0 and v.item() == 0.5
    m, v = max_moments(torch.tensor([1.0, 3.0]), torch.zeros(2), torch.tensor([2.0, -1.0]), torch.zeros(2))
    assert m.tolist() == [2.0, 3.0] and v.tolist() == [0.0, 0.0]


# --------------------------------------------------------------------------- layers vs Monte Carlo

LAYER_CASES = {
    "linear": (lambda: nn.Linear(6, 4), (6,)),
    "conv": (lambda: nn.Conv2d(2, 3, 3, padding=1, stride=2), (2, 5, 5)),
    "conv_grouped_dilated": (lambda: nn.Conv2d(2, 4, 2, dilation=2, groups=2), (2, 5, 5)),
    "avgpool_pad_ceil": (lambda: nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
                         (2, 6, 5)),
    "avgpool_include_pad": (lambda: nn.AvgPool2d(2, padding=1), (1, 5, 5)),
    "adaptive_avgpool": (lambda: nn.AdaptiveAvgPool2d((2, 3)), (2, 5, 7)),
    "flatten": (lambda: nn.Flatten(), (2, 3, 3)),
    "dropout": (lambda: nn.Dropout(0.5), (2, 3, 3)),
    "relu": (lambda: nn.ReLU(), (2, 3, 3)),
    "maxpool_pair": (lambda: nn.MaxPool2d((1, 2)), (2, 3, 4)),  # two-element windows: Clark is exact
}


def _bn(cls, c):
    bn = cls(c).double()
    g = gen(5)
    bn.running_mean.copy_(torch.randn(c, generator=g, dtype=D))
    bn.running_var.copy_(torch.rand(c, generator=g, dtype=D) + 0.5)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(c, generator=g, dtype=D))
        bn.bias.copy_(torch.randn(c, generator=g, dtype=D))
    return bn.eval()


LAYER_CASES["batchnorm2d"] = (lambda: _bn(nn.BatchNorm2d, 2), (2, 3, 3))
LAYER_CASES["batchnorm1d"] = (lambda: _bn(nn.BatchNorm1d, 5), (5,))


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_moments_match_monte_carlo(case):
    torch.manual_seed(0)
    make, shape = LAYER_CASES[case]
    module = make().double().eval()
    mean, var = rand_moments(shape)
    assert_moments(twin_layer(module), module, mean, var)


def test_maxpool_windows_of_four_approximate_monte_carlo():
    """Sequential pairwise matching is approximate for 2x2 windows (the max of a max is not Gaussian).

    Measured here: means within 0.04 standard deviations, variances 0.5-17% low."""
    module = nn.MaxPool2d(2)
    mean, var = rand_moments((3, 4, 4), seed=3)
    pm, pv = twin_layer(module)(mean, var)
    mm, mv = monte_carlo(module, mean, var)
    assert ((pm - mm).abs() / mv.sqrt()).max() < 0.05
    assert ((pv - mv).abs() / mv).max() < 0.25


def test_maxpool_padding_ceil_mode_stride_dilation():
    for module in [nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), nn.MaxPool2d(2, stride=1, dilation=2),
                   nn.MaxPool2d(3, stride=2, ceil_mode=True)]:
        mean, var = rand_moments((2, 6, 7), seed=4)
        layer = twin_layer(module)
        pm, pv = layer(mean, var)
        mm, mv = monte_carlo(module, mean, var, n=50_000)
        assert pm.shape == mm.shape
        assert ((pm - mm).abs() / mv.sqrt()).max() < 0.15 and ((pv - mv).abs() / mv).max() < 0.3
        x = torch.randn(3, 2, 6, 7, generator=gen(2))
        assert torch.equal(layer(x, torch.zeros_like(x))[0], module(x))


@pytest.mark.parametrize("case", sorted(LAYER_CASES) + ["maxpool2", "maxpool_pad"])
def test_zero_variance_is_the_deterministic_layer_exactly(case):
    torch.manual_seed(0)
    if case == "maxpool2":
        module, shape = nn.MaxPool2d(2), (2, 4, 4)
    elif case == "maxpool_pad":
        module, shape = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), (2, 5, 6)
    else:
        make, shape = LAYER_CASES[case]
        module = make().float().eval()
    x = torch.randn(4, *shape, generator=gen(1))
    m, v = twin_layer(module)(x, torch.zeros_like(x))
    assert torch.equal(m, module(x)) and torch.equal(v, torch.zeros_like(v))


# --------------------------------------------------------------------------- the converter


def every_layer_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout2d(0.2),
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), nn.AvgPool2d(2, ceil_mode=True),
        nn.Sequential(nn.Identity(), nn.AdaptiveAvgPool2d((2, 2))), nn.Flatten(), nn.Dropout(0.3),
        nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).eval()


def test_converter_covers_every_supported_layer():
    model = every_layer_model()
    twin = to_probabilistic(model, example=torch.rand(1, 2, 8, 8))
    assert {type(layer.module) for _, layer in twin} == set(SUPPORTED)
    assert [p for p, _ in twin][:3] == ["0", "1", "2"] and "6.1" in [p for p, _ in twin]
    x = torch.randn(5, 2, 8, 8, generator=gen(0))
    assert torch.equal(twin.deterministic(x), model(x))
    m, v = twin(x, torch.zeros_like(x))
    assert torch.equal(m, model(x)) and torch.equal(v, torch.zeros_like(v))
    m, v = twin(x, torch.full_like(x, 0.1))
    assert torch.isfinite(m).all() and (v > 0).all()


@pytest.mark.parametrize("name,shape", [("cnn", (1, 8, 8)), ("mlp", (1, 6, 6)), ("alexnet1", (1, 8, 8)),
                                        ("vgg-small", (1, 8, 8)), ("linear", (2, 4, 4))])
def test_converter_on_reference_models(name, shape):
    torch.manual_seed(0)
    kw = {"hidden": (16, 8)} if name == "mlp" else {}
    model = build_model(name, input_shape=shape, **kw).train()
    before = model_fingerprint(model)
    twin = to_probabilistic(model)  # verified with the model's recorded input_shape
    assert model_fingerprint(model) == before  # training flags restored, nothing touched
    model.eval()
    x = torch.rand(3, *shape, generator=gen(0))
    assert torch.allclose(twin.deterministic(x), model(x), rtol=1e-6, atol=1e-7)


def test_forward_reshape_outside_modules_is_traced():
    class ViewNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.relu = nn.ReLU()
            self.fc = nn.Linear(2 * 2 * 2, 3)

        def forward(self, x):
            return self.fc(self.relu(self.conv(x)).view(len(x), -1))

    model = ViewNet()
    twin = to_probabilistic(model, example=torch.rand(1, 1, 4, 4))
    assert [p for p, _ in twin] == ["conv", "relu", "fc:reshape", "fc"]
    x = torch.rand(2, 1, 4, 4)
    assert torch.equal(twin.deterministic(x), model(x))


@pytest.mark.parametrize("bad,path,kind", [
    (nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 2)), "'1'", "Sigmoid"),
    (nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.Tanh())), "'1.1'", "Tanh"),
    (nn.Sequential(nn.LSTM(4, 4)), "'0'", "LSTM"),
])
def test_unsupported_layer_is_named(bad, path, kind):
    with pytest.raises(UnsupportedLayerError, match=rf"{re.escape(path)} \({kind}\)"):
        to_probabilistic(bad)


def test_subclasses_are_not_trusted():
    class MyLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    with pytest.raises(UnsupportedLayerError, match="MyLinear"):
        to_probabilistic(nn.Sequential(MyLinear(3, 2)))


def test_non_sequential_forwards_are_refused():
    with pytest.raises(UnsupportedLayerError, match=r"relu2.*residual"):
        to_probabilistic(build_model("resnet-small", input_shape=(1, 8, 8)))
    with pytest.raises(UnsupportedLayerError, match="output is not the output of its last layer 'relu'"):
        to_probabilistic(build_model("sumpool-conv", input_shape=(1, 5, 5)))
    relu = nn.ReLU()

    class Reuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.r, self.b = nn.Linear(3, 3), relu, nn.Linear(3, 2)

        def forward(self, x):
            return self.b(self.r(self.a(self.r(x))))

    with pytest.raises(UnsupportedLayerError, match="calls"):
        to_probabilistic(Reuse(), example=torch.rand(1, 3))
    with pytest.raises(UnsupportedLayerError):  # dasp verifies with its own inputs
        dasp(build_model("resnet-small", input_shape=(1, 4, 4)), torch.rand(1, 1, 4, 4), n_sizes=1)


# --------------------------------------------------------------------------- exact Shapley values


def brute_force_shapley(f, x, b):
    """Shapley values from the permutation definition, for a handful of scalar features."""
    m = x.numel()
    phi = torch.zeros(m, f(x).numel(), dtype=D)
    perms = list(itertools.permutations(range(m)))
    for perm in perms:
        z = b.clone()
        prev = f(z)
        for i in perm:
            z.view(-1)[i] = x.view(-1)[i]
            cur = f(z)
            phi[i] += (cur - prev).reshape(-1)
            prev = cur
    return phi / len(perms)


def test_exact_shapley_matches_the_permutation_definition():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    x, b = torch.randn(1, 5, dtype=D), torch.randn(1, 5, dtype=D)
    ex = shapley_exact(net, x, b, return_players=True)[0].T
    with torch.no_grad():
        ref = brute_force_shapley(lambda z: net(z), x, b)
    assert torch.allclose(ex, ref, atol=1e-12)
    with torch.no_grad():
        assert torch.allclose(ex.sum(0), (net(x) - net(b))[0], atol=1e-12)  # completeness, exactly


def test_exact_refuses_too_many_players():
    with pytest.raises(ConfigError, match="too many"):
        shapley_exact(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), torch.rand(1, 1, 8, 8))


# --------------------------------------------------------------------------- DASP vs exact


def tiny_mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(9, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 3)).double().eval()


def tiny_cnn(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 16), nn.ReLU(),
                         nn.Linear(16, 3)).double().eval()


def rel_error(a, ref):
    """Mean over (input, class) of ||a - ref|| / ||ref|| across players."""
    return float(((a - ref).norm(dim=-1) / ref.norm(dim=-1)).mean())


# Measured on 5 seeds x 8 inputs (benchmarks/dasp.py --accuracy): mean relative L2 error with all 9 sizes
# 0.076 (MLP) and 0.118 (conv); worst seed 0.095 and 0.133. Gradient x input: 0.79 and 1.12.
@pytest.mark.parametrize("make,tol_all,tol_one", [(tiny_mlp, 0.12, 0.25), (tiny_cnn, 0.16, 0.35)])
def test_dasp_is_close_to_exact_shapley(make, tol_all, tol_one):
    net = make(0)
    x = torch.randn(8, 1, 3, 3, generator=gen(100), dtype=D)
    ex = shapley_exact(net, x, return_players=True)
    err_all = rel_error(dasp(net, x, return_players=True), ex)
    err_one = rel_error(dasp(net, x, n_sizes=1, return_players=True), ex)
    assert err_all < tol_all and err_one < tol_one and err_all < err_one
    xs = x.clone().requires_grad_(True)
    out = net(xs)
    gi = torch.stack([torch.autograd.grad(out[:, c].sum(), xs, retain_graph=True)[0] * x for c in range(3)], 1)
    assert rel_error(gi.reshape(8, 3, 9), ex) > 3 * err_all  # far better than a gradient method


def test_dasp_completeness_is_approximate():
    net = tiny_mlp(1)
    x = torch.randn(8, 1, 3, 3, generator=gen(7), dtype=D)
    a = dasp(net, x)
    with torch.no_grad():
        total = net(x) - net(torch.zeros_like(x))
    err = (a.sum((2, 3, 4)) - total).abs() / total.abs().mean()
    assert float(err.mean()) < 0.1


def test_dasp_is_exact_at_the_extreme_coalition_sizes():
    """k = 0 (alone) and k = M-1 (leave one out) have zero variance: DASP's terms are exact there."""
    net = tiny_cnn(2)
    x, b = torch.randn(2, 1, 3, 3, generator=gen(3), dtype=D), torch.randn(1, 1, 3, 3, generator=gen(4), dtype=D)
    alone = dasp(net, x, b, sizes=[0], return_players=True)
    loo = dasp(net, x, b, sizes=[8], return_players=True)
    with torch.no_grad():
        for i in range(9):
            e = torch.zeros(9, dtype=D)
            e[i] = 1
            e = e.reshape(1, 1, 3, 3)
            ref_alone = net(b + (x - b) * e) - net(b.expand_as(x))
            ref_loo = net(x) - net(x - (x - b) * e)
            assert torch.allclose(alone[:, :, i], ref_alone, atol=1e-12)
            assert torch.allclose(loo[:, :, i], ref_loo, atol=1e-12)


@pytest.mark.parametrize("groups", [None, 2, "pixel"])
def test_linear_model_dasp_equals_exact_shapley(groups):
    torch.manual_seed(0)
    model = build_model("linear", input_shape=(2, 3, 3), num_classes=4).double().eval()
    x = torch.randn(3, 2, 3, 3, generator=gen(1), dtype=D)
    b = torch.randn(2, 3, 3, generator=gen(2), dtype=D)
    a = dasp(model, x, b, n_sizes=3, feature_groups=groups)
    assert a.shape == (3, 4, 2, 3, 3)
    ex = shapley_exact(model, x, b, feature_groups=groups)
    assert torch.allclose(a, ex, atol=1e-12)
    if groups is None:
        w = model.output.weight.reshape(1, 4, 2, 3, 3)
        assert torch.allclose(a, w * (x - b).unsqueeze(1), atol=1e-12)


def test_linear_then_relu_net_exact_too_when_everything_after_prefix_is_affine():
    net = nn.Sequential(nn.Conv2d(1, 3, 2), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(3, 2)).double()
    x = torch.randn(2, 1, 3, 3, generator=gen(0), dtype=D)
    assert torch.allclose(dasp(net, x, n_sizes=2), shapley_exact(net, x), atol=1e-12)


def test_grouped_players_against_exact():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(2, 4, 2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 3)).double().eval()
    x = torch.randn(2, 2, 4, 4, generator=gen(1), dtype=D)
    for groups, m in [("pixel", 16), (2, 4), ((4, 1), 4)]:
        labels, mm = player_labels((2, 4, 4), groups)
        assert mm == m
        ex = shapley_exact(net, x, feature_groups=groups)
        a = dasp(net, x, feature_groups=groups)
        assert a.shape == ex.shape == (2, 3, 2, 4, 4)
        assert rel_error(a.reshape(2, 3, -1), ex.reshape(2, 3, -1)) < 0.15
        assert torch.allclose(a.sum((2, 3, 4)), ex.sum((2, 3, 4)), rtol=0.15, atol=1e-3)


def test_batching_does_not_change_the_result():
    net = tiny_cnn(4)
    x = torch.randn(2, 1, 3, 3, generator=gen(0), dtype=D)
    a1 = dasp(net, x, n_sizes=4, batch_size=1)
    a2 = dasp(net, x, n_sizes=4, batch_size=7)
    a3 = dasp(net, x, n_sizes=4)
    assert torch.allclose(a1, a2, atol=1e-12) and torch.allclose(a1, a3, atol=1e-12)


def test_reference_cnn_smoke_and_safety():
    torch.manual_seed(0)
    model = build_model("cnn", input_shape=(1, 6, 6)).train()
    x = torch.rand(2, 1, 6, 6, generator=gen(0))
    before, rng = model_fingerprint(model), torch.random.get_rng_state()
    a = dasp(model, x, n_sizes=3, sizes="random", seed=1)
    assert model_fingerprint(model) == before and model.training
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert a.shape == (2, 10, 1, 6, 6) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, dasp(model, x, n_sizes=3, sizes="random", seed=1))
    model.eval()
    with torch.no_grad():
        total = model(x) - model(torch.zeros_like(x))
    assert float((a.sum((2, 3, 4)) - total).abs().max()) < 0.5 * float(total.abs().max())


# --------------------------------------------------------------------------- sizes and errors


def test_coalition_sizes():
    ks, w = coalition_sizes(10)
    assert ks.tolist() == list(range(10)) and torch.allclose(w, torch.full((10,), 0.1, dtype=D))
    ks, w = coalition_sizes(10, 3)
    assert ks.tolist() == [1, 5, 8] and torch.allclose(w, torch.tensor([0.4, 0.3, 0.3], dtype=D))
    ks, w = coalition_sizes(784, 16)
    assert len(ks) == 16 and abs(float(w.sum()) - 1) < 1e-12 and ks.min() >= 0 and ks.max() <= 783
    ks, w = coalition_sizes(100, 4, "random", seed=3)
    assert all(25 * s <= k < 25 * (s + 1) for s, k in enumerate(ks.tolist()))
    assert torch.equal(ks, coalition_sizes(100, 4, "random", seed=3)[0])
    assert not torch.equal(ks, coalition_sizes(100, 4, "random", seed=4)[0])
    assert coalition_sizes(5, 50)[0].tolist() == list(range(5))
    assert coalition_sizes(5, sizes=[0, 4])[0].tolist() == [0, 4]
    for bad in [dict(n_sizes=0), dict(sizes="bogus"), dict(sizes=[5]), dict(sizes="all", n_sizes=2),
                dict(sizes=[1], n_sizes=1), dict(n_sizes=1.5)]:
        with pytest.raises(ConfigError):
            coalition_sizes(5, **bad)


def test_clear_errors():
    net = tiny_mlp(0)
    x = torch.randn(1, 1, 3, 3, dtype=D)
    with pytest.raises(InputError, match="baseline"):
        dasp(net, x, baseline=torch.zeros(2, 2))
    with pytest.raises(InputError, match="NaN"):
        dasp(net, x * float("nan"))
    with pytest.raises(ConfigError, match="patch"):
        dasp(net, x, feature_groups=0)
    with pytest.raises(ConfigError, match="feature_groups"):
        dasp(nn.Linear(4, 2).double(), torch.randn(1, 4, dtype=D), feature_groups="pixel")
    with pytest.raises(ModelError):
        dasp(nn.Sequential(nn.Conv2d(1, 2, 2)).double(), x)
