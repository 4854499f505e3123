"""Calibration: what a "low" or "high" similarity means for each metric on the data at hand.

adebayo2018 (appendix B) calibrates its metrics with random masks, and section 5.2 shows that
"input times gradient" methods keep looking like the input even when the gradient is noise. For
every metric :func:`calibrate` measures these reference values (baselines):

==================== ==========================================================================
``map_vs_uniform``   metric(map, u), u ~ U[-1, 1] shaped like the map   (needs ``maps``)
``map_vs_gaussian``  metric(map, g), g ~ N(0, 1)                        (needs ``maps``)
``uniform_vs_uniform`` metric(u, v), two independent uniform masks
``gaussian_vs_gaussian`` metric(g, h), two independent Gaussian masks
``input_x_uniform``  metric((x - b) * u, (x - b) * v): the input-dominance null of section 5.2,
                     b the baseline (0 unless given)                    (needs ``x``)
``input_x_gaussian`` the same with Gaussian u, v                        (needs ``x``)
==================== ==========================================================================

The first four say what "unrelated" looks like; a method whose maps on a randomized model score
near them has lost its dependence on the model. The input-dominance null is the floor a
gradient-times-input method (x * grad, IG, LRP, DeepLIFT) reaches when its gradient is pure noise:
a score near it means "only the input is left", however high the number looks (sundararajan2019 measures
about 0.42 for ``spearman_nz`` on MNIST).

Masks are drawn on the CPU from private generators (one per baseline, derived from ``seed``),
so the numbers are reproducible, independent of the device and of which metrics are asked for,
and the global random state is untouched. Scores are computed for the whole batch at once, one
random draw at a time (``n_masks`` draws per image). Each table row summarises the ``N x n_masks``
scores: mean of the finite ones, a bootstrap interval that resamples images (draws on one image are
not independent), ``n`` finite scores and ``nan_count``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from sanitas.errors import ConfigError
from sanitas.similarity.base import Similarity, as_maps
from sanitas.similarity.registry import get_similarity
from sanitas.utils import stats, validation
from sanitas.utils.seed import make_generator

__all__ = ["BASELINES", "DISTRIBUTIONS", "calibrate", "calibration_scores", "random_masks"]

DISTRIBUTIONS = ("uniform", "gaussian")
#: Every baseline name, in the order rows appear.
BASELINES = ("map_vs_uniform", "map_vs_gaussian", "uniform_vs_uniform", "gaussian_vs_gaussian",
             "input_x_uniform", "input_x_gaussian", "competitive_input_x_uniform", "competitive_input_x_gaussian")
COLUMNS = ["metric", "baseline", "mean", "ci_low", "ci_high", "n", "nan_count"]

MetricLike = str | Similarity | Callable


def random_masks(shape: Sequence[int], distribution: str, generator: torch.Generator,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random masks on the CPU: ``"uniform"`` on [-1, 1] or ``"gaussian"`` N(0, 1)."""
    if distribution == "uniform":
        return torch.rand(tuple(shape), generator=generator, dtype=dtype) * 2 - 1
    if distribution == "gaussian":
        return torch.randn(tuple(shape), generator=generator, dtype=dtype)
    raise ConfigError(f"distribution must be one of {', '.join(map(repr, DISTRIBUTIONS))}; got {distribution!r}")


def _derived_seed(seed: int, name: str) -> int:
    key = [int(seed) & 0xFFFFFFFF] + [ord(c) for c in name]
    return int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1))


def _metric_list(metrics: MetricLike | Sequence[MetricLike]) -> list[Similarity]:
    if isinstance(metrics, (str, Similarity)) or (callable(metrics) and not isinstance(metrics, Sequence)):
        metrics = [metrics]  # type: ignore[list-item]
    out = [get_similarity(m) for m in metrics]  # type: ignore[union-attr]
    if not out:
        raise ConfigError("calibrate needs at least one metric")
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"metric names must be distinct in one calibration; got {names}")
    return out


def _check_args(n_masks: Any, distributions: Any) -> tuple[str, ...]:
    validation.count(n_masks, "n_masks")
    if isinstance(distributions, str):
        distributions = (distributions,)
    distributions = tuple(distributions)
    for d in distributions:
        if d not in DISTRIBUTIONS:
            raise ConfigError(f"distributions must be drawn from {', '.join(map(repr, DISTRIBUTIONS))}; got {d!r}")
    if not distributions:
        raise ConfigError("distributions must name at least one of 'uniform', 'gaussian'")
    return distributions


def competitive_random_votes(shifted: torch.Tensor, classes: int, dist: str, generator: torch.Generator) -> torch.Tensor:
    """The competitive map of label 0 when the ``classes`` labels' maps are random votes ``shifted * u_k``.

    A pixel survives where label 0's vote is positive and the largest, or negative and the smallest:
    a fraction 2/K (1 - 2^-K) of the pixels for i.i.d. symmetric votes. The votes are streamed (one
    label's at a time), so K may be large.
    """
    from sanitas.explain.competition import competition_mask

    chosen = shifted * random_masks(shifted.shape, dist, generator).to(shifted.device)
    hi, lo = chosen.clone(), chosen.clone()
    for _ in range(int(classes) - 1):
        vote = shifted * random_masks(shifted.shape, dist, generator).to(shifted.device)
        hi, lo = torch.maximum(hi, vote), torch.minimum(lo, vote)
    return chosen * competition_mask(chosen, hi, lo)


