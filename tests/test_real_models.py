"""Regression tests for the patterns real models use: no_grad callers, in-place ops after a read layer,
per-image baselines inside noise wrappers, transposed convolutions, rectified GradCAM feature maps,
model outputs that are tuples / dicts / ModelOutputs, tuple inputs and extra forward arguments."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sanitas.errors import InputError, ModelError
from sanitas.explain import GradCAM, explain
from sanitas.explain.capture import feature_layer
from sanitas.explain.forward import model_call
from sanitas.models import build_model

GRADIENT_METHODS = ["gradient", "input_x_gradient", "integrated_gradients", "smoothgrad", "vargrad",
                    "guided_backprop", "deconvnet", "gradcam", "guided_gradcam", "lrp_epsilon", "lrp_zplus",
                    "deeplift", "fullgrad", "activity", "bias", "competitive(input_x_gradient)"]


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return build_model("cnn").eval(), torch.rand(3, 1, 28, 28), torch.tensor([1, 4, 7])


# -- 1. explanations under torch.no_grad() / torch.inference_mode() -----------------------------

@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_explain_inside_no_grad_gives_the_same_map(cnn, method):
    m, x, y = cnn
    ref = explain(m, x, y, method=method)
    with torch.no_grad():
        out = explain(m, x, y, method=method)
        assert not torch.is_grad_enabled()  # the caller's mode is back
    assert torch.equal(out, ref)


def test_explain_inside_inference_mode(cnn):
    m, x, y = cnn
    ref = explain(m, x, y, method="integrated_gradients")
    with torch.inference_mode():
        xi = x.clone()  # an inference tensor
        out = explain(m, xi, y, method="integrated_gradients")
        assert torch.is_inference_mode_enabled()
    assert torch.equal(out, ref)


def test_model_created_in_inference_mode_gets_a_clear_error():
    with torch.inference_mode():
        m = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with pytest.raises(InputError, match="inference_mode.*outside"):
        explain(m, torch.rand(2, 1, 4, 4), 0)


# -- 2. in-place operations after the layer a method reads --------------------------------------

class Block(nn.Module):
    """A torchvision BasicBlock-like stage, written with in-place ops (as torchvision) or without."""

    def __init__(self, inplace: bool):
        super().__init__()
        self.inplace = inplace
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu1 = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.relu2 = nn.ReLU(inplace=inplace)
        self.head = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        h = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(h))
        if self.inplace:
            out += h
        else:
            out = out + h
        out = self.relu2(out)
        return self.head(F.adaptive_avg_pool2d(out, 4).flatten(1))


@pytest.fixture(scope="module")
def twins():
    torch.manual_seed(1)
    a = Block(inplace=True).eval()
    g = torch.Generator().manual_seed(2)
    for bn in (a.bn1, a.bn2):
        bn.running_mean.copy_(torch.randn(6, generator=g) * 0.3)
        bn.running_var.copy_(torch.rand(6, generator=g) + 0.5)
    b = Block(inplace=False).eval()
    b.load_state_dict(a.state_dict())
    return a, b, torch.randn(4, 1, 8, 8, generator=g)


@pytest.mark.parametrize("method, options", [
    ("gradcam", {"layer": "conv1", "relu": False}), ("gradcam", {"layer": "bn2", "relu": False}),
    ("activity", {"layer": "bn1"}), ("activity", {"layer": "bn2"}), ("bias", {"layer": "bn2"}),
    ("activity", {}), ("bias", {}), ("fullgrad", {}), ("guided_gradcam", {"layer": "conv2"})])
def test_layer_methods_read_the_layer_output_whatever_follows_in_place(twins, method, options):
    inplace, plain, x = twins
    ref = explain(plain, x, 0, method=method, **options)
    out = explain(inplace, x, 0, method=method, **options)
    assert torch.allclose(out, ref, atol=1e-6, rtol=1e-5)


def test_layer_decomposition_holds_with_in_place_residual(twins):
    from sanitas.explain import layer_decomposition

    inplace, plain, x = twins
    a = layer_decomposition(inplace, x, target=0)
    b = layer_decomposition(plain, x, target=0)
    assert torch.allclose(a["A_h"], b["A_h"], atol=1e-5) and torch.allclose(a["A_b"], b["A_b"], atol=1e-5)


# -- 4. per-image baselines inside noise wrappers ------------------------------------------------

@pytest.mark.parametrize("inner", ["integrated_gradients", "deeplift"])
@pytest.mark.parametrize("wrapper", ["smoothgrad", "vargrad"])
def test_noise_wrappers_expand_a_per_image_baseline(cnn, wrapper, inner):
    m, x, y = cnn
    base = torch.rand(x.shape, generator=torch.Generator().manual_seed(5))
    opts = {"baseline": base, **({"steps": 4} if inner == "integrated_gradients" else {})}
    out = explain(m, x, y, method=f"{wrapper}({inner})", base_options=opts, samples=3)
    assert out.shape == x.shape and torch.isfinite(out).all()
    if wrapper == "smoothgrad":  # without noise: exactly the inner method with its per-image baseline
        exact = explain(m, x, y, method=f"smoothgrad({inner})", base_options=opts, samples=2, sigma=0.0)
        assert torch.allclose(exact, explain(m, x, y, method=inner, **opts), atol=1e-6)


# -- 5. transposed convolutions get the LRP rule -------------------------------------------------

class Decoderish(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(1, 4, 3, stride=2, bias=False)
        self.relu = nn.ReLU()
        self.head = nn.Linear(4, 3, bias=False)

    def forward(self, x):
        return self.head(self.relu(self.up(x)).sum((2, 3)))


def test_lrp_zplus_applies_its_rule_at_transposed_convolutions():
    torch.manual_seed(3)
    m = Decoderish().eval()
    with torch.no_grad():
        m.head.weight.abs_()
    x = torch.rand(2, 1, 6, 6)
    r = explain(m, x, 0, method="lrp_zplus", epsilon=1e-9)
    # z+ by hand: R_i = x_i sum_j w+_ij / z+_j R_j, with R_j = head weight * relu(z_j) at the transposed conv
    xg = x.clone().requires_grad_(True)
    z = m.up(xg)
    zp = F.conv_transpose2d(xg, m.up.weight.clamp_min(0), stride=2)
    rel = (m.head.weight[0].view(1, -1, 1, 1) * torch.relu(z)).detach()
    (g,) = torch.autograd.grad((zp * (rel / (zp + 1e-9)).detach()).sum(), xg)
    assert torch.allclose(r, x * g, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(r, explain(m, x, 0, method="input_x_gradient"), rtol=1e-3)
    with torch.no_grad():
        assert torch.allclose(r.flatten(1).sum(1), m(x)[:, 0], rtol=1e-4)  # relevance is conserved


# -- 6. GradCAM: the rectified feature maps of the last convolution -------------------------------

class FunctionalCNN(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        f = self.net.features
        h = f.pool1(F.relu(f.conv1(x)))
        h = f.pool2(F.relu(f.conv2(h)))
        return self.net.output(self.net.relu3(self.net.fc1(h.flatten(1))))


def test_gradcam_default_is_the_rectified_last_conv(cnn):
    m, x, y = cnn
    with model_call(n=x.shape[0]):
        assert feature_layer(m, x, None).name == "features.relu2"
        functional = FunctionalCNN(m)
        layer = feature_layer(functional, x, None)
    assert layer.name == "net.features.conv2" and layer.rectified
    ref = explain(m, x, y, method="gradcam", layer="features.relu2")
    assert torch.allclose(explain(m, x, y, method="gradcam"), ref)
    assert torch.allclose(explain(functional, x, y, method="gradcam"), ref, atol=1e-7)
    pre_relu = explain(m, x, y, method="gradcam", layer="features.conv2")
    assert not torch.allclose(pre_relu, ref)
    with model_call(n=x.shape[0]):
        assert "relu2" in GradCAM().describe(m, x)["layer"]


def test_gradcam_on_a_vit_reads_the_last_block_on_the_patch_grid():
    from zoo import built

    m, x = built("hf-vit")
    with model_call(n=x.shape[0]):
        layer = feature_layer(m, x, None)
    assert layer.name.endswith("layers.1.layernorm_before") and layer.tokens and layer.grid == (4, 4)
    assert layer.prefix == 1
    cam = explain(m, x, 0, method="gradcam")
    assert cam.shape == x.shape and torch.isfinite(cam).all()
    patch_embed = explain(m, x, 0, method="gradcam", layer="vit.embeddings.patch_embeddings.projection")
    assert not torch.allclose(cam, patch_embed)
    with pytest.raises(Exception, match="cannot be read as a spatial map"):
        explain(m, x, 0, method="gradcam", layer="classifier")


# -- model outputs and inputs users bring ----------------------------------------------------------

class Returns(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.fc = nn.Linear(16, 4)
        self.aux = nn.Linear(16, 4)

    def forward(self, x):
        h = x.flatten(1)
        logits, aux = self.fc(h), self.aux(h)
        if self.kind == "dict":
            return {"logits": logits, "aux": aux}
        if self.kind == "two":
            return logits, aux
        if self.kind == "dict_no_logits":
            return {"scores": logits, "aux": aux}
        return logits, h.mean(1)


@pytest.mark.parametrize("kind", ["dict", "tuple"])
def test_logits_are_found_in_dicts_and_tuples(kind):
    torch.manual_seed(0)
    m = Returns(kind)
    x = torch.rand(2, 1, 4, 4)
    assert torch.allclose(explain(m, x, 1), m.fc.weight[1].view(1, 1, 4, 4).expand_as(x))


@pytest.mark.parametrize("kind, selector", [("two", 1), ("dict_no_logits", "aux"), ("two", lambda o: o[1])])
def test_ambiguous_outputs_need_a_selector(kind, selector):
    torch.manual_seed(0)
    m = Returns(kind)
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(ModelError, match="output="):
        explain(m, x, 1)
    out = explain(m, x, 1, output=selector)
    assert torch.allclose(out, m.aux.weight[1].view(1, 1, 4, 4).expand_as(x))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(6, 3)

    def forward(self, u, v, scale, shift=0.0):
        return torch.relu(self.a(u) * scale + self.b(v.flatten(1))) + shift


def test_tuple_inputs_and_additional_forward_args_follow_captum():
    from captum.attr import IntegratedGradients, Saliency

    torch.manual_seed(0)
    m = TwoInputs()
    u, v, scale = torch.randn(5, 4), torch.randn(5, 2, 3), torch.rand(5, 1) + 0.5
    for method, ref in (("gradient", Saliency(m).attribute((u, v), target=1, abs=False,
                                                           additional_forward_args=(scale,))),
                        ("integrated_gradients", IntegratedGradients(m).attribute(
                            (u, v), target=1, additional_forward_args=(scale,), method="gausslegendre",
                            n_steps=32))):
        ours = explain(m, (u, v), 1, method=method, additional_forward_args=(scale,))
        assert isinstance(ours, tuple) and len(ours) == 2
        for a, b in zip(ours, ref):
            assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(InputError, match="tuple inputs work with"):
        explain(m, (u, v), 1, method="gradcam", additional_forward_args=(scale,))


def test_non_image_inputs_work_and_image_only_methods_say_so():
    torch.manual_seed(0)
    tab = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.rand(4, 12)
    for method in ("gradient", "integrated_gradients", "guided_backprop", "lrp_epsilon", "deeplift"):
        assert explain(tab, x, 0, method=method).shape == x.shape
    with pytest.raises(Exception, match="spatial"):
        explain(tab, x, 0, method="gradcam")
    with pytest.raises(Exception, match="images"):
        explain(tab, x, 0, method="sobel")


def test_the_user_model_is_not_changed_by_inplace_handling(twins):
    inplace, _, x = twins
    before = copy.deepcopy(inplace.state_dict())
    explain(inplace, x, 0, method="fullgrad")
    assert all(torch.equal(before[k], v) for k, v in inplace.state_dict().items())
    assert all(not m._forward_hooks for m in inplace.modules())


# -- 3. randomization on models that view their activations, and on ViTs ---------------------------

def test_randomization_runs_on_a_model_that_views_its_activations():
    """channels_last copies make `x.view(N, -1)` fail: the check falls back to the model's own layout."""
    from zoo import built

    from sanitas.checks import model_randomization
    from sanitas.utils.device import prefer_fast_layout

    m, x = built("tv-vgg")
    res = model_randomization(m, x, torch.zeros(2, dtype=torch.long), methods=["gradient", "guided_backprop"],
                              metrics=["spearman_abs"], calibrate=False)
    assert len(res.stages) == 7 and res.table["value"].notna().any()
    copy_ = prefer_fast_layout(copy.deepcopy(m), x[:1])
    assert all(p.is_contiguous() for p in copy_.parameters())  # stayed in its own layout
    fast = prefer_fast_layout(build_model("cnn"), x[:1])
    assert fast.features.conv2.weight.is_contiguous(memory_format=torch.channels_last)


