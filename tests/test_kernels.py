"""The CPU kernels of explanation passes agree with PyTorch's and leave the user's model alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sanitas.explain import get_explainer, kernels
from sanitas.explain import _core
from sanitas.models import build_model
from sanitas.utils.hashing import model_fingerprint


def _close(a, b, rtol=1e-5):
    a, b = a.detach(), b.detach()
    scale = max(float(b.abs().max()), 1e-12)
    return float((a - b).abs().max()) <= rtol * scale


@pytest.mark.parametrize("lead,bias", [((7,), True), ((7,), False), ((2, 5), True)])
def test_linear_onednn_matches_linear_values_and_gradients(lead, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*lead, 33, generator=g, requires_grad=True)
    w = torch.randn(19, 33, generator=g, requires_grad=True)
    b = torch.randn(19, generator=g, requires_grad=True) if bias else None
    go = torch.randn(*lead, 19, generator=g)
    want = F.linear(x, w, b)
    got = kernels.linear_onednn(x, w, b)
    assert got.shape == want.shape and _close(got, want)
    ins = [x, w] + ([b] if bias else [])
    for gw, gg in zip(torch.autograd.grad(want, ins, go), torch.autograd.grad(got, ins, go)):
        assert _close(gg, gw)


def test_linear_onednn_takes_non_contiguous_inputs_and_weights():
    x = torch.randn(33, 8).t()  # (8, 33), not contiguous
    w = torch.randn(33, 19).t()  # a tied, transposed weight
    assert _close(kernels.linear_onednn(x, w), F.linear(x, w))


@pytest.mark.parametrize("k,padding,hw", [(5, 2, (28, 28)), (3, 1, (9, 13)), (3, 0, (10, 10)), (4, 1, (11, 8)),
                                          ((3, 5), (0, 2), (12, 9)), (1, 0, (6, 6))])
@pytest.mark.parametrize("channels_last", [False, True])
def test_one_channel_input_gradient_matches_autograd(k, padding, hw, channels_last):
    g = torch.Generator().manual_seed(1)
    kh, kw = (k, k) if isinstance(k, int) else k
    x = torch.randn(3, 1, *hw, generator=g, requires_grad=True)
    w = torch.randn(6, 1, kh, kw, generator=g)
    out = F.conv2d(x, w, padding=padding)
    go = torch.randn(out.shape, generator=g)
    if channels_last:  # the gradient a channels_last model hands back (a 1x1 conv path instead of matmul)
        go = go.contiguous(memory_format=torch.channels_last)
        assert not go.is_contiguous()
    (want,) = torch.autograd.grad(out, x, go)
    pad = (padding, padding) if isinstance(padding, int) else padding
    got = kernels.conv_input_grad_one_channel(go, w, hw, pad)
    assert got.shape == want.shape and _close(got, want)


def _tiny_gray_net():
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 12, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(12, 6, 3, padding="same"),
                         nn.ReLU(), nn.Flatten(), nn.Linear(6 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 5))


def test_mode_keeps_values_and_every_gradient(monkeypatch):
    """Inside the mode the forward, the input gradient and (when asked) weight and bias gradients
    equal PyTorch's own, both with .backward() and autograd.grad on any subset."""
    monkeypatch.setattr(kernels, "LINEAR_BACKEND", "onednn")
    net = _tiny_gray_net()
    x = torch.randn(4, 1, 14, 14)
    params = list(net.parameters())

    def run(fast, wrt_params):
        xg = x.clone().requires_grad_(True)
        ctx = kernels.CPUKernels() if fast else torch.enable_grad()
        with ctx:
            out = net(xg)
        ins = [xg] + (params if wrt_params else [])
        return [out.detach()] + list(torch.autograd.grad(out.square().sum(), ins))

    for wrt_params in (False, True):
        for want, got in zip(run(False, wrt_params), run(True, wrt_params)):
            assert _close(got, want, 1e-4)
    # .backward() accumulates parameter gradients through the fast kernels too
    net.zero_grad()
    with kernels.CPUKernels():
        net(x).square().sum().backward()
    fast_grads = [p.grad.clone() for p in params]
    net.zero_grad()
    net(x).square().sum().backward()
    for p, g in zip(params, fast_grads):
        assert _close(g, p.grad, 1e-4)


