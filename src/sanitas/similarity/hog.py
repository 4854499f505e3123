"""Pearson correlation of histogram-of-oriented-gradients (HOG) features of two maps.

adebayo2018 (appendix B) uses ``skimage.feature.hog`` with 16 x 16-pixel cells on 299 x 299 inputs
normalised to [-1, +1]. :func:`hog_features` computes the same features as
``skimage.feature.hog(image, orientations, pixels_per_cell, cells_per_block, block_norm)``, batched
in torch:

* gradients by central differences (zero on the border rows / columns);
* each pixel's magnitude goes, unweighted, to the one orientation bin (unsigned, 0-180 degrees,
  ``orientations`` equal bins) that holds its angle; a cell sums its pixels; pixels beyond the
  last whole cell are ignored;
* blocks of ``cells_per_block`` cells, stride one cell, normalised by ``block_norm``
  (``"L2-Hys"`` default, ``"L2"``, ``"L1"``, ``"L1-sqrt"``), eps = 1e-5;
* with several channels (``reduce="none"``), each pixel uses the channel with the largest
  gradient magnitude (skimage's ``channel_axis`` rule).

Cell size scaled to the image size: ``pixels_per_cell=None`` (default) uses
``max(2, int(min(H, W) * 16 / 299 + 0.5))`` pixels, i.e. about 18-19 cells across the image as
in the paper (16 px on 299 px inputs): 2 px for 28 x 28 (14 x 14 cells), 12 px for 224 x 224.
At least 2 px, so that a cell pools more than one gradient.

Preprocessing defaults (see :mod:`sanitas.similarity.preprocess`): no absolute value, signed sum
over channels, min-max rescaled to [-1, 1] (``rescale="symmetric"``), as the paper states.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from sanitas.errors import ConfigError, InputError
from sanitas.similarity.base import Similarity, nan_where, work_dtype
from sanitas.similarity.pearson import pearson_rows
from sanitas.similarity.preprocess import REDUCTIONS, RESCALES, check_choice, prepare_maps
from sanitas.similarity.registry import register_similarity

__all__ = ["HOG", "hog_features", "default_pixels_per_cell"]

BLOCK_NORMS = ("L2-Hys", "L2", "L1", "L1-sqrt")
_EPS = 1e-5


def default_pixels_per_cell(height: int, width: int) -> int:
    """The paper's 16 px per 299 px, scaled to the image: ``max(2, round(min(H, W) * 16 / 299))``."""
    return max(2, int(min(height, width) * 16 / 299 + 0.5))


def _pair(value: Any, option: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value), int(value))
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in value)):
        raise ConfigError(f"{option} must be a positive integer or a pair of them (rows, columns); got {value!r}")
    return int(value[0]), int(value[1])