def test_a_method_that_cannot_explain_the_model_is_refused_not_fatal(capfd):
    from zoo import built

    from sanitas.checks import model_randomization

    m, x = built("hf-vit")
    res = model_randomization(m, x, torch.zeros(2, dtype=torch.long), methods=["gradient", "guided_backprop", "gradcam"],
                              metrics=["spearman_abs"], calibrate=False, blocks="auto")
    assert "guided_backprop cannot explain this model" in capfd.readouterr().err  # said, even under -q
    assert set(res.table["method"]) == {"gradient", "gradcam"}
    assert "layer_norm" in res.meta["refused"]["guided_backprop"]
    assert "layernorm_before" in res.meta["resolved"]["gradcam"]["layer"]
    assert res.stages == ["original", "classifier", "vit.layernorm", "vit.layers.1", "vit.layers.0", "vit.embeddings",
                          "vit.embeddings.patch_embeddings.projection"]


@pytest.mark.parametrize("name, metrics", [("conv1d", ["spearman_abs", "pearson"]), ("tabular", ["spearman"])])
def test_randomization_on_signals_and_tabular_inputs(name, metrics):
    from zoo import built

    from sanitas.checks import model_randomization
    from sanitas.errors import ConfigError

    m, x = built(name)
    y = torch.zeros(x.shape[0], dtype=torch.long)
    res = model_randomization(m, x, y, methods=["gradient", "integrated_gradients"], metrics=metrics)
    assert res.table["value"].notna().all() and set(res.table["metric"]) == set(metrics)
    with pytest.raises(ConfigError, match="compare images"):
        model_randomization(m, x, y, methods=["gradient"], metrics=["ssim"])


