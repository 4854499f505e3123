"""Model parameter randomization test (adebayo2018, section 3): cascading and independent.

>>> res = sanitas.model_randomization(model, x, y, methods=["gradient", "guided_backprop"],
...                                   metrics=["spearman_abs", "ssim"], mode="cascading")
>>> res.pivot("spearman_abs")

A check of :mod:`sanitas.checks.base`: :class:`ModelRandomization` builds the stages (randomized copies of
the model, ``draws`` random draws each, and the ceiling models) as the engine's variants.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sanitas import engine
from sanitas.checks.base import Check, legacy_positional
from sanitas.checks.inputs import TARGETS, resolve_methods, resolve_metrics, warn_degenerate
from sanitas.checks.result import CheckResult
from sanitas.errors import ConfigError, InputError, ModelError
from sanitas.experiments.schema import _count, _flag, _inits, _model, _names, _number, _one_of, _string, _texts
from sanitas.explain import get_explainer
from sanitas.utils import validation
from sanitas.utils.device import layout_would_change, prefer_fast_layout
from sanitas.utils.hashing import model_fingerprint

RANDOMIZATION_MODES = ("cascading", "independent", "smooth", "efficient", "random_logit")


def _nonzero_fraction(x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    return (maps != 0).flatten(1).double().mean(1)


def _nonzero_fraction_nz(x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    active = (x != 0).expand_as(maps).flatten(1)
    nz = ((maps != 0).flatten(1) & active).double().sum(1)
    return nz / active.double().sum(1)  # NaN for an all-zero image: counted, never averaged in


def _map_sum(x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    return maps.flatten(1).double().sum(1)


# Statistics of one map (not a comparison of two), recorded per stage as extra "metrics":
# the sparsity of competitive maps (gupta2019 section 4: about 1/K on a randomized net) and the
# attribution sum shown under each map (sundararajan2019 section 3.2: IG's sum follows the logit).
MAP_STATS = {"nonzero_fraction": _nonzero_fraction, "nonzero_fraction_nz": _nonzero_fraction_nz,
             "map_sum": _map_sum}


def histogram_entropy(maps: torch.Tensor, bins: int = 100) -> torch.Tensor:
    """Shannon entropy (nats) of the histogram of each map's absolute values (eMPRT's complexity)."""
    flat = maps.detach().abs().flatten(1).double().cpu()
    out = torch.empty(flat.shape[0], dtype=torch.float64)
    for i, v in enumerate(flat):
        lo, hi = float(v.min()), float(v.max())
        if hi <= lo:
            out[i] = 0.0
            continue
        h = torch.histc(v, bins=bins, min=lo, max=hi)
        p = h[h > 0] / h.sum()
        out[i] = float(-(p * p.log()).sum())
    return out


def _ssim_sign_invariant():
    from sanitas.similarity import get_similarity

    base = get_similarity("ssim")

    def ssim_max_sign(a, b, x=None):
        return torch.maximum(base(a, b, x=x), base(a, -b, x=x))

    return ssim_max_sign


class _Stage:
    """A stage built here rather than by :mod:`sanitas.randomize` (the eMPRT and random-logit modes)."""

    def __init__(self, name: str, index: int, model: nn.Module, randomized_layers=()):
        self.name, self.index, self.model, self.randomized_layers, self.draw = name, index, model, list(
            randomized_layers), 0


class ModelRandomization(Check):
    """The model parameter randomization test (see :func:`model_randomization` for every option)."""

    name = "model_randomization"
    options = {"mode": _one_of(*RANDOMIZATION_MODES), "init": _inits, "order": _one_of("top_down", "bottom_up"),
               "blocks": _names, "normalize": _one_of("none", "maxabs", "rms"), "map_stats": _texts,
               "calibrate": _flag, "bn_stats": _string, "smooth_samples": _count(), "smooth_sigma": _number(minimum=0),
               "draws": _count(), "model_seeds": _count(), "target": _one_of(*TARGETS), "ceiling_model": _model}
    reading = ("Each number is the similarity between a method's map of the trained model and its map once the "
               "model's layers are replaced by random weights (cumulatively from the top, for cascading), averaged "
               "over the explained images: 1 means the map did not change. A method that explains what the model "
               "learned should fall towards what unrelated maps score (the calibration band below) as more layers "
               "are randomized; a method whose map stays similar shows the input, not the model.")

    def __init__(self, model, x, y=None, *, mode: str = "cascading", init: str = "truncated_normal",
                 order: str | None = None, blocks=None, normalize: str | None = None, bn_stats: str | None = None,
                 smooth_samples: int = 50, smooth_sigma: float = 0.1, map_stats=(), draws: int = 1,
                 ceiling_model=None, **common):
        super().__init__(model, x, y, **common)
        if mode not in RANDOMIZATION_MODES:
            raise ConfigError(f"unknown mode {mode!r}: use one of {RANDOMIZATION_MODES}")
        self.mode, self.init, self.order, self.blocks = mode, init, order, blocks
        self.normalize, self.bn_stats = normalize, bn_stats
        if mode == "smooth":
            smooth_samples = validation.count(smooth_samples, "smooth_samples")
            smooth_sigma = validation.real(smooth_sigma, "smooth_sigma", minimum=0)
        self.smooth_samples, self.smooth_sigma = smooth_samples, smooth_sigma
        self.map_stats = [map_stats] if isinstance(map_stats, str) else list(map_stats)
        unknown = [m for m in self.map_stats if m not in MAP_STATS]
        if unknown:
            raise ConfigError(f"unknown map statistic(s) {unknown}: use any of {sorted(MAP_STATS)}")
        self.draws = validation.count(draws, "draws")
        if self.draws > 1 and mode not in ("cascading", "independent", "smooth"):
            raise ConfigError(f"draws applies to the cascading, independent and smooth modes, not to {mode!r}")
        self.ceilings = [] if ceiling_model is None else list(ceiling_model) if isinstance(
            ceiling_model, (list, tuple)) else [ceiling_model]
        for c in self.ceilings:
            if not isinstance(c, nn.Module):
                raise InputError(f"ceiling_model must be a torch.nn.Module (the architecture trained with another "
                                 f"seed) or a list of them, got {type(c).__name__}")

    def prepare(self) -> None:
        from sanitas import randomize

        super().prepare()
        model, x, mode = self.model, self.x, self.mode
        self.explainers = resolve_methods(self.methods)
        self.sims = resolve_metrics(self.metrics)
        kw: dict[str, Any] = {"init": self.init, "seed": self.seed, "blocks": self.blocks}
        if self.bn_stats is not None:
            kw["bn_stats"] = self.bn_stats
        self.layers = randomize.discover_layers(model, x[:1])
        groups = randomize.group_layers(self.layers, self.blocks, model)
        # the stages are channels_last copies on CPU (prefer_fast_layout); explain the unchanged model in
        # the same layout so that all stages run the same kernels. A copy: the user's model is not touched.
        if layout_would_change(model):
            self.reference = prefer_fast_layout(randomize.variants._deepcopy(model), x[:1])
            if layout_would_change(self.reference):  # the fast layout would change what the model computes
                self.reference = model
        self._total = 2 + len(self.ceilings)
        if mode in ("cascading", "independent", "smooth"):
            kw["draws"] = self.draws
            self._total = 1 + len(groups) * self.draws + len(self.ceilings)
        if mode in ("cascading", "smooth"):
            # sMPRT (Hedstrom et al. 2023): every explanation averaged over noisy copies, bottom-up
            kw["order"] = self.order or ("bottom_up" if mode == "smooth" else "top_down")
            self.stages = randomize.cascading(model, x[:1], **kw)
            if mode == "smooth":
                self.explainers = {k: get_explainer("smoothgrad", base=e, samples=self.smooth_samples,
                                                    sigma=self.smooth_sigma, seed=self.seed)
                                   for k, e in self.explainers.items()}
        elif mode == "independent":
            self.stages = randomize.independent(model, x[:1], **kw)
        elif mode == "efficient":
            # eMPRT (Hedstrom et al. 2023): original vs fully randomized; score = relative entropy rise
            full = randomize.randomize(model, x[:1], None, init=self.init, seed=self.seed,
                                       **({"bn_stats": self.bn_stats} if self.bn_stats else {}))
            self.stages = [_Stage("original", 0, self.reference),
                           _Stage("fully_randomized", 1, full, [l.name for l in self.layers])]
            self.extra_scores = _entropy_rise
        else:  # random_logit (Sixt et al. 2020): same model, a random other class
            from sanitas.explain._core import num_classes

            k = num_classes(model, x)
            if k < 2:
                raise ModelError(f"random_logit compares the explained class with another class; the model has {k} "
                                 "output, so there is none. Use another mode")
            self._classes = k
            self.stages = [_Stage("original", 0, self.reference), _Stage("random_logit", 1, self.reference)]
            self.sims = {**self.sims, "ssim_max_sign": _ssim_sign_invariant()}
        self._order = kw.get("order")
        if self.map_stats:
            inner, names = self.extra_scores, self.map_stats

            def extra(variant, method, ref, maps):
                values = inner(variant, method, ref, maps) if inner is not None else {}
                values.update({name: MAP_STATS[name](x, maps).cpu() for name in names})
                return values

            self.extra_scores = extra

    def targets(self):
        ref_target, target_for = super().targets()
        if self.mode != "random_logit":
            return ref_target, target_for
        k = self._classes
        g = torch.Generator().manual_seed(self.seed)
        other = ((ref_target.cpu() + torch.randint(1, k, ref_target.shape, generator=g)) % k).to(self.x.device)
        return ref_target, (lambda v: other if v.index == 1 else target_for(v))

    def variants(self):
        for st in self.stages:
            # nothing randomized yet: explain the reference, so the engine reuses its maps
            net = self.reference if not st.randomized_layers and self.mode != "random_logit" else st.model
            yield engine.Variant(st.name, st.index, net,
                                 {"mode": self.mode, "randomized": ",".join(st.randomized_layers)},
                                 draw=getattr(st, "draw", 0))
        for i, c in enumerate(self.ceilings, 1):  # rows carry model_seed, a factor of the verdicts' bootstrap
            yield engine.Variant("independently trained", i, c, {"mode": self.mode, "randomized": "",
                                                                 "model_seed": i}, role="ceiling")

    def total(self) -> int:
        return self._total

    def config(self) -> dict:
        return {"mode": self.mode, "init": self.init, "order": self._order, "blocks": self.blocks,
                "normalize": self.normalize, "bn_stats": self.bn_stats,
                "smooth": [self.smooth_samples, self.smooth_sigma], "map_stats": self.map_stats, "draws": self.draws,
                "ceiling": [model_fingerprint(c) for c in self.ceilings] or None}

    def meta(self, meta: dict) -> dict:
        return {"layers": [l.name for l in self.layers], "layer_types": {l.name: l.type for l in self.layers}}

    def finish(self, result: CheckResult) -> None:
        warn_degenerate(result, self.init)


def _entropy_rise(variant, method, ref, maps):
    h0, h1 = histogram_entropy(ref), histogram_entropy(maps)
    return {"entropy_rise": (h1 - h0) / torch.where(h0 > 0, h0, torch.ones_like(h0))}


def model_randomization(model: nn.Module, x: torch.Tensor, y=None, *args, methods=None,
                        metrics=ModelRandomization.default_metrics, mode: str = "cascading",
                        init: str = "truncated_normal", target: str | None = None, seed: int = 0,
                        order: str | None = None, blocks=None, normalize: str | None = None, out=None,
                        quiet: bool | None = None, resume: bool = True, calibrate: bool = True, show: int = 8,
                        bn_stats: str | None = None, smooth_samples: int = 50, smooth_sigma: float = 0.1,
                        map_stats=(), output=None, draws: int = 1, ceiling_model=None,
                        executor=None, figures: bool = True) -> CheckResult:
    """Run the model parameter randomization test (:class:`ModelRandomization`) and return a :class:`CheckResult`.

    ``mode``: 'cascading' (top layer first, cumulatively down; ``order='bottom_up'`` reverses),
    'independent' (one layer at a time), 'smooth' (sMPRT: explanations averaged over
    ``smooth_samples`` noisy copies, sigma ``smooth_sigma`` x range, bottom-up), 'efficient'
    (eMPRT: original vs fully randomized, metric ``entropy_rise`` = (H(e_rand) - H(e)) / H(e) of
    100-bin histograms, higher = more sensitive) or 'random_logit' (Sixt et al. 2020: the
    explained class vs a random other class of the same model, metric ``ssim_max_sign`` =
    max(SSIM(a, b), SSIM(a, -b))). ``init``: 'truncated_normal' (paper), 'uniform',
    'default', 'permute'. ``target``: 'label' (default: the labels ``y``; with ``y=None`` the trained model's
    prediction), 'original' (the trained model's prediction) or 'predicted' (each stage's own prediction).
    Each explanation is computed once per (stage, method) and scored by every metric; with
    ``out`` finished stages are stored and a re-run with the same config resumes, and the results files,
    figures and ``report.html`` are written there (``figures=False``: the results files only).
    ``map_stats``: names from :data:`MAP_STATS` (``nonzero_fraction``, ``nonzero_fraction_nz`` = among
    input elements that are not zero, ``map_sum``) recorded per stage as extra rows of the table.
    ``output``: which part of the model's output holds the logits when that is ambiguous (see
    :func:`sanitas.explain.forward.select_logits`). Inputs need not be images: signals ``(N, C, L)``
    and tabular rows ``(N, F)`` work with the rank and correlation metrics. A method that cannot
    explain the model is left out, with its reason in ``result.meta["refused"]``.

    ``draws``: how many independent random draws of each randomized stage (seed ``seed`` for the
    first, derived seeds for the others; the table's ``draw`` column). With two or more, each stage's
    *floor* (how alike the maps of two random draws are) is measured too. ``ceiling_model``: the same
    architecture trained independently (another seed; or a list of them, one per further model seed);
    its maps against the model's are the *ceiling*
    (how alike two trained models' maps are). Floors and ceilings are in ``result.references`` and
    decide ``result.verdicts()``. ``executor``: where the cells run (``None``: the enclosing
    :func:`~sanitas.executors.use_executor` block, else here; ``"local"``: here; ``"ray"`` or
    a :class:`~sanitas.executors.RayExecutor`: on a Ray cluster; same results, see :mod:`sanitas.executors`).
    """
    kw = {"methods": methods, "metrics": metrics, **legacy_positional("model_randomization", args,
                                                                      ("methods", "metrics"))}
    return ModelRandomization(model, x, y, mode=mode, init=init, target=target, seed=seed, order=order, blocks=blocks,
                              normalize=normalize, out=out, quiet=quiet, resume=resume, calibrate=calibrate,
                              show=show, bn_stats=bn_stats, smooth_samples=smooth_samples, smooth_sigma=smooth_sigma,
                              map_stats=map_stats, output=output, draws=draws, ceiling_model=ceiling_model,
                              executor=executor, figures=figures, **kw).run()
