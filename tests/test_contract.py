"""The contract every attribution method keeps on every architecture of the zoo (like scikit-learn's
``check_estimator``): finite maps of the input's shape or a clear SanitasError; the same maps under
``torch.no_grad()``; the user's model bit-identical afterwards; Captum's maps where Captum has the
method and the model is within its support; completeness where it holds. The README's support
table is generated from the same outcomes (``scripts/support_table.py``) and checked here."""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from sanitas.errors import SanitasError
from sanitas.explain import explain, get_explainer
from sanitas.explain.capture import feature_layer
from sanitas.explain.forward import model_call
from sanitas.explain.registry import EXPLAINERS
from sanitas.explain.support import CHECK_OPTIONS, check_spec, support_markdown, support_of
from zoo import ZOO, built

ROOT = Path(__file__).resolve().parents[1]


def fingerprint(m: nn.Module):
    """Everything about a model that an explanation must leave as it found it."""
    h = hashlib.sha256()
    for k, v in m.state_dict(keep_vars=True).items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
        h.update(f"{v.stride()} {v.requires_grad} {v.dtype}".encode())
    hooks = tuple((len(mod._forward_hooks), len(mod._forward_pre_hooks), len(mod._backward_hooks),
                   len(getattr(mod, "_backward_pre_hooks", {}))) for mod in m.modules())
    return (h.hexdigest(), tuple(mod.training for mod in m.modules()), hooks,
            tuple(p.grad is None for p in m.parameters()))


def global_state():
    from torch.nn.modules import module as nn_module

    return (torch.get_rng_state().clone(), torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
            len(nn_module._global_forward_hooks), len(nn_module._global_forward_pre_hooks),
            len(nn_module._global_backward_hooks))


def _same_global(a, b) -> bool:
    return torch.equal(a[0], b[0]) and a[1:] == b[1:]


@functools.cache
def outcomes(name: str) -> dict:
    """Maps (or the SanitasError) of every registered method on a zoo model, with the state checks."""
    m, x = built(name)
    before, g_before = fingerprint(m), global_state()
    res = {}
    for method in CHECK_OPTIONS:
        try:
            res[method] = get_explainer(check_spec(method, x))(m, x, 0, output=ZOO[name].output)
        except SanitasError as exc:
            res[method] = exc
    res["_unchanged"] = fingerprint(m) == before
    res["_global_unchanged"] = _same_global(global_state(), g_before)
    return res


def test_every_registered_method_is_in_the_contract():
    assert set(EXPLAINERS.names()) == set(CHECK_OPTIONS)


@pytest.mark.parametrize("name", list(ZOO))
def test_maps_or_a_clear_error_and_the_model_untouched(name):
    m, x = built(name)
    res = outcomes(name)
    assert res["_unchanged"], f"{name}: an explanation changed the model (state, flags, hooks or grads)"
    assert res["_global_unchanged"], f"{name}: an explanation changed the RNG, grad mode or global hooks"
    for method in CHECK_OPTIONS:
        out = res[method]
        if isinstance(out, SanitasError):
            assert len(str(out)) > 40, (method, str(out))
            continue
        assert out.shape == x.shape, (method, tuple(out.shape))
        assert torch.isfinite(out).all(), method


