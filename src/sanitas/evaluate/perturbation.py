"""The decision-flip perturbation metric of grabska2020 (section 4, Eqs. 17-20).

For an image ``x`` and a saliency map ``s``, pixels are removed one at a time in the order of
``s`` until the predicted class changes; the metric is the relative amount of signal removed,

    e(x, s) = 1 - ||x_s||_2 / ||x||_2                                            (Eq. 17)

where ``x_s`` is the image at the flip. Definitions used throughout this module:

Pixels and the map
    A *pixel* is a spatial position (i, j); removing it replaces all of its channels at once.
    A map of shape ``(N, C', H, W)`` is reduced over channels to ``(N, H, W)`` by ``channel_reduce``
    (default ``"sum"``: the signed sum over channels, as in grabska2020 Eq. 5; ``"abs_sum"``,
    ``"max"``, ``"mean"`` or a callable are the alternatives). ``(N, H, W)`` maps are used as given.
    The map is used as is: pass ``abs(...)`` yourself if you want magnitudes.

Order and ties
    ``order="-s"`` removes the least salient pixel first (ascending ``s``); ``order="+s"`` the
    most salient first (descending ``s``). The sort is stable: pixels with equal saliency are
    removed in raster order (row-major index ``i * W + j``, smallest first) in *both* orders.
    So a constant map removes pixels top-left to bottom-right whichever order is asked for.

Levels
    Level ``k`` (``0 <= k <= P = H * W``) is the image with the first ``k`` pixels of the ordering
    removed; level 0 is ``x`` itself and level ``P`` is the fully removed image (the reference).
    Level ``k`` *flips* when ``argmax f(x_k) != argmax f(x)`` (``torch.argmax``: the first of
    tied maxima). The flip level is ``k* >= 1`` and ``x_s = x_{k*}`` includes the pixel whose
    removal changed the decision.

Removal operators (what a removed pixel becomes)
    ``"zero"``: 0 in every channel. ``"mean"``: the image's own per-channel mean over all pixels
    (computed on the unperturbed image). ``"blur"``: the pixel of a Gaussian-blurred copy of the
    unperturbed image (separable kernel, standard deviation ``blur_sigma`` pixels, default
    ``min(H, W) / 14``, i.e. 2 px on 28x28 and 16 px on 224x224; kernel radius ``ceil(3 sigma)``
    clipped to ``size - 1`` per axis, weights renormalised, mirror ("reflect") padding; see
    :func:`gaussian_blur`). A float (a constant) or a tensor broadcastable to ``x`` (a user's
    reference image) are also accepted.

No flip
    If no level flips, the image keeps its class even with every pixel removed. Then
    ``flipped`` is False, ``level == P`` and, with ``no_flip="max"`` (default), ``x_s`` is the
    fully removed image, so ``e = 1 - ||reference|| / ||x||`` (1 for zero removal): all signal can
    go without changing the decision. ``no_flip="nan"`` returns NaN instead. Note that the fully
    removed image does not depend on the map, so under a monotone decision "never flips" is a
    property of the image, not of the map, and such images contribute ``delta e = 0``.

Which flip the fast search finds (``search="multilevel"``, the default)
    The search keeps, per (image, map), an interval ``(lo, hi]`` with level ``lo`` known not to
    flip (``lo = 0`` at the start) and level ``hi`` known to flip. Each round evaluates, in batched
    forward passes, ``levels_per_round`` levels evenly spaced strictly inside the interval (all
    of them once the interval holds no more than that), and moves ``hi`` to the *first* of them
    that flips and ``lo`` to the evaluated level just before it. The first round runs on
    ``(0, P]``, with level ``P`` evaluated once per image and shared by every map and order.
    It stops when ``hi = lo + 1`` and returns ``k* = hi``. Hence, always:

    * ``k*`` flips and ``k* - 1`` does not (a real transition, exact at pixel resolution);
    * no level the search evaluated below ``k*`` flips;
    * ``k*`` equals the first flip along the ordering (what a one-pixel-per-forward scan finds)
      whenever the decision is monotone in the number of removed pixels (once flipped, flipped
      for every larger level), and more generally whenever the first run of consecutive flipped
      levels contains a level of the first round's grid (for instance whenever that run is at
      least ``ceil(P / (levels_per_round + 1))`` levels long). If the decision is non-monotone and
      the first flipped run is shorter and falls between grid levels, the search returns the start
      of a later flipped run instead.

    ``search="scan"`` always returns the first flip along the ordering: it evaluates levels
    ``1..B``, ``B+1..2B``, ... (``B = levels_per_round`` consecutive levels per image per round,
    default 64, batched across images) and stops an image at its first flipped level;
    ``levels_per_round=1`` is the one-pixel-per-forward reference scan. It costs about ``k*``
    model evaluations per image against about ``levels_per_round * ceil(log_{levels_per_round+1} P)``
    for the multilevel search (about 32 for P = 784 at the default 15).
    The no-flip verdict of the multilevel search means "neither level ``P`` nor any evaluated
    level flips", which for a monotone decision is the same as the scan's.

    Real networks are often non-monotone. On the trained paper CNN with 256 Fashion-MNIST test
    images, gradient maps and zero removal, the decision flips back after the first flip for at
    least 44% of the images (often after a run of 1-4 pixels), and the multilevel search (default
    settings) returned the scan's first flip for 77% of the images with either order (mean
    ``|e_multilevel - e_scan|`` 0.017, median 0, max 0.6; ``benchmarks/perturbation.py``).
    ``FlipResult.nonmonotone`` flags the images where the search
    saw the decision flip back. Use ``search="scan"`` when the first flip itself is needed, and the
    multilevel search (a genuine, pixel-exact flip, usually the first) for speed on large images.

    "Exact" is modulo floating point: a network may return logits that differ in the last bits
    when the same image is evaluated inside a different batch, which matters only for near-ties
    between the two top classes.

The model is never modified: it runs under ``torch.no_grad()`` in eval mode and every module's
training flag is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from sanitas.errors import ConfigError, InputError
from sanitas.evaluate.flip_search import SEARCHES, FlipEngine, check_search_options
from sanitas.evaluate.removal import (REMOVAL_ORDERS, REMOVALS, check_maps, check_order, perturb, rank_table,
                                      reduce_map, removal_name, removal_order, removal_reference)
from sanitas.explain._core import check_image_batch, eval_mode, model_device
from sanitas.utils import validation
from sanitas.utils.image import gaussian_blur
from sanitas.utils.seed import make_generator

__all__ = ["REMOVAL_ORDERS", "REMOVALS", "SEARCHES", "FLIP_METRICS", "HIGHER_IS_BETTER", "FlipResult", "decision_flip",
           "find_flips", "delta_e", "perturbation_scores", "shuffle_pool", "removal_reference", "gaussian_blur",
           "reduce_map", "removal_order", "perturb"]

#: metric name -> description (grabska2020 Eqs. 17-20 and supplement F).
FLIP_METRICS = {
    "e_minus": "e(x, -s): signal removed, least salient first, until the decision flips (Eq. 19)",
    "e_plus": "e(x, +s): signal removed, most salient first, until the decision flips",
    "e_delta": "e_minus - e_plus (supplement F.1)",
    "e_minus_xi": "mean over shuffled maps xi of e(x, -xi) (supplement F.2, e^xi_-)",
    "e_plus_xi": "mean over shuffled maps xi of e(x, +xi) (e^xi_+)",
    "e_delta_xi": "e_minus_xi - e_plus_xi (e^xi_delta)",
    "delta_e_minus": "e_minus - e_minus_xi (Eq. 20)",
    "delta_e_plus": "e_plus - e_plus_xi (Eq. 18 with +s)",
    "delta_e_delta": "delta_e_minus - delta_e_plus (supplement F.1, the paper's recommended metric)",
}

#: Whether a larger value means a better saliency map (None: a diagnostic of the method's
#: artefacts, not a quality score; grabska2020 plots e_plus with a reversed axis for this reason).
HIGHER_IS_BETTER: dict[str, bool | None] = {
    "e_minus": True, "e_plus": False, "e_delta": True,
    "e_minus_xi": None, "e_plus_xi": None, "e_delta_xi": None,
    "delta_e_minus": True, "delta_e_plus": False, "delta_e_delta": True,
}


@dataclass
class FlipResult:
    """Per-(image, map) outcome of the decision-flip search.

    ``e``: the metric (Eq. 17); ``level``: pixels removed in ``x_s`` (``P`` when no flip);
    ``flipped``: whether a flip was found; ``original_class`` / ``flip_class``: ``argmax f`` at
    level 0 and at ``x_s``; ``nonmonotone``: the levels the search evaluated show the decision
    flipping back (a flipped level below an unflipped one), so the decision is certainly
    non-monotone for that image and the multilevel search may not have returned the first flip
    (False proves nothing); ``n_pixels``: ``P = H * W``; ``n_evaluated``: perturbed images sent
    through the model (the shared forward passes on ``x`` and on the fully removed images
    counted once).
    """

    e: torch.Tensor
    level: torch.Tensor
    flipped: torch.Tensor
    original_class: torch.Tensor
    flip_class: torch.Tensor
    nonmonotone: torch.Tensor
    n_pixels: int
    n_evaluated: int
    order: str
    removal: str
    search: str
    config: dict = field(default_factory=dict)

    @property
    def fraction_removed(self) -> torch.Tensor:
        return self.level.double() / self.n_pixels


# --------------------------------------------------------------------------------------------
# public API


def find_flips(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, order: str = "-s", removal="zero", *,
               batch_size: int = 256, levels_per_round: int | None = None, search: str = "multilevel",
               channel_reduce: str | Callable = "sum", blur_sigma: float | None = None, no_flip: str = "max",
               device=None, quiet: bool | None = None) -> FlipResult:
    """Decision-flip search for each image and its map; returns a :class:`FlipResult`.

    ``x``: ``(N, C, H, W)`` float images; ``maps``: ``(N, C', H, W)`` (``C'`` = ``C`` or 1) or
    ``(N, H, W)``; ``order``: ``"-s"`` | ``"+s"``; ``removal``: ``"zero"`` | ``"mean"`` | ``"blur"``
    | number | tensor. ``batch_size``: images per forward pass. ``search``: ``"multilevel"`` (fast;
    a pixel-exact flip, the first one when the decision is monotone) or ``"scan"`` (always the
    first flip). ``levels_per_round``: removal levels evaluated per image per round (default 15
    for the multilevel search, 64 consecutive levels for the scan; 1 with the scan is the
    one-pixel-per-forward reference). Semantics (flip, ties, no flip, which flip each search
    finds) are in the module docstring.
    """
    check_order(order)
    levels_per_round = check_search_options(search, levels_per_round, no_flip)
    dev = model_device(model) if device is None else torch.device(device)
    x = check_image_batch(x).detach().to(dev)
    s = check_maps(maps, x, channel_reduce)
    with torch.no_grad(), eval_mode(model):
        ref = removal_reference(x, removal, blur_sigma)
        engine = FlipEngine(model, x, ref, batch_size, quiet)
        engine.ranks = rank_table(removal_order(s, order))
        img = torch.arange(len(x), device=dev)
        level, flipped, nonmono = engine.run(img, img, search, levels_per_round)
        n_eval = engine.n_evaluated
        e, flip_class = engine.outcome(img, img, level, flipped, no_flip, with_class=True)
    return FlipResult(e=e.cpu(), level=level.cpu(), flipped=flipped.cpu(), original_class=engine.original.cpu(),
                      flip_class=flip_class.cpu(), nonmonotone=nonmono.cpu(), n_pixels=engine.P,
                      n_evaluated=n_eval, order=order, removal=removal_name(removal), search=search,
                      config={"levels_per_round": levels_per_round, "batch_size": batch_size,
                              "channel_reduce": channel_reduce if isinstance(channel_reduce, str) else "callable",
                              "blur_sigma": blur_sigma, "no_flip": no_flip})


def decision_flip(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, order: str = "-s", removal="zero",
                  **kwargs) -> torch.Tensor:
    """``e(x, s)`` (grabska2020 Eq. 17) per image, float64 ``Tensor[N]``; see :func:`find_flips`."""
    return find_flips(model, x, maps, order, removal, **kwargs).e


def shuffle_pool(n: int, n_shuffles: int, seed: int = 0) -> torch.Tensor:
    """Which other image's map serves as each noise map xi: a LongTensor ``(n, n_shuffles)``.

    Row ``i`` holds ``n_shuffles`` *distinct* indices, none equal to ``i``. Each column is a
    permutation of the images (every map of the pool is used exactly once per column), so the xi
    have exactly the marginal statistics of the maps. Construction: a random order of the images
    and ``n_shuffles`` distinct random offsets in ``1..n-1``; image at position ``p`` borrows the map
    at position ``p + offset`` (mod n). Needs ``n >= 2`` and ``n_shuffles <= n - 1``.
    """
    n_shuffles = validation.count(n_shuffles, "n_shuffles", minimum=0)
    if n_shuffles == 0:
        return torch.empty((n, 0), dtype=torch.long)
    if n < 2:
        raise InputError(f"the shuffled pool needs maps of at least 2 images (xi come from other images), got {n}")
    if n_shuffles > n - 1:
        raise ConfigError(f"n_shuffles={n_shuffles} but each of the {n} images has only {n - 1} other images' maps; "
                          f"use n_shuffles <= {n - 1} or evaluate more images")
    g = make_generator(seed)
    pos = torch.randperm(n, generator=g)
    offsets = torch.randperm(n - 1, generator=g)[:n_shuffles] + 1
    xi = torch.empty((n, n_shuffles), dtype=torch.long)
    p = torch.arange(n)
    for r, o in enumerate(offsets.tolist()):
        xi[pos, r] = pos[(p + o) % n]
    return xi


def _as_method_dict(maps) -> tuple[dict[str, torch.Tensor], bool]:
    if isinstance(maps, Mapping):
        if len(maps) == 0:
            raise InputError("maps is an empty dict; pass {method_name: maps_tensor, ...}")
        for k in maps:
            if not isinstance(k, str):
                raise InputError(f"method names must be strings, got {k!r}")
        return dict(maps), True
    return {"map": maps}, False


def perturbation_scores(model: nn.Module, x: torch.Tensor, maps, *, n_shuffles: int = 10, seed: int = 0,
                        orders: Sequence[str] = REMOVAL_ORDERS, removal="zero", batch_size: int = 256,
                        levels_per_round: int | None = None, search: str = "multilevel",
                        channel_reduce: str | Callable = "sum", blur_sigma: float | None = None,
                        no_flip: str = "max", device=None, quiet: bool | None = None) -> pd.DataFrame:
    """e_-, e_+, e_delta, their shuffled-noise baselines and delta versions, as a tidy DataFrame.

    ``maps``: one tensor (maps of one method) or a dict ``{method: maps}``. For every image,
    ``n_shuffles`` noise maps xi are taken from the *same method's* maps of *other* images
    (:func:`shuffle_pool`; the same pairing for every method, so methods stay paired per image).

    Rows: one per (method, image, metric); columns ``method`` (only for a dict), ``image``
    (index in ``x``), ``metric``, ``value``. Metrics (grabska2020 Eqs. 17-20, supplement F):
    ``e_minus`` = e(x, -s), ``e_plus`` = e(x, +s), ``e_delta`` = e_minus - e_plus; ``*_xi`` the mean
    over xi of the same with xi as the map; ``delta_e_minus`` = e_minus - e_minus_xi (Eq. 20),
    ``delta_e_plus`` = e_plus - e_plus_xi, ``delta_e_delta`` = delta_e_minus - delta_e_plus. Higher
    is better for e_minus, e_delta, delta_e_minus, delta_e_delta; lower for e_plus, delta_e_plus
    (:data:`HIGHER_IS_BETTER`). Metrics of an order not in ``orders`` are left out.

    All (method, order, map-or-xi, image) searches run together, so each forward pass is shared:
    the original and fully removed images are evaluated once per image, and the rank table is
    computed once per (method, order, map) and reused by every image that borrows it as xi
    (memory: 4 bytes x methods x orders x N x H x W). ``df.attrs["sanitas"]`` records the config,
    the xi pairing (``xi_index``), the forward count (``n_evaluated``) and the fraction of searches
    that saw the decision flip back (``nonmonotone_fraction``).
    """
    orders = tuple(orders)
    if len(orders) == 0 or len(set(orders)) != len(orders):
        raise ConfigError(f"orders must be a non-empty subset of {REMOVAL_ORDERS} without repeats, got {orders!r}")
    for o in orders:
        check_order(o)
    levels_per_round = check_search_options(search, levels_per_round, no_flip)
    method_maps, named = _as_method_dict(maps)
    dev = model_device(model) if device is None else torch.device(device)
    x = check_image_batch(x).detach().to(dev)
    n = len(x)
    sal = {m: check_maps(v, x, channel_reduce, what=f"maps of method {m!r}" if named else "maps")
           for m, v in method_maps.items()}
    xi = shuffle_pool(n, n_shuffles, seed).to(dev)
    R = xi.shape[1]

    # One search for everything. Rank table rows: (method, order, source map), n rows per block.
    # Jobs: (image, row); for image i: its own map's row, then the rows of its R xi maps.
    blocks = [(m, o) for m in sal for o in orders]
    img_own = torch.arange(n, device=dev)
    img_blk = torch.cat([img_own, img_own.repeat_interleave(R)])
    src_blk = torch.cat([img_own, xi.flatten()])
    with torch.no_grad(), eval_mode(model):
        ref = removal_reference(x, removal, blur_sigma)
        engine = FlipEngine(model, x, ref, batch_size, quiet)
        engine.ranks = rank_table(torch.cat([removal_order(sal[m], o) for m, o in blocks]))
        img = img_blk.repeat(len(blocks))
        row = torch.cat([src_blk + b * n for b in range(len(blocks))])
        level, flipped, nonmono = engine.run(img, row, search, levels_per_round)
        e_all, _ = engine.outcome(img, row, level, flipped, no_flip)
    per_block = len(img_blk)
    values = {blk: (e_all[b * per_block:b * per_block + n], e_all[b * per_block + n:(b + 1) * per_block].view(n, R))
              for b, blk in enumerate(blocks)}

    rows = []
    for m in sal:
        metric_vals: dict[str, torch.Tensor] = {}
        for o, name in (("-s", "minus"), ("+s", "plus")):
            if (m, o) not in values:
                continue
            e_s, e_xi = values[(m, o)]
            metric_vals[f"e_{name}"] = e_s
            if R:
                metric_vals[f"e_{name}_xi"] = e_xi.mean(1)
                metric_vals[f"delta_e_{name}"] = e_s - e_xi.mean(1)
        if "e_minus" in metric_vals and "e_plus" in metric_vals:
            metric_vals["e_delta"] = metric_vals["e_minus"] - metric_vals["e_plus"]
            if R:
                metric_vals["e_delta_xi"] = metric_vals["e_minus_xi"] - metric_vals["e_plus_xi"]
                metric_vals["delta_e_delta"] = metric_vals["delta_e_minus"] - metric_vals["delta_e_plus"]
        for metric in FLIP_METRICS:
            if metric not in metric_vals:
                continue
            frame = pd.DataFrame({"image": np.arange(n), "metric": metric,
                                  "value": metric_vals[metric].cpu().numpy()})
            if named:
                frame.insert(0, "method", m)
            rows.append(frame)
    df = pd.concat(rows, ignore_index=True)
    df.attrs["sanitas"] = {
        "metric": "decision_flip", "orders": list(orders), "removal": removal_name(removal),
        "n_shuffles": R, "seed": seed, "search": search, "levels_per_round": levels_per_round,
        "channel_reduce": channel_reduce if isinstance(channel_reduce, str) else "callable",
        "blur_sigma": blur_sigma, "no_flip": no_flip, "n_evaluated": engine.n_evaluated,
        "nonmonotone_fraction": float(nonmono.double().mean()),
        "xi_index": xi.cpu().tolist(), "original_class": engine.original.cpu().tolist(),
    }
    return df


def delta_e(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, order: str = "-s", *, n_shuffles: int = 10,
            seed: int = 0, **kwargs) -> torch.Tensor:
    """delta e = e(x, s) - mean_xi e(x, xi) per image (grabska2020 Eq. 18/20), float64 ``Tensor[N]``.

    The xi are maps of the same method for other images (:func:`shuffle_pool`). Keyword arguments
    as for :func:`perturbation_scores`.
    """
    check_order(order)
    if isinstance(maps, Mapping):
        raise InputError("delta_e takes the maps of one method as a tensor; use perturbation_scores for a dict")
    if n_shuffles < 1:
        raise ConfigError("delta_e needs n_shuffles >= 1 (the noise maps it compares against)")
    df = perturbation_scores(model, x, maps, n_shuffles=n_shuffles, seed=seed, orders=(order,), **kwargs)
    name = "delta_e_minus" if order == "-s" else "delta_e_plus"
    vals = df[df.metric == name].sort_values("image")["value"].to_numpy()
    return torch.from_numpy(vals.copy())
