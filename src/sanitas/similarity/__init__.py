"""Similarity metrics between attribution maps, and their calibration.

Every metric is a callable object ``metric(a, b, x=None, baseline=None) -> Tensor[N]`` for batched
maps ``a``, ``b`` shaped ``(N, C, H, W)`` or ``(N, H, W)`` (see :mod:`sanitas.similarity.base`),
registered by name:

==================== =============================================================================
``spearman_abs``     Spearman rank correlation of ``|a|`` and ``|b|`` over all elements (adebayo2018)
``spearman``         Spearman rank correlation of the signed maps
``spearman_nz``      ``spearman_abs`` over the pixels where ``x`` differs from the baseline (sundararajan2019)
``pearson``          Pearson correlation of the signed maps
``ssim``             SSIM of the maps as 2-D images (window 5, channel sum, min-max to [0, 1])
``hog``              Pearson correlation of HOG features (cells scaled to the image size)
``topk_intersection`` fraction of shared top-10 % positions by ``|value|``
==================== =============================================================================

``get_similarity("ssim", window=7)`` makes one with options; :func:`calibrate` tells what "low"
means for each metric on given data (random masks, input-dominance null).
"""

from sanitas.similarity.base import Similarity
from sanitas.similarity.registry import (SIMILARITIES, FunctionSimilarity, get_similarity, register_similarity,
                                         similarity_names)
from sanitas.similarity.ranks import average_ranks
from sanitas.similarity.pearson import Pearson, pearson_rows
from sanitas.similarity.spearman import Spearman, SpearmanAbs, SpearmanNZ, input_mask, spearman_rows
from sanitas.similarity.ssim import SSIM, ssim
from sanitas.similarity.hog import HOG, hog_features
from sanitas.similarity.topk import TopKIntersection
from sanitas.similarity.calibration import BASELINES, calibrate, random_masks

__all__ = ["Similarity", "SIMILARITIES", "FunctionSimilarity", "get_similarity", "register_similarity",
           "similarity_names", "average_ranks", "Pearson", "pearson_rows", "Spearman", "SpearmanAbs", "SpearmanNZ",
           "input_mask", "spearman_rows", "SSIM", "ssim", "HOG", "hog_features", "TopKIntersection", "BASELINES",
           "calibrate", "random_masks"]