def test_explanations_use_the_fast_kernels_and_skip_weight_gradients(monkeypatch):
    monkeypatch.setattr(kernels, "LINEAR_BACKEND", "onednn")
    calls = {"linear": 0, "conv": 0}
    needs = []
    lin, conv, engine_needs = kernels.linear_onednn, kernels.conv_input_grad_one_channel, kernels._engine_needs

    def spy_lin(*a, **k):
        calls["linear"] += 1
        return lin(*a, **k)

    def spy_conv(*a, **k):
        calls["conv"] += 1
        return conv(*a, **k)

    def spy_needs(ctx, i):
        needs.append((i, engine_needs(ctx, i)))
        return needs[-1][1]

    monkeypatch.setattr(kernels, "linear_onednn", spy_lin)
    monkeypatch.setattr(kernels, "conv_input_grad_one_channel", spy_conv)
    monkeypatch.setattr(kernels, "_engine_needs", spy_needs)
    net = _tiny_gray_net()
    x = torch.rand(3, 1, 14, 14)
    get_explainer("gradient")(net, x, 1)
    assert calls["conv"] == 1 and calls["linear"] >= 2  # (and the pass-size probe's forward, the first time)
    assert needs == [(0, True), (1, False), (2, False)]  # the weight and bias gradients are never computed
    seen = dict(calls)
    monkeypatch.setattr(kernels, "ENABLED", False)
    get_explainer("gradient")(net, x, 1)
    assert calls == seen


METHODS = ["gradient", "input_x_gradient", "integrated_gradients", "smoothgrad", "guided_backprop", "deconvnet",
           "gradcam", "guided_gradcam", "lrp", "lrp_zplus", "deeplift", "fullgrad"]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_the_same_maps_with_and_without_the_kernels(method, monkeypatch):
    net = build_model("cnn").eval()
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    before = model_fingerprint(net)
    opts = {"steps": 8} if method == "integrated_gradients" else {"samples": 4} if method == "smoothgrad" else {}
    explainer = get_explainer(method, **opts)
    monkeypatch.setattr(kernels, "ENABLED", False)
    want = explainer(net, x, 3)
    monkeypatch.setattr(kernels, "ENABLED", True)
    monkeypatch.setattr(kernels, "LINEAR_BACKEND", "onednn")
    got = explainer(net, x, 3)
    assert _close(got, want, 1e-4)
    assert model_fingerprint(net) == before


