"""Exact Shapley values by enumerating every coalition (the reference for tiny inputs).

For ``M`` players and the game ``v(S) = f(x_S)``, with ``x_S`` equal to ``x`` on the players
in ``S`` and to the baseline elsewhere::

    phi_i = sum_{S subset of P minus i} |S|! (M - |S| - 1)! / M!  [v(S + i) - v(S)]

``2^M`` forward passes per input, so only for ``M`` up to about 16.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sanitas.errors import ConfigError
from sanitas.explain._core import check_images, eval_mode, logits_of
from sanitas.shapley.players import GroupSpec, player_labels, resolve_baseline, spread

MAX_EXACT_PLAYERS = 20


def shapley_exact(model: nn.Module, x: torch.Tensor, baseline=0.0, *, feature_groups: GroupSpec = None,
                  batch_size: int = 4096, return_players: bool = False) -> torch.Tensor:
    """Exact Shapley values of every class logit, ``(N, K, *x.shape[1:])``.

    ``return_players=True`` gives the per-player values ``(N, K, M)`` instead of a map.
    """
    x = check_images(x)
    b = resolve_baseline(baseline, x)
    labels, m = player_labels(tuple(x.shape[1:]), feature_groups, x.device)
    if m > MAX_EXACT_PLAYERS:
        raise ConfigError(f"exact Shapley values need 2^M model evaluations; M = {m} players is too many (at most "
                          f"{MAX_EXACT_PLAYERS}). Group features (feature_groups) or use dasp() instead")
    n_sub = 1 << m
    idx = torch.arange(n_sub, device=x.device)
    bits = ((idx[:, None] >> torch.arange(m, device=x.device)[None, :]) & 1).to(x.dtype)  # (2^M, M)
    elem_mask = bits[:, labels.reshape(-1)].reshape(n_sub, *labels.shape)                 # (2^M, *S)
    size = bits.sum(1).long()
    fact = [math.factorial(j) for j in range(m + 1)]
    weight = torch.tensor([fact[s] * fact[m - s - 1] / fact[m] for s in range(m)], dtype=torch.float64,
                          device=x.device)
    outs = []
    with torch.no_grad(), eval_mode(model):
        for n in range(x.shape[0]):
            d = (x[n] - b[n]).unsqueeze(0)
            vals = torch.cat([logits_of(model, b[n].unsqueeze(0) + d * elem_mask[s:s + batch_size])
                              for s in range(0, n_sub, batch_size)]).double()              # (2^M, K)
            phi = torch.empty(m, vals.shape[1], dtype=torch.float64, device=x.device)
            for i in range(m):
                without = idx[((idx >> i) & 1) == 0]
                diff = vals[without | (1 << i)] - vals[without]
                phi[i] = (weight[size[without]][:, None] * diff).sum(0)
            phi = phi.to(x.dtype)
            outs.append(phi.T if return_players else spread(phi, labels, m))
    return torch.stack(outs)
