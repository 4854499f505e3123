"""Closed forms and invariants of the attribution methods."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sanitas.errors import ConfigError, InputError, ModelError, UnknownNameError
from sanitas.explain import EXPLAINERS, IntegratedGradients, explain, get_explainer, layer_decomposition
from sanitas.models import build_model
from sanitas.utils.hashing import model_fingerprint


@pytest.fixture
def linear():
    torch.manual_seed(0)
    m = build_model("linear")
    with torch.no_grad():
        m.output.bias.normal_()
    return m


def _weights(m):
    lin = [mod for mod in m.modules() if isinstance(mod, nn.Linear)][0]
    return lin.weight.detach()


def test_linear_gradient_is_weight_row(linear):
    x = torch.rand(5, 1, 28, 28)
    y = torch.tensor([0, 3, 9, 2, 2])
    W = _weights(linear).view(10, 1, 28, 28)
    assert torch.allclose(explain(linear, x, y, method="gradient"), W[y], atol=1e-6)
    ixg = explain(linear, x, y, method="input_x_gradient")
    assert torch.allclose(ixg, x * W[y], atol=1e-6)
    ig = explain(linear, x, y, method="integrated_gradients", steps=8)
    assert torch.allclose(ig, x * W[y], atol=1e-5)
    sg = explain(linear, x, y, method="smoothgrad", samples=6, sigma=0.3)
    assert torch.allclose(sg, W[y], atol=1e-6)
    # all classes at once: the whole weight matrix for every image
    allg = explain(linear, x, "all", method="gradient")
    assert allg.shape == (5, 10, 1, 28, 28)
    assert torch.allclose(allg, W.unsqueeze(0).expand(5, -1, -1, -1, -1), atol=1e-6)


def test_gradient_is_signed_not_abs(linear):
    g = explain(linear, torch.rand(2, 1, 28, 28), 0, method="gradient")
    assert (g < 0).any() and (g > 0).any()


@pytest.mark.parametrize("rule", ["gausslegendre", "trapezoid", "middle"])
def test_ig_completeness_relu_net(rule):
    torch.manual_seed(1)
    m = build_model("cnn")
    x = torch.rand(4, 1, 28, 28)
    maps, gap = IntegratedGradients(steps=64, rule=rule).with_gap(m, x, "predicted")
    fx = m(x).max(1).values
    assert (gap.abs() / fx.abs().clamp_min(1e-3)).max() < 0.05


def test_ig_trained_cnn_completeness_within_one_percent(trained_cnn, fmnist_test):
    x, y = fmnist_test.x[:16], fmnist_test.y[:16]
    ig = IntegratedGradients(steps=128)
    maps, gap = ig.with_gap(trained_cnn, x, y)
    with torch.no_grad():
        diff = trained_cnn(x)[torch.arange(16), y] - trained_cnn(torch.zeros_like(x))[torch.arange(16), y]
    rel = gap.abs() / diff.abs()
    assert rel.max() < 0.01, rel


def test_input_x_gradient_complete_on_bias_free_relu_net():
    torch.manual_seed(2)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(4 * 13 * 13, 16, bias=False), nn.ReLU(), nn.Linear(16, 10, bias=False))
    x = torch.rand(6, 1, 28, 28)
    maps = explain(m, x, "all", method="input_x_gradient")
    with torch.no_grad():
        logits = m(x)
    assert torch.allclose(maps.flatten(2).sum(-1), logits, rtol=1e-4, atol=1e-5)


def test_eq13_layer_decomposition_on_relu_cnn_with_biases():
    torch.manual_seed(3)
    m = build_model("cnn")
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.1)
    x = torch.rand(5, 1, 28, 28)
    d = layer_decomposition(m, x, "predicted")
    A_h, A_b, logit = d["A_h"], d["A_b"], d["logit"]
    # every layer of this sequential CNN cuts the graph: f = A_h[l] + sum of A_b above l
    for layer in range(A_h.shape[1]):
        recon = A_h[:, layer] + A_b[:, layer + 1:].sum(1)
        assert torch.allclose(recon, logit, atol=1e-4, rtol=1e-4), (d["layers"][layer], recon, logit)
    assert d["layers"][0] == "input" and d["layers"][-1] == "output"


def test_deeplift_summation_to_delta():
    torch.manual_seed(4)
    m = build_model("cnn")
    x = torch.rand(3, 1, 28, 28)
    base = torch.rand(3, 1, 28, 28) * 0.3
    maps = explain(m, x, "all", method="deeplift", baseline=base)
    with torch.no_grad():
        delta = m(x) - m(base)
    assert torch.allclose(maps.flatten(2).sum(-1), delta, rtol=1e-3, atol=1e-4)


def test_sumpool_conv_gradient_depends_only_on_activation_pattern():
    """Seed 000 section 5.3: for sum(relu(w * x)), the gradient is a function of the 3x3 pattern."""
    torch.manual_seed(5)
    m = build_model("sumpool-conv")
    x = torch.rand(1, 1, 28, 28)
    g = explain(m, x, 0, method="gradient")
    conv = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)][0]
    with torch.no_grad():
        pattern = (conv(x) > 0).float()  # which units are active
    # gradient = sum over active units of the (flipped) kernel: a transposed conv of the pattern
    w = conv.weight.detach()
    expected = F.conv_transpose2d(pattern[:, :1], w[:1], padding=conv.padding)
    assert torch.allclose(g, expected, atol=1e-5)
    # a different image with the same activation pattern has the same gradient
    x2 = x * 2.0
    assert torch.allclose(explain(m, x2, 0, method="gradient"), g, atol=1e-5)


@pytest.mark.parametrize("strategy", ["rows", "batched"])
def test_all_class_matches_single_target_for_every_method(strategy, monkeypatch):
    """Both ways of computing the K rows (per-row backward on the shared graph, CPU's default;
    is_grads_batched, the accelerators') give every method's single-target maps."""
    from sanitas.explain import _core

    monkeypatch.setattr(_core, "VJP_STRATEGY", strategy)
    torch.manual_seed(6)
    m = build_model("cnn")
    x = torch.rand(2, 1, 28, 28)
    y = torch.tensor([4, 7])
    for name in EXPLAINERS.names():
        opts = {"samples": 3} if name in ("smoothgrad", "vargrad") else {}
        if name == "integrated_gradients":
            opts = {"steps": 8}
        if name == "dasp":
            opts = {"n_sizes": 2, "feature_groups": 7}
        one = explain(m, x, y, method=name, **opts)
        full = explain(m, x, "all", method=name, **opts)
        assert full.shape == (2, 10, 1, 28, 28), name
        assert torch.allclose(full[torch.arange(2), y], one, atol=1e-5, rtol=1e-4), name


def test_all_class_uses_one_forward_pass():
    m = build_model("cnn")
    calls = []
    h = m.register_forward_hook(lambda *a: calls.append(1))
    explain(m, torch.rand(2, 1, 28, 28), "all", method="guided_backprop")
    # the first call probes the model's number of classes and its activation size (cached per shape)
    assert len(calls) == 3
    explain(m, torch.rand(2, 1, 28, 28), "all", method="guided_backprop")
    h.remove()
    # then the class count on one image (never cached: a head can be swapped between calls) and one
    # forward pass for all classes' backward passes
    assert len(calls) == 5


@pytest.mark.parametrize("name", ["gradient", "guided_backprop", "lrp_epsilon", "deeplift", "gradcam", "fullgrad",
                                  "smoothgrad", "activity"])
def test_user_model_untouched_and_training_flag_restored(name):
    m = build_model("resnet-small")
    m.train()
    m.stages.stage1.block1.bn1.eval()  # a mixed state must come back exactly
    for p in list(m.parameters())[:2]:
        p.requires_grad_(False)
    before = model_fingerprint(m)
    opts = {"samples": 2} if name == "smoothgrad" else {}
    if name in ("lrp_epsilon", "deeplift"):
        # resnet has additions and BatchNorm: both are supported
        pass
    explain(m, torch.rand(2, 1, 28, 28), 1, method=name, **opts)
    assert model_fingerprint(m) == before


def test_bad_inputs_raise_clear_errors(linear):
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(InputError, match="out of range"):
        explain(linear, x, 10)
    with pytest.raises(InputError, match="NaN"):
        explain(linear, x.clone().fill_(float("nan")), 0)
    with pytest.raises(InputError, match="batch dimension"):
        explain(linear, torch.rand(28), 0)
    with pytest.raises(InputError, match="shape"):
        explain(linear, torch.rand(2, 3, 32, 32), 0)
    with pytest.raises(InputError, match="2 images"):
        explain(linear, x, [1, 2, 3])
    with pytest.raises(UnknownNameError, match="guided_backprop"):
        get_explainer("guided_backprob")
    with pytest.raises(ConfigError, match="valid options"):
        get_explainer("gradient", steps=3)
    with pytest.raises(ConfigError, match="steps"):
        get_explainer("integrated_gradients", steps=0)
    with pytest.raises(ModelError, match=r"\(N, K\)"):
        explain(nn.Identity(), x, 0)
    with pytest.raises(UnknownNameError, match="no layer"):
        explain(build_model("cnn"), x, 0, method="gradcam", layer="features.conv9")


def test_nested_names_and_callables(linear):
    x = torch.rand(2, 1, 28, 28)
    e = get_explainer("smoothgrad(input_x_gradient)", samples=4, sigma=0.0)
    assert torch.allclose(e(linear, x, 1), explain(linear, x, 1, method="input_x_gradient"), atol=1e-6)
    assert "input_x_gradient" in repr(e)

    def mine(model, x, target):
        return torch.ones_like(x) * target.view(-1, 1, 1, 1)

    out = explain(linear, x, torch.tensor([2, 5]), method=mine)
    assert out[0].max() == 2 and out[1].max() == 5
    assert explain(linear, x, "all", method=mine).shape == (2, 10, 1, 28, 28)


def test_controls_are_model_free_and_seeded():
    x = torch.rand(2, 1, 28, 28)
    a = explain(build_model("cnn"), x, 0, method="random", seed=3)
    b = explain(build_model("mlp"), x, 1, method="random", seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, explain(build_model("cnn"), x, 0, method="random", seed=4))
    s = explain(build_model("cnn"), x, 0, method="sobel")
    assert s.shape == x.shape and (s >= 0).all()
    c = explain(build_model("cnn"), x, 0, method="canny")
    assert set(c.unique().tolist()) <= {0.0, 1.0}


def test_smoothgrad_noise_is_relative_to_input_range(linear):
    """Scaling the inputs by 10 scales the noise by 10 (Captum's stdevs are absolute)."""
    torch.manual_seed(7)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    x = torch.rand(3, 1, 28, 28)
    scaled = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        scaled[1].weight.copy_(net[1].weight / 10)
        scaled[1].bias.copy_(net[1].bias)
        scaled[3].load_state_dict(net[3].state_dict())
    a = explain(net, x, 1, method="smoothgrad", samples=8, sigma=0.2)
    b = explain(scaled, x * 10, 1, method="smoothgrad", samples=8, sigma=0.2)
    assert torch.allclose(a, b * 10, atol=1e-5)


def test_smoothgrad_seeded():
    m = build_model("cnn")
    x = torch.rand(2, 1, 28, 28)
    a = explain(m, x, 1, method="smoothgrad", samples=4, seed=1)
    assert torch.equal(a, explain(m, x, 1, method="smoothgrad", samples=4, seed=1))
    assert not torch.equal(a, explain(m, x, 1, method="smoothgrad", samples=4, seed=2))
    state = torch.random.get_rng_state()
    explain(m, x, 1, method="vargrad", samples=4)
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("method, kw", [("integrated_gradients", {"steps": 12}), ("smoothgrad", {"samples": 6}),
                                        ("vargrad", {"samples": 6})])
def test_pass_size_changes_speed_not_maps(method, kw):
    """batch_size (inputs per pass; default sized for the CPU cache) only regroups the work."""
    torch.manual_seed(0)
    m = build_model("cnn")
    x, y = torch.rand(5, 1, 28, 28), torch.tensor([0, 1, 2, 3, 4])
    ref = explain(m, x, y, method=method, **kw)
    for bs in (1, 3, 7, 5 * 6, 10_000):  # 1 and 3 split the images, the others the points
        other = explain(m, x, y, method=method, batch_size=bs, **kw)
        assert torch.allclose(ref, other, rtol=1e-4, atol=1e-6 * float(ref.abs().max())), bs
    seen = []
    handle = m.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[0]))
    explain(m, x, y, method=method, batch_size=3, **kw)
    handle.remove()
    # explicit targets need no probe pass for the class count: every pass is real work
    assert max(seen) <= 3 and sum(seen) == 5 * next(iter(kw.values()))  # images split, every point once
    with pytest.raises(ConfigError, match="batch_size must be a positive"):
        get_explainer(method, batch_size=0)


