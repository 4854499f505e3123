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


def test_batched_vjp_falls_back_to_pytorch_for_the_conv_gradient(monkeypatch):
    """is_grads_batched runs the backward under vmap; the one-channel kernel steps aside there."""
    monkeypatch.setattr(kernels, "LINEAR_BACKEND", "onednn")
    net = _tiny_gray_net().eval()
    x = torch.rand(3, 1, 14, 14)
    rows = get_explainer("gradient")(net, x, "all")
    monkeypatch.setattr(_core, "VJP_STRATEGY", "batched")
    batched = get_explainer("gradient")(net, x, "all")
    assert batched.shape == (3, 5, 1, 14, 14) and _close(batched, rows, 1e-4)


def test_linear_backend_is_timed_once_per_shape_and_small_products_skip_timing(monkeypatch):
    monkeypatch.setattr(kernels, "_LINEAR_CHOICE", {})
    x, w = torch.randn(64, 512), torch.randn(256, 512)
    first = kernels.linear_prefers_onednn(x, w, None)
    assert kernels._LINEAR_CHOICE == {(64, 512, 256, False): first}
    monkeypatch.setattr(kernels, "_time_pass", lambda *a: pytest.fail("timed twice"))
    assert kernels.linear_prefers_onednn(x, w, None) is first
    assert kernels.linear_prefers_onednn(x[:4, :16], w[:8, :16], None) is False  # under MIN_LINEAR_MACS
    with torch.inference_mode():
        assert kernels.linear_prefers_onednn(torch.randn(128, 1024), torch.randn(1024, 1024), None) is False


def test_the_mode_is_entered_only_for_models_with_a_layer_it_speeds_up():
    assert kernels.applies_to(build_model("cnn")) and kernels.applies_to(build_model("mlp"))
    assert kernels.applies_to(_tiny_gray_net())
    assert not kernels.applies_to(build_model("resnet-small"))  # 1->16 3x3 stem, 64->10 head
    small = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    assert not kernels.applies_to(small)
    assert isinstance(kernels.cpu_kernels("cpu", build_model("cnn")), kernels.CPUKernels)
    assert not isinstance(kernels.cpu_kernels("cpu", small), kernels.CPUKernels)


def test_kernels_switch():
    from sanitas.utils.env import env_switch

    assert env_switch("SANITAS_X", {}) and env_switch("SANITAS_X", {"SANITAS_X": "1"})
    assert not any(env_switch("SANITAS_X", {"SANITAS_X": v}) for v in ("0", "false", "OFF", " no "))
    assert isinstance(kernels.cpu_kernels("cpu"), kernels.CPUKernels)
    assert not isinstance(kernels.cpu_kernels("meta"), kernels.CPUKernels)


class _FakeGlibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1


def test_freed_memory_is_held_for_the_outermost_scope_then_glibc_trims_as_usual(monkeypatch):
    from sanitas.utils import memory

    fake = _FakeGlibc()
    monkeypatch.setattr(memory, "glibc", lambda: fake)
    monkeypatch.setattr(memory, "ENABLED", True)
    with memory.hold_freed_memory():
        assert fake.calls == [("mallopt", memory.M_MMAP_THRESHOLD, 32 * 2**20),
                              ("mallopt", memory.M_TRIM_THRESHOLD, memory.HOLD_BYTES)]
        with memory.hold_freed_memory():  # nested scopes change nothing
            pass
        assert len(fake.calls) == 2
    assert fake.calls[2:] == [("mallopt", memory.M_TRIM_THRESHOLD, 64 * 2**20)]
    with pytest.raises(ValueError), memory.hold_freed_memory():  # restored on errors too
        raise ValueError
    assert fake.calls[-1] == ("mallopt", memory.M_TRIM_THRESHOLD, 64 * 2**20) and memory._depth == 0


def test_explanations_and_the_engine_hold_memory_once(monkeypatch):
    from sanitas.checks import model_randomization
    from sanitas.utils import memory

    fake = _FakeGlibc()
    monkeypatch.setattr(memory, "glibc", lambda: fake)
    net = _tiny_gray_net().eval()
    x = torch.rand(2, 1, 14, 14)
    get_explainer("gradient")(net, x, 1)
    assert [c[2] for c in fake.calls] == [32 * 2**20, memory.HOLD_BYTES, 64 * 2**20]
    fake.calls.clear()
    model_randomization(net, x, torch.tensor([1, 2]), ["gradient", "gradcam"], ["spearman"], calibrate=False,
                        quiet=True)
    assert [c[2] for c in fake.calls] == [32 * 2**20, memory.HOLD_BYTES, 64 * 2**20]  # one scope around all cells
    monkeypatch.setattr(memory, "ENABLED", False)
    fake.calls.clear()
    get_explainer("gradient")(net, x, 1)
    assert fake.calls == []


def test_malloc_settings_of_the_user_are_left_alone():
    from sanitas.utils.memory import _user_tunes_malloc

    assert not _user_tunes_malloc({"PATH": "/bin", "GLIBC_TUNABLES": "glibc.pthread.rseq=0"})
    assert _user_tunes_malloc({"MALLOC_TRIM_THRESHOLD_": "1"})
    assert _user_tunes_malloc({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4096"})


def test_real_glibc_lookup_is_safe():
    from sanitas.utils import memory

    lib = memory.glibc()
    assert lib is None or hasattr(lib, "mallopt")
    with memory.hold_freed_memory():
        torch.randn(1000, 1000).sum()
    assert memory._depth == 0
    with memory.hold_freed_memory("meta"):  # accelerators keep their own allocator: nothing to do
        assert memory._depth == 0
