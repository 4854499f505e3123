"""Modified-backprop rules on module, reused, in-place and functional ReLUs; unsupported layers; layer maps."""

import copy

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from sanitas.errors import ConfigError, UnsupportedLayerError
from sanitas.explain import explain, postprocess
from sanitas.models import build_model


class Variants(nn.Module):
    """The paper CNN's function with four ways of writing its ReLUs."""

    def __init__(self, net, how):
        super().__init__()
        self.net, self.how = net, how
        self.shared = nn.ReLU(inplace=(how == "inplace"))

    def act(self, h):
        if self.how == "functional":
            return F.relu(h)
        if self.how == "torch":
            return torch.relu(h)
        if self.how == "method":
            return h.relu()
        return self.shared(h)  # "reused" / "inplace": one module called three times

    def forward(self, x):
        n = self.net
        h = n.features.pool1(self.act(n.features.conv1(x)))
        h = n.features.pool2(self.act(n.features.conv2(h)))
        return n.output(self.act(n.fc1(h.flatten(1))))


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet", "lrp_epsilon", "lrp_zplus", "lrp_alpha_beta",
                                    "deeplift", "guided_gradcam"])
@pytest.mark.parametrize("how", ["functional", "torch", "method", "reused", "inplace"])
def test_rules_do_not_depend_on_how_relu_is_written(method, how):
    torch.manual_seed(0)
    m = build_model("cnn").eval()
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([3, 8])
    ref = explain(m, x, y, method=method)
    other = explain(Variants(m, how), x, y, method=method, **({"layer": "net.features.conv2"}
                                                               if method == "guided_gradcam" else {}))
    assert torch.allclose(ref, other, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(ref, explain(m, x, y, method="gradient"), atol=1e-5)


@pytest.mark.parametrize("act", [nn.Sigmoid(), nn.GELU(), nn.Tanh(), nn.Softplus()])
@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_unsupported_nonlinearity_names_the_layer(act, method):
    m = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), act, nn.Linear(16, 10))
    with pytest.raises(UnsupportedLayerError, match=r"'2 \(" + type(act).__name__ + r".*integrated_gradients"):
        explain(m, torch.rand(2, 1, 28, 28), 0, method=method)


class Square(nn.Module):
    def forward(self, h):
        return h * h.abs().sqrt()


class ManualNorm(nn.Module):
    def forward(self, h):
        return (h - h.mean(-1, keepdim=True)) / (h.var(-1, keepdim=True) + 1e-5).sqrt()


@pytest.mark.parametrize("layer", [Square(), ManualNorm()])
@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet", "lrp_epsilon", "lrp_zplus", "deeplift"])
def test_operations_without_a_rule_raise_and_name_the_layer(layer, method):
    """Never a silently different method: an op no rule covers is an error naming op and module."""
    m = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), layer, nn.Linear(16, 10))
    with pytest.raises(UnsupportedLayerError, match=r"has no rule for .*'2 \(" + type(layer).__name__):
        explain(m, torch.rand(2, 1, 28, 28), 0, method=method)


