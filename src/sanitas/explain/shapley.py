"""DASP as an explainer (the implementation lives in :mod:`sanitas.shapley`)."""

from __future__ import annotations

import torch

from sanitas.explain._core import fit_selection
from sanitas.explain.base import Explainer


class DASP(Explainer):
    """DASP (Ancona et al. 2019): Shapley values approximated with a probabilistic twin network.

    All classes come from one call; ``n_sizes`` coalition sizes (default 16: all 784 sizes of a
    28x28 image take ~20 minutes), ``feature_groups`` None (per element), 'pixel', or a patch size.
    """

    name = "dasp"
    defaults = {"baseline": 0.0, "n_sizes": 16, "sizes": "uniform", "feature_groups": None, "seed": 0,
                "max_memory": 512 * 2**20}

    def attribute(self, model, x, G):
        from sanitas.shapley import dasp

        maps = dasp(model, x, self.baseline, n_sizes=self.n_sizes, sizes=self.sizes,
                    feature_groups=self.feature_groups, seed=self.seed, max_memory=self.max_memory)
        return torch.einsum("bnk,nk...->bn...", fit_selection(G, maps.shape[1]).to(maps.dtype), maps)
