"""grabska2020's Eqs. 13-14: per image and layer the gross sums of activity and bias attributions, which
layers cut the graph, and why Eq. 13 may not hold for a model (see :mod:`sanitas.evaluate.biases`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from sanitas.errors import ConfigError, InputError
from sanitas.evaluate.zero_bias import batched_logits, zero_bias
from sanitas.explain._core import check_images, eval_mode, logits_of, model_device
from sanitas.explain.capture import capture
from sanitas.explain.layers import PARAM_KINDS, layer_decomposition


def cutting_layers(model: nn.Module, x: torch.Tensor, layers: list[str] | None = None) -> dict[str, bool]:
    """For each Conv/Linear/BatchNorm layer (or the named ``layers``), whether it cuts the graph.

    A layer cuts when the logits no longer depend on the input once the layer's output is
    detached from the autograd graph (structural, so exact; one forward pass per layer on one image).
    """
    check_images(x)
    x1 = x[:1].detach().to(model_device(model))
    with eval_mode(model):
        with torch.no_grad():
            _, seen = capture(model, x1, layers, PARAM_KINDS)
        out: dict[str, bool] = {}
        for name, module, _ in seen:
            handle = module.register_forward_hook(lambda mod, inp, o: o.detach() if isinstance(o, torch.Tensor) else o)
            try:
                xg = x1.clone().requires_grad_(True)
                with torch.enable_grad():
                    y = logits_of(model, xg)
                    if not y.requires_grad:
                        out[name] = True
                    else:
                        g = torch.autograd.grad(y.sum(), xg, allow_unused=True)[0]
                        out[name] = g is None
            finally:
                handle.remove()
    return out


def bias_decomposition(model: nn.Module, x: torch.Tensor, target="predicted", batch_size: int = 256) -> pd.DataFrame:
    """Gross sums of grabska2020's Eq. 14 and the check of Eq. 13, one row per image x layer.

    Columns: ``image`` (position in ``x``), ``stage`` (0 = the input, then Conv/Linear/BatchNorm
    layers in forward order), ``layer``, ``kind`` (module class), ``cuts`` (see
    :func:`cutting_layers`), ``target`` (class explained), ``logit`` (f_c), ``A_h`` (sum of
    the activity attributions h df_c/dh), ``A_b`` (sum of the layer's bias attributions
    b df_c/dh, BatchNorm's implicit bias included), ``bias_above`` (sum of A_b over the layers
    after this one), ``residual`` (``|f_c - A_h - bias_above|`` for cutting layers, NaN
    otherwise), ``bias_share`` (``|A_b| / |f_c|``) and ``bias_above_share``
    (``bias_above / f_c``, the fraction of the logit carried by the biases above the layer;
    at the input, by all biases). :func:`bias_summary` averages it per layer.
    """
    check_images(x)
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    n = x.shape[0]
    if isinstance(target, str) or target is None:
        if target not in (None, "predicted"):
            raise InputError(f"bias_decomposition explains one class per image: target must be class indices or "
                             f"'predicted', got {target!r}")
        cls = batched_logits(model, x, batch_size).argmax(1)
    else:
        from sanitas.explain._core import resolve_target

        cls = resolve_target(target, None, n, batched_logits(model, x[:1]).shape[1]).cpu()
    parts = [layer_decomposition(model, x[i:i + batch_size], cls[i:i + batch_size]) for i in range(0, n, batch_size)]
    layers = parts[0]["layers"]
    A_h = torch.cat([d["A_h"] for d in parts]).double().cpu()
    A_b = torch.cat([d["A_b"] for d in parts]).double().cpu()
    f = torch.cat([d["logit"] for d in parts]).double().cpu()
    cuts = cutting_layers(model, x)
    named = dict(model.named_modules())
    L = len(layers)
    above = torch.flip(torch.cumsum(torch.flip(A_b, [1]), 1), [1]) - A_b  # sum over l' > l
    resid = (f[:, None] - A_h - above).abs()
    is_cut = torch.tensor([True] + [cuts.get(name, False) for name in layers[1:]])
    resid = torch.where(is_cut[None, :], resid, torch.full_like(resid, float("nan")))
    absf = f.abs()[:, None]
    return pd.DataFrame({
        "image": np.repeat(np.arange(n), L),
        "stage": np.tile(np.arange(L), n),
        "layer": np.tile(np.array(layers, dtype=object), n),
        "kind": np.tile(np.array(["input"] + [type(named[name]).__name__ for name in layers[1:]], dtype=object), n),
        "cuts": np.tile(is_cut.numpy(), n),
        "target": np.repeat(cls.numpy(), L),
        "logit": np.repeat(f.numpy(), L),
        "A_h": A_h.reshape(-1).numpy(),
        "A_b": A_b.reshape(-1).numpy(),
        "bias_above": above.reshape(-1).numpy(),
        "residual": resid.reshape(-1).numpy(),
        "bias_share": (A_b.abs() / absf).reshape(-1).numpy(),
        "bias_above_share": (above / f[:, None]).reshape(-1).numpy(),
    })


def bias_summary(decomposition: pd.DataFrame) -> pd.DataFrame:
    """Per layer: mean A_h and A_b, mean and median |A_b|/|f|, median share of the logit carried by
    the biases above the layer, and the largest Eq. 13 residual (NaN for layers that do not cut)."""
    g = decomposition.groupby(["stage", "layer", "kind", "cuts"], sort=True)
    out = g.agg(A_h_mean=("A_h", "mean"), A_b_mean=("A_b", "mean"), logit_mean=("logit", "mean"),
                bias_share_mean=("bias_share", "mean"), bias_share_median=("bias_share", "median"),
                bias_above_share_median=("bias_above_share", "median"),
                residual_max=("residual", lambda r: float(r.max()) if r.notna().any() else float("nan")),
                n=("image", "count")).reset_index()
    return out


#: Eq. 13 holds when every residual is below this fraction of the largest |logit| (float32 sums: ~1e-6)
RESIDUAL_TOLERANCE = 1e-3


def offset_without_biases(model: nn.Module, x: torch.Tensor) -> float:
    """The largest |logit| of the zero-bias model (:func:`zero_bias`) on an all-zero input shaped like ``x``.

    A ReLU network whose constants all lie in bias parameters and BatchNorm shifts gives exactly 0. Anything
    else is a constant the decomposition of Eq. 13 does not count as a bias: input normalization
    ``(x - mean) / std`` in ``forward`` (its shift ``-mean / std`` acts as a bias at the input), a constant
    buffer added somewhere, an activation that is not 0 at 0.
    """
    from sanitas.utils.forward import inference_logits

    return float(inference_logits(zero_bias(model), torch.zeros_like(x[:1])).abs().max())


def decomposition_note(max_residual: float, max_logit: float, offset: float) -> str:
    """Why Eq. 13 does not hold for a model ('' when it holds to :data:`RESIDUAL_TOLERANCE`)."""
    if not max_residual > RESIDUAL_TOLERANCE * max(1.0, max_logit):  # NaN (no cutting layer): nothing to say
        return ""
    text = (f"Eq. 13 does not hold for this model: the largest residual {max_residual:.2g} is "
            f"{max_residual / max(max_logit, 1e-12):.0%} of the largest logit, so the bias shares do not decompose "
            "its logits.")
    if offset > RESIDUAL_TOLERANCE * max(1.0, max_logit):
        text += (f" With every bias set to zero the model still outputs {offset:.3g} on an all-zero image: its "
                 "forward adds a constant that is not a bias parameter, e.g. input normalization (x - mean) / std, "
                 "whose shift -mean / std is a bias the decomposition must include (move the normalization into "
                 "the data, or into the first layer's weights and bias).")
    else:
        text += " The model is not piecewise linear in its biases (an activation or operation without a rule)."
    return text