@pytest.mark.parametrize("act", [nn.Sigmoid(), nn.GELU(), nn.Tanh(), nn.Softplus(), nn.SiLU()])
def test_lrp_identity_rule_conserves_relevance_through_elementwise_activations(act):
    """AttnLRP's identity rule: relevance passes an activation unchanged (sum(R) = logit, no biases)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(784, 16, bias=False), act, nn.Linear(16, 10, bias=False))
    x = torch.rand(3, 1, 28, 28)
    r = explain(m, x, "all", method="lrp_epsilon", epsilon=1e-9)
    with torch.no_grad():
        assert torch.allclose(r.flatten(2).sum(-1), m(x), rtol=1e-4, atol=1e-5)


def test_deeplift_supports_sigmoid_and_tanh_with_summation_to_delta():
    torch.manual_seed(1)
    m = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.Sigmoid(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 10))
    x = torch.rand(3, 1, 28, 28)
    maps = explain(m, x, "all", method="deeplift")
    with torch.no_grad():
        delta = m(x) - m(torch.zeros_like(x))
    assert torch.allclose(maps.flatten(2).sum(-1), delta, atol=1e-5)


def test_lrp_conserves_relevance_on_bias_free_net_and_handles_flatten_and_residuals():
    torch.manual_seed(2)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(4 * 13 * 13, 10, bias=False))
    x = torch.rand(2, 1, 28, 28)
    r = explain(m, x, "all", method="lrp_epsilon", epsilon=1e-9)
    with torch.no_grad():
        assert torch.allclose(r.flatten(2).sum(-1), m(x), rtol=1e-4, atol=1e-5)
    res = build_model("resnet-small")
    out = explain(res, x, 1, method="lrp_epsilon")
    assert torch.isfinite(out).all() and out.abs().sum() > 0


def test_lrp_zplus_maps_are_nonnegative_above_first_layer():
    torch.manual_seed(3)
    m = build_model("cnn").eval()
    x = torch.rand(2, 1, 28, 28)  # non-negative pixels: z+ relevance is non-negative when the logit is
    with torch.no_grad():
        y = m(x).argmax(1)
        logits = m(x)[torch.arange(2), y]
    r = explain(m, x, y, method="lrp_zplus")
    if (logits > 0).all():
        assert (r >= -1e-7).all()
    with pytest.raises(ConfigError, match="alpha - beta = 1"):
        explain(m, x, y, method="lrp_alpha_beta", alpha=2.0, beta=0.5)


def test_core_finding_guided_backprop_ignores_top_layer_randomization(trained_cnn, fmnist_test):
    x, y = fmnist_test.x[:16], fmnist_test.y[:16]
    rand = copy.deepcopy(trained_cnn)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = rand.output.weight
        w.copy_(torch.randn(w.shape, generator=g).mul_(0.01).clamp_(-0.02, 0.02))
        rand.output.bias.zero_()

    def mean_rank_corr(method):
        a = explain(trained_cnn, x, y, method=method).abs().flatten(1)
        b = explain(rand, x, y, method=method).abs().flatten(1)
        return sum(spearmanr(a[i], b[i])[0] for i in range(len(x))) / len(x)

    gbp, grad = mean_rank_corr("guided_backprop"), mean_rank_corr("gradient")
    assert gbp > 0.8, gbp
    assert grad < 0.5, grad


def test_ig_baselines():
    m = build_model("cnn")
    x = torch.rand(2, 1, 28, 28)
    for base in ["zeros", "blur", "uniform", 0.5, torch.full((1, 1, 28, 28), 0.2)]:
        out = explain(m, x, 0, method="integrated_gradients", baseline=base, steps=4)
        assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ConfigError, match="baseline"):
        explain(m, x, 0, method="integrated_gradients", baseline="mean")


def test_activity_bias_fullgrad_shapes_and_aggregates():
    torch.manual_seed(4)
    for name in ["vgg-small", "resnet-small", "cnn"]:
        m = build_model(name)
        x = torch.rand(2, 1, 28, 28)
        for method in ["activity", "bias", "fullgrad"]:
            out = explain(m, x, 1, method=method)
            assert out.shape == x.shape and torch.isfinite(out).all(), (name, method)
        a1 = explain(m, x, 1, method="activity", aggregate="top-1")
        assert a1.min() >= 0 and a1.max() <= 1 + 1e-6
    cnn = build_model("cnn")
    single = explain(cnn, x, 1, method="activity", layer="features.conv2")
    assert (single < 0).any()  # single-layer maps stay raw and signed
    with pytest.raises(ConfigError, match="top-K"):
        explain(cnn, x, 1, method="activity", aggregate="best")


def test_postprocess_functions():
    m = torch.tensor([[[[1.0, -2.0], [3.0, 0.0]], [[1.0, 1.0], [-1.0, 0.0]]]])
    assert torch.equal(postprocess.reduce_channels(m, "sum"), torch.tensor([[[[2.0, -1.0], [2.0, 0.0]]]]))
    assert torch.equal(postprocess.reduce_channels(m, "abs_sum"), torch.tensor([[[[2.0, 3.0], [4.0, 0.0]]]]))
    assert torch.equal(postprocess.reduce_channels(m, "max"), torch.tensor([[[[1.0, 1.0], [3.0, 0.0]]]]))
    n = postprocess.normalize_minmax(m)
    assert n.min() == 0 and n.max() == 1
    assert postprocess.normalize_maxabs(m).abs().max() == 1
    v = postprocess.visualize(m, "two_channel")
    assert v.shape == (1, 2, 2, 2) and (v >= 0).all()
    with pytest.raises(ConfigError):
        postprocess.reduce_channels(m, "median")
