"""What every check shares before its cells run: its methods and metrics resolved, its images and labels
validated, the class each model explains, and what a result says about the model and its maps."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sanitas import engine
from sanitas.checks.result import CheckResult
from sanitas.errors import ConfigError, InputError, ModelError
from sanitas.explain import get_explainer
from sanitas.explain._core import check_images, eval_mode, model_device
from sanitas.explain.forward import model_call
from sanitas.utils import validation
from sanitas.utils.forward import inference_logits
from sanitas.utils.progress import warn

#: what a model explains: the true labels ``y`` (with no ``y``: the trained model's prediction), the trained
#: model's prediction, or each compared model's own prediction
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


def check_batch(model: nn.Module, x: torch.Tensor, y=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, C, H, W)`` on the model's device and their true labels, validated like ``explain``'s
    targets (integers, one per image, in range); ``y=None``: the model's predictions stand for the labels.
    The model's forward pass changes nothing."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_images(x)
    if not any(True for _ in model.parameters()):
        raise ModelError("the model has no parameters: there is nothing to randomize")
    x = x.detach().to(model_device(model))
    logits = inference_logits(model, x)
    if y is None:  # no labels: the model's own prediction stands for them (accuracy is then not measured)
        return x, logits.argmax(1)
    k = logits.shape[1]
    y = validation.class_labels(y, x.shape[0], k, name="labels y", device=x.device, broadcast=False,
                                hint="; y holds the true labels (the class explained is chosen by target=)")
    return x, y


def target_policy(target: str | None, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    target = "label" if target is None else target
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


