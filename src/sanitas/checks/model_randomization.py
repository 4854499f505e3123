"""Model parameter randomization test (adebayo2018, section 3): cascading and independent.

>>> res = sanitas.model_randomization(model, x, y, ["gradient", "guided_backprop"],
...                                   ["spearman_abs", "ssim"], mode="cascading")
>>> res.pivot("spearman_abs")
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from sanitas import engine
from sanitas.checks.result import CheckResult, model_facts
from sanitas.errors import ConfigError, InputError, ModelError
from sanitas.executors import executor_scope
from sanitas.explain import get_explainer
from sanitas.explain._core import check_images, eval_mode, model_device
from sanitas.explain.forward import model_call
from sanitas.utils import validation
from sanitas.utils.device import layout_would_change, prefer_fast_layout
from sanitas.utils.forward import inference_logits
from sanitas.utils.hashing import model_fingerprint, tensor_digest
from sanitas.utils.progress import warn

RANDOMIZATION_MODES = ("cascading", "independent", "smooth", "efficient", "random_logit")
TARGETS = ("label", "original", "predicted")


def resolve_methods(methods) -> dict[str, Any]:
    """Names, explainers or a ``{display name: name | explainer}`` dict -> ``{name: explainer}``."""
    if isinstance(methods, dict):
        if not methods:
            raise ConfigError("no attribution method given")
        return {str(k): get_explainer(v) for k, v in methods.items()}
    if isinstance(methods, (str, bytes)) or callable(methods):
        methods = [methods]
    out = {}
    for m in methods:
        e = get_explainer(m)
        out[repr(e) if not isinstance(m, str) else m] = e
    if not out:
        raise ConfigError("no attribution method given")
    return out


def resolve_metrics(metrics) -> dict[str, Any]:
    from sanitas.similarity import get_similarity

    if isinstance(metrics, str):
        metrics = [metrics]
    out = {}
    for m in metrics:
        if isinstance(m, str):
            out[m] = get_similarity(m)
        else:
            out[getattr(m, "name", getattr(m, "__name__", repr(m)))] = m
    if not out:
        raise ConfigError("no similarity metric given")
    return out


def check_metrics_for_inputs(sims: dict[str, Any], x: torch.Tensor) -> None:
    """Image metrics (SSIM, HOG) need image inputs; say so before anything is computed."""
    if x.dim() == 4:
        return
    bad = [name for name, m in sims.items() if getattr(m, "needs_images", False)]
    if bad:
        raise ConfigError(f"metric(s) {bad} compare images (N, C, H, W), and the inputs are shaped "
                          f"{tuple(x.shape)}; for signals and tabular inputs use spearman_abs, spearman, pearson or "
                          "topk_intersection")


def describe_methods(explainers: dict[str, Any], model: nn.Module, x: torch.Tensor, refused=()) -> dict[str, dict]:
    """What each method resolved on this model (GradCAM's layer, ...), for the results and the report."""
    out = {}
    for name, e in explainers.items():
        describe = getattr(e, "describe", None)
        if describe is None or name in refused:
            continue
        with eval_mode(model), model_call(n=1):
            out[name] = describe(model, x[:1])
    return out


def explained_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """The model's accuracy on the images a check explains, with a warning when it is near chance: a
    dataset whose class order differs from the model's (alphabetical folders, a missing class) gives
    maps of the wrong class, and every verdict on them is meaningless."""
    logits = inference_logits(model, x)
    k = int(logits.shape[1])
    acc = float((logits.argmax(1).cpu() == y.cpu()).double().mean())
    if k > 1 and acc < 1.5 / k:
        warn(f"the model's accuracy on the {x.shape[0]} explained images is {acc:.1%}, near chance for {k} classes "
             f"({1 / k:.1%}): check that the labels follow the model's class order and that the images are "
             "preprocessed as in training")
    return {"accuracy": acc, "classes": k, "chance": 1.0 / k}


def warn_degenerate(result: CheckResult, init) -> None:
    """Say when maps collapsed to numerical noise (they are left out of verdicts), and what keeps the signal."""
    t = result.table
    if not len(t) or "degenerate_map" not in t:
        return
    bad = t[t["degenerate_map"].astype(bool)].drop_duplicates(["method", "stage", "draw", "image"])
    if not len(bad):
        return
    stages = sorted(set(bad["variant"]))
    hint = (" The small truncated-normal weights (std 0.01, also for BatchNorm and LayerNorm scales) shrink the "
            "signal layer by layer; init='default' (each layer's own reset_parameters) keeps it."
            if str(init) == "truncated_normal" else "")
    warn(f"{len(bad)} maps lost their signal (magnitude below {engine.COLLAPSE_RATIO:g} of the original's) at "
         f"{len(stages)} stage(s), e.g. {stages[:3]}: they are counted and left out of the verdicts.{hint}")


def check_batch(model: nn.Module, x: torch.Tensor, y) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, C, H, W)`` on the model's device and their true labels, validated like ``explain``'s
    targets (integers, one per image, in range); the model's forward pass changes nothing."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_images(x)
    if not any(True for _ in model.parameters()):
        raise ModelError("the model has no parameters: there is nothing to randomize")
    x = x.detach().to(model_device(model))
    k = inference_logits(model, x).shape[1]
    y = validation.class_labels(y, x.shape[0], k, name="labels y", device=x.device, broadcast=False,
                                hint="; y holds the true labels (the class explained is chosen by target=)")
    return x, y