def test_constant_maps_are_counted_in_the_table():
    """An all-zero GradCAM scores NaN; the table says so instead of silently shortening the mean."""
    from sanitas.checks import model_randomization

    class DeadFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu = nn.Conv2d(1, 2, 3, padding=1), nn.ReLU()
            self.head, self.skip = nn.Linear(2 * 36, 3), nn.Linear(36, 3)

        def forward(self, x):
            return self.head(self.relu(self.conv(x)).flatten(1)) + self.skip(x.flatten(1))

    torch.manual_seed(0)
    m = DeadFeatures()
    with torch.no_grad():
        m.conv.bias.fill_(-10.0)  # every feature map is zero after the ReLU: the CAM is zero everywhere
    x = torch.rand(3, 1, 6, 6)
    res = model_randomization(m, x, torch.zeros(3, dtype=torch.long), methods=["gradcam", "gradient"],
                              metrics=["spearman_abs"],
                              calibrate=False)
    cam = res.table[res.table["method"] == "gradcam"]
    first = cam[cam["variant"].isin(["original", "skip", "head"])]  # the conv untouched: no feature survives
    assert first["constant_map"].all() and first["value"].isna().all()
    assert cam[cam["constant_map"]]["value"].isna().all()
    assert not res.table[res.table["method"] == "gradient"]["constant_map"].any()


def test_numeric_layer_names_of_sequential_models():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                      nn.Flatten(), nn.Linear(4 * 36, 3))
    x = torch.rand(2, 1, 6, 6)
    assert torch.equal(explain(m, x, 0, method="gradcam(layer=2)"), explain(m, x, 0, method="gradcam", layer="2"))
    assert explain(m, x, 0, method="activity(layers=[0, 2])").shape == x.shape


def test_torchscript_models_get_clear_refusals():
    from sanitas.errors import ModelError, NotApplicableError
    from sanitas.randomize import discover_layers

    torch.manual_seed(0)
    m = torch.jit.script(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)))
    x = torch.rand(2, 1, 6, 6)
    assert explain(m, x, 0, method="integrated_gradients").shape == x.shape
    for method in ("guided_backprop", "lrp_epsilon", "deeplift", "gradcam", "fullgrad"):
        with pytest.raises(NotApplicableError, match="TorchScript"):
            explain(m, x, 0, method=method)
    with pytest.raises(ModelError, match="TorchScript"):
        discover_layers(m, x[:1])