@pytest.mark.parametrize("name", list(ZOO))
def test_same_maps_under_no_grad_and_inference_mode(name):
    m, x = built(name)
    res = outcomes(name)
    for method in CHECK_OPTIONS:
        if not isinstance(res[method], torch.Tensor) or method == "dasp":
            continue
        with torch.no_grad():
            again = get_explainer(check_spec(method, x))(m, x, 0)
        assert torch.allclose(again, res[method], rtol=1e-5, atol=1e-7), method
    with torch.inference_mode():
        xi = x.clone()  # an inference tensor
        again = explain(m, xi, 0, method="input_x_gradient")
    assert torch.allclose(again, res["input_x_gradient"], rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# agreement with Captum where it has the method and the model is within its support
# ----------------------------------------------------------------------------------------------

captum_attr = pytest.importorskip("captum.attr")

#: Captum's guided backprop / deconvnet hook nn.ReLU modules only: models whose ReLUs are
#: modules, each used once and not in place (elsewhere Captum silently falls back to the gradient)
CAPTUM_RELU_MODELS = {"cnn", "mlp", "vgg-small", "resnet-small", "hf-resnet", "conv1d", "tuple-out"}


def _logits_fn(m):
    def f(*inputs):
        from sanitas.explain.forward import select_logits

        return select_logits(m(*inputs), inputs[0].shape[0])
    return f


def _close(ours, ref):
    scale = float(ref.detach().abs().max()) or 1.0
    return torch.allclose(ours, ref, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("name", list(ZOO))
def test_gradient_family_equals_captum(name):
    m, x = built(name)
    f = _logits_fn(m)
    res = outcomes(name)
    y = 0
    assert _close(res["gradient"], captum_attr.Saliency(f).attribute(x, target=y, abs=False))
    assert _close(res["input_x_gradient"], captum_attr.InputXGradient(f).attribute(x, target=y))
    ours = explain(m, x, y, method="integrated_gradients", steps=16)
    ref = captum_attr.IntegratedGradients(f).attribute(x, target=y, n_steps=16, method="gausslegendre")
    assert _close(ours, ref)


@pytest.mark.parametrize("name", sorted(CAPTUM_RELU_MODELS))
def test_modified_backprop_equals_captum_on_relu_module_models(name):
    m, x = built(name)
    res = outcomes(name)
    assert _close(res["guided_backprop"], captum_attr.GuidedBackprop(_Logits(m)).attribute(x, target=0))
    assert _close(res["deconvnet"], captum_attr.Deconvolution(_Logits(m)).attribute(x, target=0))


class _Logits(nn.Module):
    """A module returning the logits of a model that returns a tuple or a ModelOutput (Captum's
    modified backprop needs a module)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        from sanitas.explain.forward import select_logits

        return select_logits(self.m(x), x.shape[0])


@pytest.mark.parametrize("name", [n for n, e in ZOO.items() if e.family not in ("relu-mlp", "gelu-mlp", "tabular",
                                                                                "1d-cnn")])
def test_gradcam_equals_captum_at_the_resolved_layer(name):
    m, x = built(name)
    res = outcomes(name)
    with model_call(n=x.shape[0]):
        layer = feature_layer(m, x, None)
    if layer.tokens or layer.rectified:
        pytest.skip("Captum's LayerGradCam reads neither token maps nor a functional ReLU's output")
    module = m.get_submodule(layer.name)
    cam = captum_attr.LayerGradCam(_logits_fn(m), module).attribute(x, target=0, relu_attributions=True)
    up = captum_attr.LayerAttribution.interpolate(cam, x.shape[-2:], interpolate_mode="bilinear")
    assert _close(res["gradcam"], up.expand_as(x))


# ----------------------------------------------------------------------------------------------
# completeness where it holds
# ----------------------------------------------------------------------------------------------

def _delta(m, x, base, name):
    with torch.no_grad(), model_call(output=ZOO[name].output):
        from sanitas.explain._core import logits_of
        return logits_of(m, x)[:, 0] - logits_of(m, base)[:, 0]


@pytest.mark.parametrize("name", list(ZOO))
def test_integrated_gradients_and_deeplift_are_complete(name):
    m, x = built(name)
    zero = torch.zeros_like(x)
    dl = outcomes(name)["deeplift"]
    if isinstance(dl, torch.Tensor):  # summation to delta is exact
        delta = _delta(m, x, zero, name)
        assert (dl.flatten(1).sum(1) - delta).abs().max() < 1e-4 * float(delta.abs().max()) + 1e-6, name
    # IG's sum approaches f(x) - f(baseline) as its quadrature converges. A random baseline: at the zero
    # image, the zero-bias layer norm of a random-init ConvNeXt has a gradient of 1/sqrt(eps) that no
    # quadrature integrates (a property of that model, not of IG)
    base = torch.rand(x.shape, generator=torch.Generator().manual_seed(3))
    delta = _delta(m, x, base, name)
    ig = explain(m, x, 0, method="integrated_gradients", baseline=base, steps=128)
    scale = float(_delta(m, x, zero, name).abs().max() + _delta(m, base, zero, name).abs().max())
    assert (ig.flatten(1).sum(1) - delta).abs().max() < 0.02 * scale + 1e-5, name


@pytest.mark.parametrize("name", ["hf-vit", "torch-vit", "hf-convnext", "gelu-ln-mlp", "tv-resnet18", "hf-resnet"])
def test_lrp_epsilon_conserves_relevance_on_bias_free_versions(name):
    """Conservative propagation (Ali et al. 2022, AttnLRP): sum(R) = logit once biases, class token and
    position embeddings (the constants that absorb relevance) are zero."""
    import copy

    m, x = built(name)
    m = copy.deepcopy(m)
    with torch.no_grad():
        for pname, p in m.named_parameters():
            if pname.endswith("bias") or any(k in pname for k in ("cls_token", "position", "pos_embed")):
                p.zero_()
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.running_mean.zero_()
    r = explain(m, x, "all", method="lrp_epsilon", epsilon=1e-9)
    with torch.no_grad(), model_call():
        from sanitas.explain._core import logits_of
        out = logits_of(m, x)
    assert torch.allclose(r.flatten(2).sum(-1), out, rtol=1e-4, atol=1e-5 * float(out.abs().max()))


# ----------------------------------------------------------------------------------------------
# the README's support table is generated from these outcomes
# ----------------------------------------------------------------------------------------------

def test_readme_support_table_is_generated_from_the_zoo():
    rows = {name: [support_of(method, outcomes(name)[method], built(name)[1]) for method in CHECK_OPTIONS]
            for name in ZOO}
    table = support_markdown(rows, {n: ZOO[n].family for n in ZOO})
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- support-table -->\n(.*?)<!-- /support-table -->", readme, re.S)
    assert m, "README.md has no <!-- support-table --> section"
    assert m.group(1).strip() == table.strip(), "regenerate it: .venv/bin/python scripts/support_table.py"


# ----------------------------------------------------------------------------------------------
# the cascading randomization test runs on every zoo model
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(ZOO))
def test_cascading_randomization_runs_on_every_zoo_model(name):
    from sanitas.checks import model_randomization
    from sanitas.randomize import discover_layers, group_layers

    m, x = built(name)
    before = fingerprint(m)
    metrics = ["spearman_abs", "ssim"] if x.dim() == 4 else ["spearman_abs", "spearman"]
    methods = ["gradient", "integrated_gradients(steps=4)", "guided_backprop"]
    y = torch.zeros(x.shape[0], dtype=torch.long)
    res = model_randomization(m, x, y, methods=methods,
                              metrics=metrics, blocks="auto", output=ZOO[name].output, calibrate=False)
    blocks = group_layers(discover_layers(m, x[:1]), "auto", m)
    assert len(res.stages) == len(blocks) + 1
    ran = set(res.table["method"])
    assert ran | set(res.meta["refused"]) == set(methods)
    assert {"gradient", "integrated_gradients(steps=4)"} <= ran
    last = res.table[(res.table["stage"] == len(blocks)) & (res.table["method"] == "gradient")]
    assert len(last) == len(metrics) * x.shape[0]
    assert fingerprint(m) == before