def _gradients(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    g_row = torch.zeros_like(img)
    g_col = torch.zeros_like(img)
    g_row[..., 1:-1, :] = img[..., 2:, :] - img[..., :-2, :]
    g_col[..., :, 1:-1] = img[..., :, 2:] - img[..., :, :-2]
    return g_row, g_col


def _normalize_blocks(blocks: torch.Tensor, method: str) -> torch.Tensor:
    """Normalise each block; ``blocks`` is contiguous ``(..., block_size)``, one block per row."""
    if method == "L1":
        return blocks / (blocks.abs().sum(dim=-1, keepdim=True) + _EPS)
    if method == "L1-sqrt":
        return torch.sqrt(blocks / (blocks.abs().sum(dim=-1, keepdim=True) + _EPS))
    out = blocks / torch.sqrt(torch.linalg.vector_norm(blocks, dim=-1, keepdim=True).square() + _EPS**2)
    if method == "L2-Hys":
        out = out.clamp_(max=0.2)
        out = out / torch.sqrt(torch.linalg.vector_norm(out, dim=-1, keepdim=True).square() + _EPS**2)
    return out


def hog_features(images: torch.Tensor, *, orientations: int = 9, pixels_per_cell: int | tuple[int, int] = 8,
                 cells_per_block: int | tuple[int, int] = 3, block_norm: str = "L2-Hys") -> torch.Tensor:
    """HOG feature vectors ``(B, F)`` of ``(B, H, W)`` images (or ``(B, C, H, W)``: per pixel the channel
    with the largest gradient), equal to ``skimage.feature.hog(..., feature_vector=True)``."""
    c_row, c_col = _pair(pixels_per_cell, "pixels_per_cell")
    b_row, b_col = _pair(cells_per_block, "cells_per_block")
    check_choice("block_norm", block_norm, BLOCK_NORMS)
    if isinstance(orientations, bool) or not isinstance(orientations, (int, np.integer)) or orientations < 1:
        raise ConfigError(f"orientations must be a positive integer; got {orientations!r}")
    img = images.to(work_dtype(images.device))
    g_row, g_col = _gradients(img)
    if img.ndim == 4:  # pick, per pixel, the channel with the largest gradient magnitude
        pick = torch.hypot(g_row, g_col).argmax(dim=1, keepdim=True)
        g_row, g_col = g_row.gather(1, pick).squeeze(1), g_col.gather(1, pick).squeeze(1)
    bsz, h, w = g_row.shape
    n_cr, n_cc = h // c_row, w // c_col
    n_br, n_bc = n_cr - b_row + 1, n_cc - b_col + 1
    if n_br <= 0 or n_bc <= 0:
        raise InputError(f"{h}x{w} maps are too small for HOG with {c_row}x{c_col}-pixel cells and "
                         f"{b_row}x{b_col}-cell blocks (need at least {b_row * c_row}x{b_col * c_col} pixels); "
                         "pass smaller pixels_per_cell or cells_per_block")
    magnitude = torch.hypot(g_col, g_row)
    angle = torch.remainder(torch.atan2(g_row, g_col) * (180 / math.pi), 180.0)
    # Bin edges as skimage's Cython code holds them (C floats), so boundary angles fall the same way.
    edges = np.array([180.0 / orientations * i for i in range(orientations + 1)], dtype=np.float32)
    edges_t = torch.as_tensor(edges.astype(np.float64), dtype=angle.dtype, device=angle.device)
    bins = torch.bucketize(angle, edges_t[1:], right=True)  # == orientations for angle >= 180 (dropped)
    # Each pixel adds its magnitude to slot (cell, bin); pixels outside whole cells and angles of
    # exactly 180 degrees go to a spare last slot that is dropped.
    rows = torch.arange(h, device=bins.device) // c_row
    cols = torch.arange(w, device=bins.device) // c_col
    cell = rows.clamp(max=n_cr - 1).view(h, 1) * n_cc + cols.clamp(max=n_cc - 1).view(1, w)
    inside = (rows < n_cr).view(h, 1) & (cols < n_cc).view(1, w)
    n_slots = n_cr * n_cc * orientations
    slot = torch.where(inside & (bins < orientations), cell * orientations + bins, n_slots)
    hist = torch.zeros(bsz, n_slots + 1, dtype=magnitude.dtype, device=magnitude.device)
    hist.scatter_add_(1, slot.flatten(1), magnitude.flatten(1))
    hist = hist[:, :n_slots].view(bsz, n_cr, n_cc, orientations)
    blocks = hist.unfold(1, b_row, 1).unfold(2, b_col, 1)  # (B, n_br, n_bc, orientations, b_row, b_col)
    # skimage's feature order: block row, block column, cell row, cell column, orientation.
    blocks = blocks.permute(0, 1, 2, 4, 5, 3).reshape(bsz, n_br * n_bc, -1)
    return _normalize_blocks(blocks, block_norm).reshape(bsz, -1)


@register_similarity
class HOG(Similarity):
    """Pearson correlation of the HOG features of the two maps (cells scaled to the image size)."""

    name = "hog"
    needs_images = True
    description = "Pearson correlation of the maps' HOG features (cells scaled to the image size)"

    def __init__(self, *, orientations: int = 9, pixels_per_cell: int | tuple[int, int] | None = None,
                 cells_per_block: int | tuple[int, int] = 3, block_norm: str = "L2-Hys", absolute: bool = False,
                 reduce: str = "sum", rescale: str = "symmetric"):
        if isinstance(orientations, bool) or not isinstance(orientations, int) or orientations < 1:
            raise ConfigError(f"orientations must be a positive integer; got {orientations!r}")
        ppc = None if pixels_per_cell is None else _pair(pixels_per_cell, "pixels_per_cell")
        cpb = _pair(cells_per_block, "cells_per_block")
        check_choice("block_norm", block_norm, BLOCK_NORMS)
        if not isinstance(absolute, bool):
            raise ConfigError(f"absolute must be True or False; got {absolute!r}")
        reduce = check_choice("reduce", reduce, REDUCTIONS)
        rescale = check_choice("rescale", rescale, RESCALES)
        super().__init__(orientations=orientations, pixels_per_cell=ppc, cells_per_block=cpb, block_norm=block_norm,
                         absolute=absolute, reduce=reduce, rescale=rescale)
        self.orientations, self.pixels_per_cell, self.cells_per_block = orientations, ppc, cpb
        self.block_norm, self.absolute, self.reduce, self.rescale = block_norm, absolute, reduce, rescale

    def cell_size(self, height: int, width: int) -> tuple[int, int]:
        """The cell size used for ``height x width`` maps."""
        if self.pixels_per_cell is not None:
            return self.pixels_per_cell
        c = default_pixels_per_cell(height, width)
        return c, c

    def _score(self, a: torch.Tensor, b: torch.Tensor, x: torch.Tensor | None, baseline: Any) -> torch.Tensor:
        pa, ca = prepare_maps(a, absolute=self.absolute, reduce=self.reduce, rescale=self.rescale)
        pb, cb = prepare_maps(b, absolute=self.absolute, reduce=self.reduce, rescale=self.rescale)
        if pa.shape[1] == 1:
            pa, pb = pa[:, 0], pb[:, 0]
        feats = hog_features(torch.cat([pa, pb]), orientations=self.orientations,
                             pixels_per_cell=self.cell_size(*a.shape[-2:]), cells_per_block=self.cells_per_block,
                             block_norm=self.block_norm)
        fa, fb = feats.chunk(2)
        return nan_where(ca | cb, pearson_rows(fa, fb))
