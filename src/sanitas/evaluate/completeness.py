"""Approximate completeness (seed 001, section 4.1): does sum(map) track the logit?

A method is (alpha, beta)-approximately complete when the sum of its map for label y lies in
[alpha * l_y - beta, alpha * l_y + beta]. :func:`completeness` fits sum-of-map against logit over
images and classes by least squares and returns alpha, beta, R^2 and the largest residual
(the smallest beta that makes the fit hold for all points).
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

    def as_dict(self) -> dict:
        return {"method": self.method, "alpha": self.alpha, "beta": self.beta, "r2": self.r2,
                "max_residual": self.max_residual, "exact_by_design": self.exact, "exact_gap": self.exact_gap}

    def plot(self, path: str | Path) -> Path:
        """Scatter of sum-of-map vs logit with the fitted line (seed 001, figure 3)."""
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


def completeness(method, model: torch.nn.Module, x: torch.Tensor, **options) -> CompletenessFit:
    """Fit sum(map_c(x)) = alpha * logit_c(x) + beta over all images and all classes."""
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
