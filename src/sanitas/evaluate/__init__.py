"""Evaluating explanation quality: the decision-flip perturbation metric and its statistics.

>>> from sanitas.evaluate import decision_flip, perturbation_scores, pairwise_wilcoxon
>>> e_minus = decision_flip(model, x, maps, order="-s")                     # doctest: +SKIP
>>> df = perturbation_scores(model, x, {"gradient": g, "random": r})       # doctest: +SKIP
>>> pairwise_wilcoxon(df, metric="delta_e_minus")                          # doctest: +SKIP
>>> bias_decomposition(model, x)          # A^{h,l}, A^{b,l} per image and layer (Eq. 13-14)  # doctest: +SKIP
>>> bias_regression(model, x).alpha       # f^{b=0} = alpha f + beta                 # doctest: +SKIP
>>> res = evaluate_quality(model, x, methods=["gradient", "fullgrad"], layers="all", out="q")  # doctest: +SKIP
>>> from sanitas.evaluate.plots import boxplot_scores                   # doctest: +SKIP
"""

from sanitas.evaluate.perturbation import (FLIP_METRICS, HIGHER_IS_BETTER, REMOVAL_ORDERS, REMOVALS, FlipResult,
                                           decision_flip, delta_e, find_flips, gaussian_blur, perturbation_scores, removal_order,
                                           removal_reference, shuffle_pool)
from sanitas.evaluate.biases import (BiasAnalysis, BiasRegression, bias_analysis, bias_decomposition, bias_regression,
                                      bias_summary, cutting_layers, distill_zero_bias, max_abs_bias, zero_bias,
                                      zero_bias_accuracy)
from sanitas.evaluate.completeness import CompletenessFit, completeness
from sanitas.evaluate.stats import holm, pairwise_wilcoxon, rank_biserial, summarize, wilcoxon_pair
from sanitas.evaluate.quality import (MethodSpec, Quality, QualityResult, evaluate_methods, evaluate_quality,
                                      layer_methods, spatial_layers)

__all__ = ["HIGHER_IS_BETTER", "FLIP_METRICS", "REMOVAL_ORDERS", "REMOVALS", "FlipResult", "decision_flip", "delta_e",
           "find_flips", "gaussian_blur", "perturbation_scores", "removal_order", "removal_reference", "shuffle_pool",
           "CompletenessFit", "completeness", "holm", "pairwise_wilcoxon", "rank_biserial", "summarize", "wilcoxon_pair",
           "MethodSpec", "Quality", "QualityResult", "evaluate_quality", "evaluate_methods", "layer_methods", "spatial_layers",
           "BiasAnalysis", "BiasRegression", "bias_analysis", "bias_decomposition", "bias_regression", "bias_summary",
           "cutting_layers", "distill_zero_bias", "max_abs_bias", "zero_bias", "zero_bias_accuracy"]

# Box plots live in sanitas.evaluate.plots (imported on demand: matplotlib is slow to import).