def target_policy(target: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    if target not in TARGETS:
        raise ConfigError(f"unknown target {target!r}: use 'label' (true label, fixed), 'original' (the trained "
                          "model's prediction, fixed) or 'predicted' (each randomized model's own prediction)")
    if target == "label":
        return y, (lambda v: y)
    orig = inference_logits(model, x).argmax(1)
    if target == "original":
        return orig, (lambda v: orig)

    def predicted(variant):
        return inference_logits(variant.model, x).argmax(1)

    return orig, predicted


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


def model_randomization(model: nn.Module, x: torch.Tensor, y, methods, metrics=("spearman_abs", "spearman", "ssim"),
                        mode: str = "cascading", init: str = "truncated_normal", seed: int = 0,
                        target: str = "label", order: str | None = None, blocks=None, normalize: str | None = None,
                        out: str | Path | None = None, resume: bool = True, calibrate: bool = True,
                        show: int = 8, quiet: bool | None = None, bn_stats: str | None = None,
                        smooth_samples: int = 50, smooth_sigma: float = 0.1, map_stats=(),
                        output=None, draws: int = 1, ceiling_model: nn.Module | None = None,
                        executor=None) -> CheckResult:
    """Run the model parameter randomization test and return a :class:`CheckResult`.

    ``mode``: 'cascading' (top layer first, cumulatively down; ``order='bottom_up'`` reverses),
    'independent' (one layer at a time), 'smooth' (sMPRT: explanations averaged over
    ``smooth_samples`` noisy copies, sigma ``smooth_sigma`` x range, bottom-up), 'efficient'
    (eMPRT: original vs fully randomized, metric ``entropy_rise`` = (H(e_rand) - H(e)) / H(e) of
    100-bin histograms, higher = more sensitive) or 'random_logit' (Sixt et al. 2020: the
    explained class vs a random other class of the same model, metric ``ssim_max_sign`` =
    max(SSIM(a, b), SSIM(a, -b))). ``init``: 'truncated_normal' (paper), 'uniform',
    'default', 'permute'. ``target``: 'label', 'original' or 'predicted' (see module docs).
    Each explanation is computed once per (stage, method) and scored by every metric; with
    ``out`` finished stages are stored and a re-run with the same config resumes.
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
    with model_call(output=output):
        return _model_randomization(model, x, y, methods, metrics, mode, init, seed, target, order, blocks,
                                    normalize, out, resume, calibrate, show, quiet, bn_stats, smooth_samples,
                                    smooth_sigma, map_stats, draws, ceiling_model, executor)


def _model_randomization(model, x, y, methods, metrics, mode, init, seed, target, order, blocks, normalize, out,
                         resume, calibrate, show, quiet, bn_stats, smooth_samples, smooth_sigma, map_stats, draws,
                         ceiling_model, executor):
    from sanitas import randomize

    if mode not in RANDOMIZATION_MODES:
        raise ConfigError(f"unknown mode {mode!r}: use one of {RANDOMIZATION_MODES}")
    seed = validation.seed(seed)
    show = validation.count(show, "show", minimum=0)
    if mode == "smooth":
        smooth_samples = validation.count(smooth_samples, "smooth_samples")
        smooth_sigma = validation.real(smooth_sigma, "smooth_sigma", minimum=0)
    x, y = check_batch(model, x, y)
    explainers = resolve_methods(methods)
    sims = resolve_metrics(metrics)
    check_metrics_for_inputs(sims, x)
    map_stats = [map_stats] if isinstance(map_stats, str) else list(map_stats)
    unknown = [m for m in map_stats if m not in MAP_STATS]
    if unknown:
        raise ConfigError(f"unknown map statistic(s) {unknown}: use any of {sorted(MAP_STATS)}")
    draws = validation.count(draws, "draws")
    ceilings = [] if ceiling_model is None else list(ceiling_model) if isinstance(ceiling_model, (list, tuple)) \
        else [ceiling_model]
    for c in ceilings:
        if not isinstance(c, nn.Module):
            raise InputError(f"ceiling_model must be a torch.nn.Module (the architecture trained with another seed) "
                             f"or a list of them, got {type(c).__name__}")
    t0 = time.perf_counter()
    accuracy = explained_accuracy(model, x, y)
    kw: dict[str, Any] = {"init": init, "seed": seed, "blocks": blocks}
    if bn_stats is not None:
        kw["bn_stats"] = bn_stats
    extra = None
    layers = randomize.discover_layers(model, x[:1])
    groups = randomize.group_layers(layers, blocks, model)
    total = len(groups) + 1
    ref_target, target_for = target_policy(target, model, x, y)
    # the stages are channels_last copies on CPU (prefer_fast_layout); explain the unchanged model in
    # the same layout so that all stages run the same kernels. A copy: the user's model is not touched.
    reference = model
    if layout_would_change(model):
        reference = prefer_fast_layout(randomize.variants._deepcopy(model), x[:1])
        if layout_would_change(reference):  # the fast layout would change what the model computes
            reference = model
    if mode in ("cascading", "independent", "smooth"):
        kw["draws"] = draws
        total = 1 + len(groups) * draws
    elif draws > 1:
        raise ConfigError(f"draws applies to the cascading, independent and smooth modes, not to {mode!r}")
    total += len(ceilings)
    if mode in ("cascading", "smooth"):
        # sMPRT (Hedstrom et al. 2023): every explanation averaged over noisy copies, bottom-up
        kw["order"] = order or ("bottom_up" if mode == "smooth" else "top_down")
        stages_iter = randomize.cascading(model, x[:1], **kw)
        if mode == "smooth":
            explainers = {f"{k}": get_explainer("smoothgrad", base=e, samples=smooth_samples, sigma=smooth_sigma,
                                                seed=seed) for k, e in explainers.items()}
    elif mode == "independent":
        stages_iter = randomize.independent(model, x[:1], **kw)
    elif mode == "efficient":
        # eMPRT (Hedstrom et al. 2023): original vs fully randomized; score = relative entropy rise
        full = randomize.randomize(model, x[:1], None, init=init, seed=seed,
                                   **({"bn_stats": bn_stats} if bn_stats else {}))
        stages_iter = [type("S", (), {"name": "original", "index": 0, "randomized_layers": [], "model": reference})(),
                       type("S", (), {"name": "fully_randomized", "index": 1,
                                      "randomized_layers": [l.name for l in layers], "model": full})()]
        total = 2

        def entropy_rise(variant, method, ref, maps):
            h0, h1 = histogram_entropy(ref), histogram_entropy(maps)
            return {"entropy_rise": (h1 - h0) / torch.where(h0 > 0, h0, torch.ones_like(h0))}

        extra = entropy_rise
    else:  # random_logit (Sixt et al. 2020): same model, a random other class
        g = torch.Generator().manual_seed(seed)
        from sanitas.explain._core import num_classes

        k = num_classes(model, x)
        if k < 2:
            raise ModelError(f"random_logit compares the explained class with another class; the model has {k} "
                             "output, so there is none. Use another mode")
        other = (ref_target.cpu() + torch.randint(1, k, ref_target.shape, generator=g)) % k
        other = other.to(x.device)
        stages_iter = [type("S", (), {"name": "original", "index": 0, "randomized_layers": [], "model": reference})(),
                       type("S", (), {"name": "random_logit", "index": 1, "randomized_layers": [], "model": reference})()]
        total = 2
        sims = {**sims, "ssim_max_sign": _ssim_sign_invariant()}
        base_for = target_for
        target_for = lambda v: other if v.index == 1 else base_for(v)  # noqa: E731
    if map_stats:
        inner = extra

        def extra(variant, method, ref, maps):
            values = inner(variant, method, ref, maps) if inner is not None else {}
            values.update({name: MAP_STATS[name](x, maps).cpu() for name in map_stats})
            return values
    config = {"check": "model_randomization", "mode": mode, "init": init, "seed": seed, "target": target,
              "order": kw.get("order"), "blocks": blocks, "normalize": normalize, "bn_stats": bn_stats,
              "methods": {k: repr(e) for k, e in explainers.items()}, "metrics": list(sims), "smooth": [smooth_samples, smooth_sigma],
              "map_stats": map_stats,
              "n_images": int(x.shape[0]), "draws": draws,
              "ceiling": [model_fingerprint(c) for c in ceilings] or None,
              "images_digest": tensor_digest(x), "model": model_fingerprint(model)}
    stage_names: list[str] = []

    def variants():
        for st in stages_iter:
            draw = getattr(st, "draw", 0)
            if draw == 0:
                stage_names.append(st.name)
            # nothing randomized yet: explain the reference, so the engine reuses its maps
            net = reference if not st.randomized_layers and mode != "random_logit" else st.model
            yield engine.Variant(st.name, st.index, net, {"mode": mode, "randomized": ",".join(st.randomized_layers)},
                                 draw=draw)
        for i, c in enumerate(ceilings, 1):  # rows carry model_seed, a factor of the verdicts' bootstrap
            yield engine.Variant("independently trained", i, c, {"mode": mode, "randomized": "", "model_seed": i},
                                 role="ceiling")

    cal, cal_seconds = None, 0.0
    if calibrate:  # first: a metric it cannot calibrate fails before any cell is computed
        from sanitas.similarity.calibration import calibrate as run_cal

        t = time.perf_counter()
        cal = run_cal(list(sims.values()), x=engine.as_image_batch(x), seed=seed, classes=accuracy["classes"]
                      if accuracy["classes"] > 1 else None)
        cal_seconds = time.perf_counter() - t
    refused: dict[str, str] = {}
    references: list = []
    with executor_scope(executor) as ex, engine.CellStore(out, config, resume=resume) as store:
        table, shown, timings = engine.run(reference, variants(), x, explainers, sims, target_for, store,
                                           ref_target, normalize=normalize, show=show, quiet=quiet, total=total,
                                           extra_scores=extra, refused=refused, references=references,
                                           draws=draws, executor=ex)
        refs = pd.concat(references, ignore_index=True) if references else None
        if calibrate:
            timings["calibration"] = cal_seconds
        timings["total"] = time.perf_counter() - t0
        meta = {"config": config, "versions": engine.versions(), "timings": timings, "seed": seed,
                "stages": stage_names, "layers": [l.name for l in layers], "refused": refused,
                "layer_types": {l.name: l.type for l in layers},
                "model": {**model_facts(model, x, y), "classes": accuracy["classes"], "chance": accuracy["chance"]},
                "resolved": describe_methods(explainers, reference, x, refused), "accuracy": accuracy["accuracy"]}
        res = CheckResult("model_randomization", table, cal, meta, shown, x[:show].cpu(), stage_names,
                          Path(out) if out else None, references=refs)
        warn_degenerate(res, init)
        if out:
            engine.write_outputs(Path(out), table, meta, cal, refs, images=x[:show])
    return res
