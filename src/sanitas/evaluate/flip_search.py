"""The decision-flip search: shared forward passes, the multilevel search and the reference scan
(which flip each finds: :mod:`sanitas.evaluate.perturbation`)."""

from __future__ import annotations

import torch
from torch import nn

from sanitas.errors import ConfigError, InputError, ModelError
from sanitas.evaluate.removal import perturb
from sanitas.explain._core import logits_of
from sanitas.utils import validation
from sanitas.utils.progress import progress

SEARCHES = ("multilevel", "scan")
#: levels evaluated per image per round when ``levels_per_round=None``
DEFAULT_LEVELS_PER_ROUND = {"multilevel": 15, "scan": 64}


class FlipEngine:
    """Runs flip searches for many jobs against one batch of images.

    A job is a pair (image index, row of the rank table): the row is the removal ordering of one
    map, so a map borrowed as noise xi by several images is sorted once. The forward passes on
    ``x`` (original classes) and on the fully removed images (level ``P``) are done once here and
    shared by every job, map, order and shuffle.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, ref: torch.Tensor, batch_size: int, quiet):
        batch_size = validation.count(batch_size, "batch_size")
        self.model, self.x, self.batch_size, self.quiet = model, x, batch_size, quiet
        n, _, h, w = x.shape
        self.P = h * w
        self.ref_full = ref.expand_as(x)
        self.n_evaluated = 0
        self.norm_x = x.flatten(1).double().norm(dim=1)
        zero = (self.norm_x == 0).nonzero().flatten()
        if len(zero):
            raise InputError(f"image {int(zero[0])} is all zeros: e(x, s) = 1 - ||x_s|| / ||x|| is undefined for "
                             "||x|| = 0; drop such images")
        self.original = self._classes(x)
        self.full_flip = self._classes(self.ref_full) != self.original
        self.ranks = torch.empty((0, self.P), dtype=torch.int32, device=x.device)

    def _classes(self, imgs: torch.Tensor, count: bool = True) -> torch.Tensor:
        out = []
        for i in range(0, len(imgs), self.batch_size):
            logits = logits_of(self.model, imgs[i:i + self.batch_size])  # a tuple, dict or ModelOutput too
            if logits.shape[1] < 2:
                raise ModelError(f"the model must return logits shaped (batch, classes) with at least 2 classes, "
                                 f"got {tuple(logits.shape)}")
            out.append(logits.argmax(1))
        if count:
            self.n_evaluated += len(imgs)
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=imgs.device)

    def _images(self, img: torch.Tensor, row: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        return perturb(self.x[img], self.ref_full[img], self.ranks[row], level)

    def _flips(self, img: torch.Tensor, row: torch.Tensor, level: torch.Tensor, desc: str = "") -> torch.Tensor:
        """Whether each (image, ordering, level) triple flips; level P is answered from the cache."""
        res = torch.zeros(len(img), dtype=torch.bool, device=self.x.device)
        full = level >= self.P
        res[full] = self.full_flip[img[full]]
        todo = (~full).nonzero().flatten()
        chunks = range(0, len(todo), self.batch_size)
        for i in progress(chunks, desc=desc, quiet=self.quiet) if len(chunks) > 4 else chunks:
            sel = todo[i:i + self.batch_size]
            res[sel] = self._classes(self._images(img[sel], row[sel], level[sel])) != self.original[img[sel]]
        return res

    def search(self, img: torch.Tensor, row: torch.Tensor, levels_per_round: int):
        """Multilevel search (see module docstring). Returns (level, flipped, nonmonotone) per job."""
        dev, P, L = self.x.device, self.P, levels_per_round
        J = len(img)
        lo = torch.zeros(J, dtype=torch.long, device=dev)
        hi = torch.full((J,), P, dtype=torch.long, device=dev)
        hi_flip = self.full_flip[img].clone()
        result = torch.full((J,), P, dtype=torch.long, device=dev)
        flipped = torch.zeros(J, dtype=torch.bool, device=dev)
        nonmono = torch.zeros(J, dtype=torch.bool, device=dev)
        active = torch.ones(J, dtype=torch.bool, device=dev)
        steps = torch.arange(1, L + 1, device=dev)
        rnd = 0
        while True:
            # an interval of width 1 is resolved: hi is the flip, or nothing flips
            done = active & (hi - lo == 1)
            result[done & hi_flip] = hi[done & hi_flip]
            flipped[done] = hi_flip[done]
            active &= ~done
            a = active.nonzero().flatten()
            if len(a) == 0:
                break
            lo_a, hi_a = lo[a], hi[a]
            gap = (hi_a - lo_a).view(-1, 1)
            interior = gap - 1
            cand = torch.where(interior <= L, lo_a.view(-1, 1) + steps, lo_a.view(-1, 1) + (steps * gap) // (L + 1))
            valid = steps.view(1, -1) <= interior
            r, col = valid.nonzero(as_tuple=True)
            fl = torch.zeros_like(valid)
            fl[r, col] = self._flips(img[a[r]], row[a[r]], cand[r, col], desc=f"decision flip, round {rnd + 1}")
            any_f = fl.any(1)
            first = fl.int().argmax(1)
            n_valid = valid.sum(1)
            # evidence of a non-monotone decision: an evaluated level above a flip that does not flip
            back = (valid & ~fl & (steps.view(1, -1) > (first + 1).view(-1, 1))).any(1) & any_f
            back |= any_f & ~hi_flip[a]
            nonmono[a[back]] = True
            # flipped somewhere: (lo, hi] <- (evaluated level before the first flip, first flip)
            rows = any_f.nonzero().flatten()
            f = first[rows]
            lo[a[rows]] = torch.where(f > 0, cand[rows, (f - 1).clamp(min=0)], lo_a[rows])
            hi[a[rows]] = cand[rows, f]
            hi_flip[a[rows]] = True
            # nothing flipped among the candidates: lo <- last candidate (hi unchanged) ...
            rows = (~any_f).nonzero().flatten()
            lo[a[rows]] = cand[rows, n_valid[rows] - 1]
            # ... and if hi does not flip either (only level P, in the first round): no flip found
            never = a[rows][~hi_flip[a[rows]]]
            active[never] = False
            rnd += 1
        return result, flipped, nonmono

    def scan(self, img: torch.Tensor, row: torch.Tensor, block: int):
        """Exact first flip: levels 1..B, B+1..2B, ... (B = ``block`` per job per round), stopping at
        the first flip. ``block=1`` is the one-level-per-forward reference scan."""
        dev, P = self.x.device, self.P
        J = len(img)
        result = torch.full((J,), P, dtype=torch.long, device=dev)
        flipped = torch.zeros(J, dtype=torch.bool, device=dev)
        nonmono = torch.zeros(J, dtype=torch.bool, device=dev)
        active = torch.arange(J, device=dev)
        offs = torch.arange(block, device=dev)
        for start in range(1, P + 1, block):
            if len(active) == 0:
                break
            width = min(block, P + 1 - start)
            lev = (start + offs[:width]).repeat(len(active))
            job = active.repeat_interleave(width)
            fl = self._flips(img[job], row[job], lev, desc=f"decision flip scan, levels {start}+").view(-1, width)
            any_f = fl.any(1)
            first = fl.int().argmax(1)
            back = any_f & (~fl & (offs[:width].view(1, -1) > first.view(-1, 1))).any(1)
            hit = active[any_f]
            result[hit] = start + first[any_f]
            flipped[hit] = True
            nonmono[active[back]] = True
            active = active[~any_f]
        return result, flipped, nonmono

    def run(self, img: torch.Tensor, row: torch.Tensor, search: str, levels_per_round: int):
        if search == "scan":
            return self.scan(img, row, levels_per_round)
        return self.search(img, row, levels_per_round)

    def outcome(self, img: torch.Tensor, row: torch.Tensor, level: torch.Tensor, flipped: torch.Tensor,
                no_flip: str, with_class: bool = False):
        """e (float64) per job from the images at the flip; optionally the class there.

        The class at ``x_s`` needs one more forward pass per flipped job; it is not counted in
        ``n_evaluated`` (the search already knew it differs from the original class).
        """
        e = torch.empty(len(img), dtype=torch.float64, device=self.x.device)
        cls = self.original[img].clone()
        for i in range(0, len(img), self.batch_size):
            sl = slice(i, i + self.batch_size)
            xs = self._images(img[sl], row[sl], level[sl])
            e[sl] = 1.0 - xs.flatten(1).double().norm(dim=1) / self.norm_x[img[sl]]
            if with_class:
                fl = flipped[sl]
                if fl.any():
                    cls[sl][fl] = self._classes(xs[fl], count=False)
        if no_flip == "nan":
            e[~flipped] = float("nan")
        return e, cls


def check_search_options(search: str, levels_per_round: int | None, no_flip: str) -> int:
    """Validate the shared options; returns the effective levels_per_round."""
    if search not in SEARCHES:
        raise ConfigError(f"unknown search {search!r}: use 'multilevel' (fast) or 'scan' (exact first flip)")
    if no_flip not in ("max", "nan"):
        raise ConfigError(f"unknown no_flip {no_flip!r}: use 'max' (e at full removal) or 'nan'")
    if levels_per_round is None:
        return DEFAULT_LEVELS_PER_ROUND[search]
    return validation.count(levels_per_round, "levels_per_round")