def test_batched_vjp_runs_the_one_channel_kernel_under_vmap(monkeypatch):
    """is_grads_batched runs the backward under vmap; the one-channel function batches like a torch op."""
    monkeypatch.setattr(kernels, "LINEAR_BACKEND", "onednn")
    calls = []
    conv = kernels.conv_input_grad_one_channel
    monkeypatch.setattr(kernels, "conv_input_grad_one_channel", lambda *a: calls.append(1) or conv(*a))
    net = _tiny_gray_net().eval()
    x = torch.rand(3, 1, 14, 14)
    rows = get_explainer("gradient")(net, x, "all")
    monkeypatch.setattr(_core, "VJP_STRATEGY", "batched")
    calls.clear()
    batched = get_explainer("gradient")(net, x, "all")
    assert calls and batched.shape == (3, 5, 1, 14, 14) and _close(batched, rows, 1e-4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.func.jvp loads torch.jit decompositions
@pytest.mark.parametrize("bias", [True, False])
def test_one_channel_function_under_torch_func_transforms(bias):
    """grad, vmap and jvp of the one-channel function equal those of F.conv2d: no private check of
    functorch wrappers is needed to step aside."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 1, 9, 9, generator=g)
    w = torch.randn(20, 1, 5, 5, generator=g)
    b = torch.randn(20, generator=g) if bias else None
    xt, wt = torch.randn(x.shape, generator=g), torch.randn(w.shape, generator=g)
    bt = torch.randn(20, generator=g) if bias else None

    def ours(x, w, b):
        return kernels._OneChannelConv2d.apply(x, w, b, (2, 2))

    def plain(x, w, b):
        return F.conv2d(x, w, b, 1, (2, 2))

    for fn in (ours, plain):
        fn.grads = torch.func.grad(lambda *a: fn(*a).square().sum(), argnums=(0, 1))(x, w, b)
        fn.vm = torch.func.vmap(lambda xi: fn(xi.unsqueeze(0), w, b))(x)
        fn.jvp = torch.func.jvp(fn, (x, w) + ((b,) if bias else ()), (xt, wt) + ((bt,) if bias else ()))[1] \
            if bias else torch.func.jvp(lambda x, w: fn(x, w, None), (x, w), (xt, wt))[1]
        fn.bias_only = torch.func.jvp(lambda b: fn(x, w, b), (b,), (bt,))[1] if bias else None
    for got, want in zip(ours.grads, plain.grads):
        assert _close(got, want)
    assert _close(ours.vm, plain.vm) and _close(ours.jvp, plain.jvp)
    if bias:
        assert ours.bias_only.shape == plain.bias_only.shape and _close(ours.bias_only, plain.bias_only)


def test_without_the_private_engine_query_the_maps_are_bitwise_equal(monkeypatch):
    """The one private call (torch._C._will_engine_execute_node) only saves time: without it the
    weight gradients are computed too, and the explanation does not change by a bit."""
    net = build_model("cnn").eval()
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    explainer = get_explainer("integrated_gradients", steps=4)
    want = explainer(net, x, 3)
    weight_grads = []
    conv_weight = torch.nn.grad.conv2d_weight
    monkeypatch.setattr(torch.nn.grad, "conv2d_weight", lambda *a, **k: weight_grads.append(1) or conv_weight(*a, **k))
    assert explainer(net, x, 3).equal(want) and not weight_grads
    monkeypatch.delattr(torch._C, "_will_engine_execute_node")
    assert explainer(net, x, 3).equal(want) and weight_grads


def test_linear_rule(monkeypatch):
    monkeypatch.setattr(kernels, "blas_lacks_avx512", lambda: True)
    prefers = lambda m, k, n: kernels.linear_prefers_onednn(torch.empty(m, k), torch.empty(n, k))  # noqa: E731
    assert prefers(140, 3136, 1024) and prefers(1284, 784, 2500) and prefers(4 * 64, 1024, 1024)
    assert not prefers(kernels.LINEAR_MIN_ROWS - 1, 3136, 1024)  # too few rows
    assert not prefers(140, 1152, 256) and not prefers(140, 1024, 10)  # weights too small
    assert not prefers(110, 1024, 1024) and prefers(140, 1024, 1024)  # too few multiply-adds, then enough
    assert kernels.linear_prefers_onednn(torch.empty(2, 32, 3136), torch.empty(1024, 3136))  # rows over leading dims
    monkeypatch.setattr(kernels, "blas_lacks_avx512", lambda: False)  # e.g. an Intel CPU: MKL has AVX-512 there
    assert not prefers(140, 3136, 1024)
    monkeypatch.setattr(kernels, "LINEAR_BACKEND", "onednn")
    assert prefers(2, 3, 4)


def test_cpu_facts_are_read_not_measured(monkeypatch):
    kernels.blas_lacks_avx512.cache_clear()
    monkeypatch.setattr(kernels, "cpu_vendor", lambda: "GenuineIntel")
    assert kernels.blas_lacks_avx512() is False
    kernels.blas_lacks_avx512.cache_clear()
    monkeypatch.setattr(kernels, "cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert kernels.blas_lacks_avx512() is (torch.backends.mkl.is_available() and torch.backends.mkldnn.is_available())
    kernels.blas_lacks_avx512.cache_clear()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert kernels.blas_lacks_avx512() is False
    monkeypatch.undo()
    kernels.blas_lacks_avx512.cache_clear()
    assert kernels.cpu_vendor() is None or isinstance(kernels.cpu_vendor(), str)


def test_the_mode_is_entered_only_for_models_with_a_layer_it_speeds_up(monkeypatch):
    monkeypatch.setattr(kernels, "blas_lacks_avx512", lambda: True)
    assert kernels.applies_to(build_model("cnn")) and kernels.applies_to(build_model("mlp"))
    assert kernels.applies_to(_tiny_gray_net())
    assert not kernels.applies_to(build_model("resnet-small"))  # 1->16 3x3 stem, 64->10 head
    small = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    assert not kernels.applies_to(small)
    assert isinstance(kernels.cpu_kernels("cpu", build_model("cnn")), kernels.CPUKernels)
    assert not isinstance(kernels.cpu_kernels("cpu", small), kernels.CPUKernels)
    monkeypatch.setattr(kernels, "blas_lacks_avx512", lambda: False)  # the linear kernel never applies
    assert kernels.applies_to(build_model("cnn")) and not kernels.applies_to(build_model("mlp"))


def test_kernels_switch():
    from sanitas.utils.env import env_switch

    assert env_switch("SANITAS_X", {}) and env_switch("SANITAS_X", {"SANITAS_X": "1"})
    assert not any(env_switch("SANITAS_X", {"SANITAS_X": v}) for v in ("0", "false", "OFF", " no "))
    assert isinstance(kernels.cpu_kernels("cpu"), kernels.CPUKernels)
    assert not isinstance(kernels.cpu_kernels("meta"), kernels.CPUKernels)