def calibration_scores(metrics: MetricLike | Sequence[MetricLike], maps: Any = None, x: Any = None, *,
                       n_masks: int = 10, seed: int = 0, distributions: Sequence[str] = DISTRIBUTIONS,
                       baseline: Any = None, classes: int | None = None) -> dict[tuple[str, str], torch.Tensor]:
    """The raw calibration scores: ``{(metric, baseline): Tensor[N, n_masks]}`` (see :func:`calibrate`)."""
    metric_objs = _metric_list(metrics)
    dists = _check_args(n_masks, distributions)
    seed = validation.seed(seed)
    if maps is None and x is None:
        raise ConfigError("calibrate needs maps (the explanations to compare with random masks), x (the input "
                          "images, for the input-dominance null), or both")
    maps_t = None if maps is None else as_maps(maps, "maps")
    x_t = None if x is None else as_maps(x, "x (input images)", device=None if maps_t is None else maps_t.device)
    needing = [m.name for m in metric_objs if m.needs_input]
    if needing and x_t is None:
        raise ConfigError(f"metric(s) {', '.join(needing)} need the input images: pass x=... to calibrate")
    ref = maps_t if maps_t is not None else x_t
    assert ref is not None
    if maps_t is not None and x_t is not None and (x_t.shape[0] != maps_t.shape[0]
                                                    or x_t.shape[-2:] != maps_t.shape[-2:]):
        from sanitas.errors import InputError

        raise InputError(f"x must hold the images the maps explain (same N, H, W); got maps {tuple(maps_t.shape)} "
                         f"and x {tuple(x_t.shape)}")
    device = ref.device
    shifted = None
    if x_t is not None:
        shifted = x_t if baseline is None else x_t - torch.as_tensor(baseline, dtype=x_t.dtype, device=device)

    plan: list[tuple[str, str]] = []  # (baseline name, distribution)
    for d in dists:
        if maps_t is not None:
            plan.append((f"map_vs_{d}", d))
    for d in dists:
        plan.append((f"{d}_vs_{d}", d))
    for d in dists:
        if shifted is not None:
            plan.append((f"input_x_{d}", d))
            if classes is not None:
                plan.append((f"competitive_input_x_{d}", d))
    if classes is not None:
        validation.count(classes, "classes", minimum=2)
    plan.sort(key=lambda p: BASELINES.index(p[0]))
    gens = {name: make_generator(_derived_seed(seed, name)) for name, _ in plan}

    scores: dict[tuple[str, str], list[torch.Tensor]] = {(m.name, name): [] for m in metric_objs for name, _ in plan}
    for _draw in range(int(n_masks)):
        for name, dist in plan:
            if name.startswith("map_vs_"):
                assert maps_t is not None
                a, b = maps_t, random_masks(maps_t.shape, dist, gens[name]).to(device)
            elif name.startswith("competitive_input_x_"):
                assert shifted is not None and classes is not None
                a = competitive_random_votes(shifted, classes, dist, gens[name])
                b = competitive_random_votes(shifted, classes, dist, gens[name])
            elif name.startswith("input_x_"):
                assert shifted is not None
                u = random_masks(shifted.shape, dist, gens[name]).to(device)
                v = random_masks(shifted.shape, dist, gens[name]).to(device)
                a, b = shifted * u, shifted * v
            else:
                a = random_masks(ref.shape, dist, gens[name]).to(device)
                b = random_masks(ref.shape, dist, gens[name]).to(device)
            for m in metric_objs:
                scores[(m.name, name)].append(m(a, b, x=x_t, baseline=baseline).detach())
    return {key: torch.stack(vals, dim=1) for key, vals in scores.items()}


def calibrate(metrics: MetricLike | Sequence[MetricLike], maps: Any = None, x: Any = None, *, n_masks: int = 10,
              seed: int = 0, distributions: Sequence[str] = DISTRIBUTIONS, baseline: Any = None,
              n_boot: int = 1000, level: float = 0.95, classes: int | None = None) -> pd.DataFrame:
    """Reference similarities for each metric: random masks and the input-dominance null.

    ``metrics``: names, metric objects or functions (one or a list). ``maps``: explanations
    ``(N, C, H, W)`` to compare with random masks (optional). ``x``: the input images (needed for
    the input-dominance null and by ``spearman_nz``). ``n_masks`` random draws per image;
    ``seed`` makes it reproducible; ``baseline`` is passed to the metrics (``spearman_nz``) and
    subtracted from ``x`` in the input-dominance null. ``classes``: the model's number of labels, for
    the competitive null (CGI of random votes).

    Returns a tidy DataFrame, one row per (metric, baseline), columns
    ``metric, baseline, mean, ci_low, ci_high, n, nan_count``; ``df.attrs`` records the settings.
    """
    raw = calibration_scores(metrics, maps, x, n_masks=n_masks, seed=seed, distributions=distributions,
                             baseline=baseline, classes=classes)
    rows = []
    for (metric, base), vals in raw.items():
        summary = stats.summarize(vals, n_boot=n_boot, level=level, seed=seed)
        rows.append({"metric": metric, "baseline": base, **summary})
    df = pd.DataFrame(rows, columns=COLUMNS)
    n_images = next(iter(raw.values())).shape[0] if raw else 0
    df.attrs.update(seed=int(seed), n_masks=int(n_masks), n_images=int(n_images), distributions=list(distributions),
                    level=float(level), n_boot=int(n_boot))
    return df
