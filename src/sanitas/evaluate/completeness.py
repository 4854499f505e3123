"""Approximate completeness (gupta2019, section 4.1): does sum(map) track the logit?

A method is (alpha, beta)-approximately complete when the sum of its map for label y lies in
[alpha * l_y - beta, alpha * l_y + beta]. Competition compares one image's maps across its labels,
so what matters is the relation *per image, across classes* (and per class, across images); one line
through all images and classes at once mixes the images' offsets: integrated gradients, exactly
complete (sum = l_y(x) - l_y(baseline)), scored R^2 0.85 that way. :func:`completeness` fits all three
by least squares (with an intercept, as the paper's figure 3) and returns, besides the pooled fit,
the per-image and per-class R^2 and slopes, and the smallest beta that makes the pooled fit hold for
every point.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sanitas.explain import get_explainer
from sanitas.explain._core import check_images, eval_mode, logits_of, model_device


@dataclass
class CompletenessFit:
    method: str
    alpha: float
    beta: float
    r2: float
    max_residual: float
    exact: bool
    sums: np.ndarray    # (N, K)
    logits: np.ndarray  # (N, K)
    exact_gap: float | None = None  # max |sum(map) - (f(x) - f(baseline))| for methods complete by design

    @property
    def per_image(self) -> tuple[np.ndarray, np.ndarray]:
        """``(r2, alpha)`` of each image's fit across its classes, shape (N,)."""
        return _rowwise_fit(self.logits, self.sums)

    @property
    def per_class(self) -> tuple[np.ndarray, np.ndarray]:
        """``(r2, alpha)`` of each class's fit across the images, shape (K,)."""
        return _rowwise_fit(self.logits.T, self.sums.T)

    def as_dict(self) -> dict:
        r2_i, a_i = self.per_image
        r2_c, a_c = self.per_class
        return {"method": self.method, "alpha": self.alpha, "beta": self.beta, "r2": self.r2,
                "r2_per_image": float(np.nanmedian(r2_i)), "alpha_per_image": float(np.nanmedian(a_i)),
                "r2_per_class": float(np.nanmedian(r2_c)), "alpha_per_class": float(np.nanmedian(a_c)),
                "max_residual": self.max_residual, "exact_by_design": self.exact, "exact_gap": self.exact_gap}

    def plot(self, path: str | Path) -> Path:
        """Scatter of sum-of-map vs logit with the fitted line (gupta2019, figure 3)."""
        from sanitas.report.figures import new_figure, save_figure

        fig = new_figure((3.6, 3.2))
        ax = fig.subplots()
        ax.scatter(self.logits.ravel(), self.sums.ravel(), s=4, alpha=0.4)
        lo, hi = float(self.logits.min()), float(self.logits.max())
        xs = np.linspace(lo, hi, 10)
        ax.plot(xs, self.alpha * xs + self.beta, "r-", lw=1,
                label=f"alpha={self.alpha:.3g}, beta={self.beta:.3g}, R²={self.r2:.3f}")
        ax.set_xlabel("logit")
        ax.set_ylabel("sum of map")
        ax.set_title(self.method, fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        return save_figure(fig, path, dpi=110)


def _rowwise_fit(lg: np.ndarray, sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares line sums[i] ~ alpha_i * lg[i] + b_i for every row i: ``(r2, alpha)`` per row
    (NaN where a row's sums or logits do not vary)."""
    lc = lg - lg.mean(1, keepdims=True)
    sc = sums - sums.mean(1, keepdims=True)
    var_l, var_s = (lc ** 2).sum(1), (sc ** 2).sum(1)
    cov = (lc * sc).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        alpha = np.where(var_l > 0, cov / var_l, np.nan)
        r2 = np.where((var_l > 0) & (var_s > 0), cov ** 2 / (var_l * var_s), np.nan)
    return r2, alpha


def completeness(model: torch.nn.Module, x: torch.Tensor, method="input_x_gradient", **options) -> CompletenessFit:
    """Fit sum(map_c(x)) = alpha * logit_c(x) + beta over all images and all classes (and per image and
    class, see :class:`CompletenessFit`). The model comes first, as in every check; the older order
    ``completeness(method, model, x)`` still works, with a ``DeprecationWarning``."""
    if not isinstance(model, torch.nn.Module) and isinstance(x, torch.nn.Module):
        import warnings

        warnings.warn("completeness(method, model, x) is deprecated: write completeness(model, x, method)",
                      DeprecationWarning, stacklevel=2)
        model, x, method = x, method, model
    check_images(x)
    e = get_explainer(method, **options)
    x = x.detach().to(model_device(model))
    maps = e(model, x, "all")  # (N, K, ...)
    with eval_mode(model), torch.no_grad():
        logits = logits_of(model, x)
    sums = maps.flatten(2).sum(-1).double().cpu().numpy()
    lg = logits.double().cpu().numpy()
    A = np.stack([lg.ravel(), np.ones(lg.size)], 1)
    (alpha, beta), *_ = np.linalg.lstsq(A, sums.ravel(), rcond=None)
    pred = alpha * lg.ravel() + beta
    ss_res = float(((sums.ravel() - pred) ** 2).sum())
    ss_tot = float(((sums.ravel() - sums.mean()) ** 2).sum())
    r2 = 1 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    gap = None
    if getattr(e, "complete", False):
        from sanitas.explain.gradients import make_baseline

        with eval_mode(model), torch.no_grad():
            fb = logits_of(model, make_baseline(getattr(e, "baseline", None), x, getattr(e, "seed", 0)))
        gap = float(np.abs(sums - (lg - fb.double().cpu().numpy())).max())
    return CompletenessFit(repr(e), float(alpha), float(beta), r2, float(np.abs(sums.ravel() - pred).max()),
                           bool(getattr(e, "complete", False)), sums, lg, gap)
