"""Model parameter randomization test (seed 000, section 3): cascading and independent.

>>> res = sanitas.model_randomization(model, x, y, ["gradient", "guided_backprop"],
...                                   ["spearman_abs", "ssim"], mode="cascading")
>>> res.pivot("spearman_abs")
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sanitas import engine
from sanitas.checks.result import CheckResult
from sanitas.errors import ConfigError, InputError
from sanitas.explain import get_explainer
from sanitas.explain._core import check_images, eval_mode, logits_of, model_device

MODES = ("cascading", "independent")
TARGETS = ("label", "original", "predicted")


def resolve_methods(methods) -> dict[str, Any]:
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


def check_batch(model: nn.Module, x: torch.Tensor, y) -> tuple[torch.Tensor, torch.Tensor]:
    check_images(x)
    if x.dim() != 4:
        raise InputError(f"images must be (N, C, H, W); got shape {tuple(x.shape)}")
    if not any(True for _ in model.parameters()):
        from sanitas.errors import ModelError

        raise ModelError("the model has no parameters: there is nothing to randomize")
    x = x.detach().to(model_device(model))
    with eval_mode(model), torch.no_grad():
        logits = logits_of(model, x)
    y = torch.as_tensor(y, device=x.device).long().reshape(-1)
    if y.numel() != x.shape[0]:
        raise InputError(f"{y.numel()} labels for {x.shape[0]} images")
    if (y < 0).any() or (y >= logits.shape[1]).any():
        raise InputError(f"labels out of range: the model has {logits.shape[1]} classes")
    return x, y


def target_policy(target: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    if target not in TARGETS:
        raise ConfigError(f"unknown target {target!r}: use 'label' (true label, fixed), 'original' (the trained "
                          "model's prediction, fixed) or 'predicted' (each randomized model's own prediction)")
    if target == "label":
        return y, (lambda v: y)
    with eval_mode(model), torch.no_grad():
        orig = logits_of(model, x).argmax(1)
    if target == "original":
        return orig, (lambda v: orig)

    def predicted(variant):
        with eval_mode(variant.model), torch.no_grad():
            return logits_of(variant.model, x).argmax(1)

    return orig, predicted


def model_randomization(model: nn.Module, x: torch.Tensor, y, methods, metrics=("spearman_abs", "spearman", "ssim"),
                        mode: str = "cascading", init: str = "truncated_normal", seed: int = 0,
                        target: str = "label", order: str | None = None, blocks=None, normalize: str | None = None,
                        out: str | Path | None = None, resume: bool = True, calibrate: bool = True,
                        show: int = 8, quiet: bool | None = None, bn_stats: str | None = None) -> CheckResult:
    """Run the model parameter randomization test and return a :class:`CheckResult`.

    ``mode``: 'cascading' (top layer first, cumulatively down; ``order='bottom_up'`` reverses)
    or 'independent' (one layer at a time). ``init``: 'truncated_normal' (paper), 'uniform',
    'default', 'permute'. ``target``: 'label', 'original' or 'predicted' (see module docs).
    Each explanation is computed once per (stage, method) and scored by every metric; with
    ``out`` finished stages are stored and a re-run with the same config resumes.
    """
    from sanitas import randomize

    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}: use one of {MODES}")
    x, y = check_batch(model, x, y)
    explainers = resolve_methods(methods)
    sims = resolve_metrics(metrics)
    t0 = time.perf_counter()
    kw: dict[str, Any] = {"init": init, "seed": seed, "blocks": blocks}
    if bn_stats is not None:
        kw["bn_stats"] = bn_stats
    if mode == "cascading":
        kw["order"] = order or "top_down"
        stages_iter = randomize.cascading(model, x[:1], **kw)
    else:
        stages_iter = randomize.independent(model, x[:1], **kw)
    layers = randomize.discover_layers(model, x[:1])
    groups = randomize.group_layers(layers, blocks)
    total = len(groups) + 1
    ref_target, target_for = target_policy(target, model, x, y)
    config = {"check": "model_randomization", "mode": mode, "init": init, "seed": seed, "target": target,
              "order": kw.get("order"), "blocks": blocks, "normalize": normalize, "bn_stats": bn_stats,
              "methods": list(explainers), "metrics": list(sims), "n_images": int(x.shape[0]),
              "images_digest": __import__("sanitas.utils.hashing", fromlist=["x"]).tensor_digest(x),
              "model": __import__("sanitas.utils.hashing", fromlist=["x"]).model_fingerprint(model)}
    store = engine.CellStore(out, config, resume=resume)
    stage_names: list[str] = []

    def variants():
        for st in stages_iter:
            stage_names.append(st.name)
            yield engine.Variant(st.name, st.index, st.model, {"mode": mode,
                                                                "randomized": ",".join(st.randomized_layers)})

    table, shown, timings = engine.run(model, variants(), x, explainers, sims, target_for, store, ref_target,
                                       normalize=normalize, show=show, quiet=quiet, total=total)
    cal = None
    if calibrate:
        from sanitas.similarity.calibration import calibrate as run_cal

        t = time.perf_counter()
        cal = run_cal(list(sims), x=x, seed=seed)
        timings["calibration"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    meta = {"config": config, "versions": engine.versions(), "timings": timings, "seed": seed,
            "stages": stage_names, "layers": [l.name for l in layers]}
    res = CheckResult("model_randomization", table, cal, meta, shown, x[:show].cpu(), stage_names,
                      Path(out) if out else None)
    if out:
        engine.write_outputs(Path(out), table, meta)
        if cal is not None:
            cal.to_csv(Path(out) / "calibration.csv", index=False)
    return res
