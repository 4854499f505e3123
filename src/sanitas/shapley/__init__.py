"""Shapley values of a network's logits: DASP (approximate, polynomial) and exact enumeration.

>>> from sanitas.shapley import dasp, shapley_exact, to_probabilistic
>>> maps = dasp(model, x, baseline=0.0, n_sizes=16)      # (N, K, C, H, W), every class
>>> ref = shapley_exact(tiny_model, x_tiny)             # 2^M evaluations, M <= 20 players
"""

from sanitas.shapley.dasp import coalition_sizes, dasp
from sanitas.shapley.exact import shapley_exact
from sanitas.shapley.players import player_labels
from sanitas.shapley.probabilistic import (SUPPORTED, ProbabilisticNet, ProbLayer, max_moments, relu_moments,
                                           supported_layers, to_probabilistic)

__all__ = ["dasp", "coalition_sizes", "shapley_exact", "player_labels", "to_probabilistic", "ProbabilisticNet",
           "ProbLayer", "SUPPORTED", "supported_layers", "relu_moments", "max_moments"]
