"""Deep Approximate Shapley Propagation (DASP; Ancona, Oztireli & Gross, ICML 2019).

The Shapley value of player ``i`` among ``M`` is its marginal contribution averaged over the
coalition sizes ``k = 0..M-1`` of the *other* players, each size weighted ``1/M``::

    phi_i = 1/M  sum_k  E_{S ~ U(k)} [ f(x_{S+i}) - f(x_S) ]

where ``U(k)`` draws ``S`` uniformly among the size-``k`` subsets of ``P - {i}``. DASP replaces
each expectation by one pass of a probabilistic twin of the network (mean and variance per
unit, :mod:`sanitas.shapley.probabilistic`):

1. **Input layer.** The network's leading affine layers (``Conv2d``/``Linear``, with any
   ``Flatten``, ``AvgPool2d``, eval ``BatchNorm`` or ``Dropout`` among them) are one affine map
   ``h(z) = A z + c``. With ``d = x - baseline`` and ``v_j = A (d restricted to player j)``,
   ``h(x_S) = h(baseline) + sum_{j in S} v_j``: a sum of ``k`` values drawn *without replacement*
   from the population ``{v_j : j != i}`` (size ``M' = M - 1``). Per unit, with the population
   mean ``mu_i = (T - v_i) / M'`` and variance ``s2_i = (Q - v_i^2) / M' - mu_i^2`` (``T = sum_j
   v_j = A d``, ``Q = sum_j v_j^2``), that sum has::

       mean = k mu_i,     variance = k (M' - k) / (M' - 1) s2_i

   (the finite-population formulas of sampling without replacement), modelled as a Gaussian.
   ``h(x_{S+i})`` has the same variance and the mean shifted by ``v_i``. The paper does this for
   the first layer only; taking the whole affine prefix keeps it exact through ``Flatten``,
   pooling and normalisation, where the twin would otherwise drop correlations.
2. **Propagation.** Both Gaussians go through the rest of the twin (units independent; ReLU and
   max-pooling by moment matching) to the means of all ``K`` logits, and their difference is
   the expected marginal contribution of ``i`` to a coalition of size ``k``, for every class.
3. **Sizes.** The contributions are averaged over coalition sizes with quadrature weights
   (:func:`coalition_sizes`). ``k = 0`` and ``k = M - 1`` have zero variance, so those terms are
   exact; for a network with no ReLU or pooling after its affine prefix (a linear model) every
   term is exact and DASP equals the exact Shapley value ``w * (x - baseline)``.

All ``(player, size)`` pairs of an input form the batch of the probabilistic pass, in chunks of
``batch_size`` pairs (by default sized to ``max_memory``). Cost: ``2 * M * n_sizes`` twin passes
per input (a twin pass costs about two forward passes plus the moment formulas).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sanitas.errors import ConfigError
from sanitas.explain._core import check_images, eval_mode, logits_of
from sanitas.shapley.players import GroupSpec, player_labels, player_masks, resolve_baseline, spread
from sanitas.shapley.probabilistic import ProbabilisticNet, to_probabilistic
from sanitas.utils.progress import progress
from sanitas.utils.seed import make_generator

SizeSpec = str | Sequence[int] | torch.Tensor


def coalition_sizes(m: int, n_sizes: int | None = None, sizes: SizeSpec = "uniform",
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Coalition sizes ``k`` (numbers of *other* players, ``0..M-1``) and their weights (sum 1).

    * ``"all"``: every size, weight ``1/M`` (``n_sizes`` must be ``None`` or ``M``);
    * ``"uniform"`` (default): ``{0..M-1}`` cut into ``n_sizes`` contiguous strata of near-equal
      length; each stratum is represented by its middle size, weighted by its length ``/ M``
      (the composite midpoint rule; ``n_sizes=None`` or ``>= M`` gives every size);
    * ``"random"``: the same strata, one size drawn uniformly inside each (stratified sampling,
      private generator seeded with ``seed``): an unbiased estimate of the all-sizes average;
    * a sequence of sizes: those sizes, equally weighted.
    """
    if m < 1:
        raise ConfigError(f"there must be at least one player, got M = {m}")
    if n_sizes is not None:
        if isinstance(n_sizes, bool) or int(n_sizes) != n_sizes or n_sizes < 1:
            raise ConfigError(f"n_sizes must be a positive integer or None (all sizes), got {n_sizes!r}")
        n_sizes = int(n_sizes)
    if not isinstance(sizes, str):
        if n_sizes is not None:
            raise ConfigError("give either explicit sizes or n_sizes, not both")
        ks = torch.as_tensor(sizes).reshape(-1)
        if ks.numel() == 0 or ks.is_floating_point() or bool(((ks < 0) | (ks > m - 1)).any()):
            raise ConfigError(f"explicit coalition sizes must be integers in 0..{m - 1} (other players), got "
                              f"{ks.tolist()[:8]}")
        return ks.long(), torch.full((ks.numel(),), 1.0 / ks.numel(), dtype=torch.float64)
    if sizes == "all":
        if n_sizes not in (None, m):
            raise ConfigError(f"sizes='all' uses all {m} sizes; n_sizes={n_sizes} contradicts it (use "
                              "sizes='uniform' or 'random' to use fewer)")
        return torch.arange(m), torch.full((m,), 1.0 / m, dtype=torch.float64)
    if sizes not in ("uniform", "random"):
        raise ConfigError(f"unknown sizes {sizes!r}: use 'all', 'uniform', 'random' or a list of sizes")
    n = m if n_sizes is None else min(n_sizes, m)
    strata = torch.tensor_split(torch.arange(m), n)
    lengths = torch.tensor([len(s) for s in strata], dtype=torch.float64)
    if sizes == "uniform":
        ks = torch.stack([s[(len(s) - 1) // 2] for s in strata])
    else:
        g = make_generator(seed)
        ks = torch.stack([s[int(torch.randint(len(s), (1,), generator=g))] for s in strata])
    return ks, lengths / m


def dasp(model: nn.Module, x: torch.Tensor, baseline=0.0, *, n_sizes: int | None = None,
         sizes: SizeSpec = "uniform", feature_groups: GroupSpec = None, batch_size: int | None = None,
         max_memory: int = 512 * 2**20, seed: int = 0, quiet: bool | None = None,
         return_players: bool = False) -> torch.Tensor:
    """DASP attributions of every class logit, shaped ``(N, K, *x.shape[1:])``.

    Parameters
    ----------
    model
        A sequential network of supported layers (see :func:`to_probabilistic`) returning
        logits ``(N, K)``. Explained in eval mode; never modified.
    x
        Inputs ``(N, C, H, W)`` (or ``(N, D)``).
    baseline
        The value of an absent feature: a number, one input, or one per input. Default 0.
    n_sizes, sizes
        Which coalition sizes, see :func:`coalition_sizes`. ``n_sizes=None`` uses all ``M``
        sizes (``2 M^2`` twin passes: minutes for a 28x28 image on a CPU); 16-64 sizes are
        the practical range for images.
    feature_groups
        Players: ``None`` (every element, i.e. per channel), ``"pixel"``, a patch size, or
        labels; see :mod:`sanitas.shapley.players`. A player's value is spread evenly over its
        elements.
    batch_size
        ``(player, size)`` pairs per probabilistic pass; by default as many as fit in about
        ``max_memory`` bytes.
    seed
        For ``sizes="random"`` only (a private generator; the global RNG is untouched).
    return_players
        Return per-player values ``(N, K, M)`` instead of maps.
    """
    x = check_images(x)
    b = resolve_baseline(baseline, x)
    labels, m = player_labels(tuple(x.shape[1:]), feature_groups, x.device)
    ks, wk = coalition_sizes(m, n_sizes, sizes, seed)
    ks, wk = ks.to(x.device), wk.to(x.device)
    outs = []
    with torch.no_grad(), eval_mode(model):
        logits_of(model, x[:1])  # a clear error for a model that does not return (N, K) logits
        twin = to_probabilistic(model, example=x[:1])
        pre = twin.affine_prefix()
        bs = int(batch_size) if batch_size else _auto_batch(twin, pre, x, max_memory)
        n_pairs = m * len(ks)
        bar = progress(range(x.shape[0] * -(-n_pairs // bs)), desc="dasp", quiet=quiet)
        it = iter(bar)
        for n in range(x.shape[0]):
            phi = _dasp_one(twin, pre, x[n], b[n], labels, m, ks, wk, bs, it)
            phi = phi.to(x.dtype)
            outs.append(phi.T if return_players else spread(phi, labels, m))
        if hasattr(bar, "close"):
            bar.close()
    return torch.stack(outs)


def _dasp_one(twin: ProbabilisticNet, pre: int, x: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, m: int,
              ks: torch.Tensor, wk: torch.Tensor, bs: int, tick) -> torch.Tensor:
    """Per-player DASP values ``(M, K)`` (float64) for one input."""
    d = x - b
    base = twin.deterministic(b.unsqueeze(0), 0, pre)                       # h(baseline), (1, *P)
    total = twin.linear(d.unsqueeze(0), 0, pre)                             # T = sum_j v_j
    sq = torch.zeros_like(total)                                            # Q = sum_j v_j^2
    for s in range(0, m, bs):
        v = twin.linear(d * player_masks(labels, torch.arange(s, min(s + bs, m), device=x.device), d.dtype),
                        0, pre)
        sq += (v * v).sum(0, keepdim=True)
    mo = m - 1                                                              # population: the other players
    nk = len(ks)
    phi = None
    for start in range(0, m * nk, bs):
        pairs = torch.arange(start, min(start + bs, m * nk), device=x.device)
        i, j = pairs // nk, pairs % nk
        first = int(i[0])
        v = twin.linear(d * player_masks(labels, torch.arange(first, int(i[-1]) + 1, device=x.device), d.dtype),
                        0, pre)[i - first]                                  # v_i, (B, *P)
        k = ks[j].to(d.dtype).reshape(-1, *([1] * (v.dim() - 1)))
        if mo > 0:
            mu = (total - v) / mo
            s2 = ((sq - v * v) / mo - mu * mu).clamp_min(0)
            var = s2 * (k * (mo - k) / (mo - 1)) if mo > 1 else torch.zeros_like(v)
            mean0 = base + k * mu
        else:
            var = torch.zeros_like(v)
            mean0 = base.expand_as(v)
        out, _ = twin(torch.cat([mean0 + v, mean0]), torch.cat([var, var]), start=pre)
        contrib = (out[:len(pairs)] - out[len(pairs):]).double() * wk[j][:, None]
        if phi is None:
            phi = torch.zeros(m, contrib.shape[1], dtype=torch.float64, device=x.device)
        phi.index_add_(0, i, contrib)
        next(tick, None)
    return phi


def _auto_batch(twin: ProbabilisticNet, pre: int, x: torch.Tensor, max_memory: int) -> int:
    """Pairs per pass so that the pass's tensors stay near ``max_memory`` bytes (a rough model)."""
    h = twin.deterministic(x[:1], 0, pre)
    sizes = [h.numel()]
    for _, layer in twin.layers[pre:]:
        h = layer.deterministic(h)
        sizes.append(h.numel())
    elt = x.element_size()
    # per pair: ~12 prefix-sized temporaries, and for the twin 2 inputs x (mean, var) x ~6 temporaries
    per_pair = elt * (12 * sizes[0] + 24 * max(sizes) + x[0].numel())
    return max(1, int(max_memory // per_pair))
