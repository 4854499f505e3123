"""Zero-bias networks: a copy of a model without biases, its accuracy, and the regression
f^{b=0} = alpha f + beta of its logits on the original's (grabska2020, supplement B.3)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from sanitas.errors import InputError, ModelError
from sanitas.explain._core import check_images, model_device
from sanitas.explain.layers import PARAM_KINDS, layer_bias
from sanitas.models.train import accuracy
from sanitas.utils.forward import inference_logits

_BN = nn.modules.batchnorm._BatchNorm


def bias_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] == "bias"]


def batchnorms(model: nn.Module) -> list[tuple[str, _BN]]:
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, _BN)]
    for n, m in bns:
        if m.running_mean is None:
            raise ModelError(f"BatchNorm layer {n!r} keeps no running statistics (track_running_stats=False), so "
                             "its shift depends on the batch and cannot be set to zero; use a model whose "
                             "BatchNorm layers track running statistics")
    return bns


def zero_bias(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every bias and every BatchNorm shift set to zero.

    Zeroed: every parameter named ``bias`` (Conv, Linear, BatchNorm's beta, ...) and every
    BatchNorm ``running_mean``, so that BatchNorm's implicit bias
    ``beta - gamma * mean / sqrt(var + eps)`` is exactly 0 (gamma and var are kept, as in seed
    002's supplement C, where the mean and beta are decayed). In eval mode a BatchNorm layer then
    only rescales. ``model`` itself is not changed.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"zero_bias needs a torch.nn.Module, got {type(model).__name__}")
    batchnorms(model)
    net = copy.deepcopy(model)
    with torch.no_grad():
        for _, p in bias_params(net):
            p.zero_()
        for _, m in batchnorms(net):
            m.running_mean.zero_()
    return net


def max_abs_bias(model: nn.Module) -> float:
    """The largest |bias| over all Conv/Linear/BatchNorm layers (BatchNorm's implicit bias) and
    any other parameter named ``bias``; 0.0 for a zero-bias network."""
    vals = [0.0]
    for m in model.modules():
        if isinstance(m, PARAM_KINDS):
            b = layer_bias(m)
            if b is not None and b.numel():
                vals.append(float(b.abs().max()))
    vals += [float(p.detach().abs().max()) for _, p in bias_params(model) if p.numel()]
    return max(vals)


def batched_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The model's logits on ``x`` in passes of ``batch_size`` that change nothing (:func:`inference_logits`),
    on the CPU."""
    check_images(x)
    dev = model_device(model)
    return torch.cat([inference_logits(model, x[i:i + batch_size].to(dev)).cpu() for i in range(0, len(x), batch_size)])


def zero_bias_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of :func:`zero_bias` (``model``) on ``(x, y)``."""
    check_images(x)
    y = torch.as_tensor(y)
    if y.shape[:1] != x.shape[:1]:
        raise InputError(f"{len(y)} labels for {len(x)} images; give one label per image")
    return accuracy(zero_bias(model), x, y.cpu(), batch_size)


def _fit(f: np.ndarray, f0: np.ndarray) -> tuple[float, float, float]:
    """Least squares f0 = alpha f + beta; returns alpha, beta, R^2."""
    f, f0 = f.reshape(-1).astype(np.float64), f0.reshape(-1).astype(np.float64)
    A = np.stack([f, np.ones_like(f)], 1)
    (alpha, beta), *_ = np.linalg.lstsq(A, f0, rcond=None)
    ss_res = float(((f0 - alpha * f - beta) ** 2).sum())
    ss_tot = float(((f0 - f0.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else float("nan"))
    return float(alpha), float(beta), float(r2)


@dataclass
class BiasRegression:
    """f^{b=0}_c(x) = alpha f_c(x) + beta fitted over all images and classes (supplement B.3).

    ``per_class``: one fit per class over images; ``per_image``: one fit per image over classes
    (grabska2020's supplementary Fig. 5 fits per image). ``logits`` and ``zero_bias_logits`` are (N, K).
    """

    alpha: float
    beta: float
    r2: float
    correlation: float
    per_class: pd.DataFrame
    per_image: pd.DataFrame
    logits: np.ndarray = field(repr=False)
    zero_bias_logits: np.ndarray = field(repr=False)

    def as_dict(self) -> dict[str, float]:
        pi = self.per_image
        return {"alpha": self.alpha, "beta": self.beta, "r2": self.r2, "correlation": self.correlation,
                "alpha_per_image_median": float(pi["alpha"].median()),
                "beta_per_image_median": float(pi["beta"].median()),
                "r2_per_image_median": float(pi["r2"].median())}


def bias_regression(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> BiasRegression:
    """Regress the zero-bias network's logits on the original's: f^{b=0} = alpha f + beta."""
    f = batched_logits(model, x, batch_size).double().numpy()
    f0 = batched_logits(zero_bias(model), x, batch_size).double().numpy()
    alpha, beta, r2 = _fit(f, f0)
    corr = float(np.corrcoef(f.reshape(-1), f0.reshape(-1))[0, 1]) if f.size > 1 and f.std() > 0 and f0.std() > 0 \
        else float("nan")
    per_class = pd.DataFrame([dict(zip(("alpha", "beta", "r2"), _fit(f[:, c], f0[:, c])), **{"class": c})
                              for c in range(f.shape[1])])[["class", "alpha", "beta", "r2"]]
    # per-image fits over classes, vectorised
    fm, f0m = f.mean(1, keepdims=True), f0.mean(1, keepdims=True)
    cov = ((f - fm) * (f0 - f0m)).sum(1)
    var = ((f - fm) ** 2).sum(1)
    a = np.divide(cov, var, out=np.full_like(cov, np.nan), where=var > 0)
    b = f0m[:, 0] - a * fm[:, 0]
    ss_tot = ((f0 - f0m) ** 2).sum(1)
    ss_res = ((f0 - a[:, None] * f - b[:, None]) ** 2).sum(1)
    r2i = np.divide(ss_res, ss_tot, out=np.full_like(ss_res, np.nan), where=ss_tot > 0)
    per_image = pd.DataFrame({"image": np.arange(len(f)), "alpha": a, "beta": b, "r2": 1 - r2i})
    return BiasRegression(alpha, beta, r2, corr, per_class, per_image, f, f0)