def test_inputs_per_pass_defaults():
    from sanitas.explain._core import CPU_ELEMENTS_PER_PASS, inputs_per_pass

    assert inputs_per_pass(None, torch.zeros(3, 1, 28, 28)) == 256
    assert inputs_per_pass(None, torch.zeros(3, 3, 224, 224)) == max(1, CPU_ELEMENTS_PER_PASS // (3 * 224 * 224))
    assert inputs_per_pass(40, torch.zeros(3, 1, 28, 28)) == 40


def test_cpu_pass_size_from_the_measured_activations():
    """On CPU the default pass holds CPU_ACTIVATION_BYTES_PER_PASS of module outputs, measured by a
    probe pass whose hooks are removed again; a model that cannot be probed gets the element budget."""
    from sanitas.explain._core import CPU_ACTIVATION_BYTES_PER_PASS, activation_bytes, inputs_per_pass

    m = build_model("cnn")
    x = torch.rand(3, 1, 28, 28)
    # conv1, relu1 (32x28x28), pool1 (32x14x14), conv2, relu2 (64x14x14), pool2, flatten (64x7x7),
    # fc1, relu3 (1024), output (10); float32
    expected = 4 * (2 * 32 * 784 + 32 * 196 + 2 * 64 * 196 + 2 * 64 * 49 + 2 * 1024 + 10)
    assert activation_bytes(m, x) == expected
    assert inputs_per_pass(None, x, m) == CPU_ACTIVATION_BYTES_PER_PASS // expected
    assert all(not mod._forward_hooks for mod in m.modules())
    assert inputs_per_pass(7, x, m) == 7
    # large inputs: at least CPU_MIN_INPUTS_PER_PASS while they fit in CPU_MAX_BYTES_PER_PASS
    from sanitas.explain import _core

    big = torch.rand(2, 1, 224, 224)
    per = activation_bytes(m_big := build_model("cnn", input_shape=(1, 224, 224)), big)
    assert per > CPU_ACTIVATION_BYTES_PER_PASS // 4
    assert inputs_per_pass(None, big, m_big) == min(_core.CPU_MIN_INPUTS_PER_PASS, _core.CPU_MAX_BYTES_PER_PASS // per)

    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("no probe")

    assert inputs_per_pass(None, x, Broken()) == 256


@pytest.mark.parametrize("method", ["gradient", "input_x_gradient", "guided_backprop", "deconvnet", "gradcam",
                                    "guided_gradcam", "lrp_epsilon", "lrp_zplus", "fullgrad"])
def test_per_image_methods_run_in_passes_with_equal_maps(method, monkeypatch):
    """Single-pass methods split the images into passes of the CPU budget; the maps must not change
    (one target per image and all classes)."""
    from sanitas.explain import _core

    torch.manual_seed(0)
    m = build_model("cnn")
    x, y = torch.rand(5, 1, 28, 28), torch.tensor([0, 1, 2, 3, 4])
    ref, ref_all = explain(m, x, y, method=method), explain(m, x, "all", method=method)
    monkeypatch.setattr(_core, "CPU_ACTIVATION_BYTES_PER_PASS", 2 * _core.activation_bytes(m, x))
    monkeypatch.setattr(_core, "CPU_MIN_INPUTS_PER_PASS", 1)
    seen = []
    handle = m.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[0]))
    got, got_all = explain(m, x, y, method=method), explain(m, x, "all", method=method)
    handle.remove()
    assert max(seen) == 2  # passes of two images
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
    assert torch.allclose(got_all, ref_all, rtol=1e-5, atol=1e-6 * float(ref_all.abs().max()))
