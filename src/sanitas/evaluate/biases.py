"""The role of bias parameters (seed 002, sections 2.3 and 3, supplement B and C).

* :func:`bias_decomposition` -- per image and layer the gross sums A^{h,l}, A^{b,l} (Eq. 14),
  the bias carried by the layers above, and the residual of Eq. 13,
  ``|f_c - (A^{h,l} + sum_{l' > l} A^{b,l'})|``.
* :func:`zero_bias` -- a copy of a model with every bias and every BatchNorm shift set to zero;
  :func:`zero_bias_accuracy`, and :func:`bias_regression`, the fit f^{b=0} = alpha f + beta
  (supplement B.3).
* :func:`distill_zero_bias` -- supplement C: decay the biases to zero while a copy of a trained
  reference model is fine-tuned to match the original's outputs softened at temperature T;
  the result is cached like a trained model.
* :func:`bias_analysis` -- all of the above for several models, written to a results folder.

Which layers Eq. 13 holds for
-----------------------------
The decomposition is exact for a piecewise-linear network (ReLU, max-pooling, average pooling,
flatten, dropout in eval mode) at every layer ``l`` that *cuts the graph*: every path from the
input to the output passes through it. In a plain stack (cnn, mlp, vgg-small, alexnet1) every
Conv/Linear/BatchNorm layer cuts. In a residual network a layer inside a block with a skip
connection does not (the skip path bypasses it), so sum_ij a^{h,l} alone does not account for
the logit. :func:`cutting_layers` finds the cutting layers structurally: it cuts the autograd
graph at the layer (its output detached) and checks whether the logits still depend on the
input. ``bias_decomposition`` reports every layer with a ``cuts`` flag; ``residual`` is given
for cutting layers and NaN for the others (for resnet-small: the input, stem.conv, stem.bn
and the output layer). Biases of modules other than Conv/Linear/BatchNorm are not seen and
would show up as a residual.
"""

from __future__ import annotations

import copy
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from sanitas.errors import ConfigError, InputError, ModelError
from sanitas.explain._core import check_images, eval_mode, logits_of, model_device
from sanitas.explain.capture import capture
from sanitas.explain.layers import PARAM_KINDS, layer_bias, layer_decomposition
from sanitas.utils.progress import log, progress

_BN = nn.modules.batchnorm._BatchNorm
DISTILL_VERSION = 1
DECAYS = ("linear", "exponential")


# ---------------------------------------------------------------------------------------------
# Eq. 13 / 14: per-layer decomposition
# ---------------------------------------------------------------------------------------------

def cutting_layers(model: nn.Module, x: torch.Tensor, layers: list[str] | None = None) -> dict[str, bool]:
    """For each Conv/Linear/BatchNorm layer (or the named ``layers``), whether it cuts the graph.

    A layer cuts when the logits no longer depend on the input once the layer's output is
    detached from the autograd graph (structural, so exact; one forward pass per layer on one image).
    """
    check_images(x)
    x1 = x[:1].detach().to(model_device(model))
    with eval_mode(model):
        with torch.no_grad():
            _, seen = capture(model, x1, layers, PARAM_KINDS)
        out: dict[str, bool] = {}
        for name, module, _ in seen:
            handle = module.register_forward_hook(lambda mod, inp, o: o.detach() if isinstance(o, torch.Tensor) else o)
            try:
                xg = x1.clone().requires_grad_(True)
                with torch.enable_grad():
                    y = logits_of(model, xg)
                    if not y.requires_grad:
                        out[name] = True
                    else:
                        g = torch.autograd.grad(y.sum(), xg, allow_unused=True)[0]
                        out[name] = g is None
            finally:
                handle.remove()
    return out


def bias_decomposition(model: nn.Module, x: torch.Tensor, target="predicted", batch_size: int = 256) -> pd.DataFrame:
    """Gross sums of seed 002's Eq. 14 and the check of Eq. 13, one row per image x layer.

    Columns: ``image`` (position in ``x``), ``stage`` (0 = the input, then Conv/Linear/BatchNorm
    layers in forward order), ``layer``, ``kind`` (module class), ``cuts`` (see
    :func:`cutting_layers`), ``target`` (class explained), ``logit`` (f_c), ``A_h`` (sum of
    the activity attributions h df_c/dh), ``A_b`` (sum of the layer's bias attributions
    b df_c/dh, BatchNorm's implicit bias included), ``bias_above`` (sum of A_b over the layers
    after this one), ``residual`` (``|f_c - A_h - bias_above|`` for cutting layers, NaN
    otherwise), ``bias_share`` (``|A_b| / |f_c|``) and ``bias_above_share``
    (``bias_above / f_c``, the fraction of the logit carried by the biases above the layer;
    at the input, by all biases). :func:`bias_summary` averages it per layer.
    """
    check_images(x)
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    n = x.shape[0]
    if isinstance(target, str) or target is None:
        if target not in (None, "predicted"):
            raise InputError(f"bias_decomposition explains one class per image: target must be class indices or "
                             f"'predicted', got {target!r}")
        cls = _logits(model, x, batch_size).argmax(1)
    else:
        from sanitas.explain._core import resolve_target

        cls = resolve_target(target, None, n, _logits(model, x[:1]).shape[1]).cpu()
    parts = [layer_decomposition(model, x[i:i + batch_size], cls[i:i + batch_size]) for i in range(0, n, batch_size)]
    layers = parts[0]["layers"]
    A_h = torch.cat([d["A_h"] for d in parts]).double().cpu()
    A_b = torch.cat([d["A_b"] for d in parts]).double().cpu()
    f = torch.cat([d["logit"] for d in parts]).double().cpu()
    cuts = cutting_layers(model, x)
    named = dict(model.named_modules())
    L = len(layers)
    above = torch.flip(torch.cumsum(torch.flip(A_b, [1]), 1), [1]) - A_b  # sum over l' > l
    resid = (f[:, None] - A_h - above).abs()
    is_cut = torch.tensor([True] + [cuts.get(name, False) for name in layers[1:]])
    resid = torch.where(is_cut[None, :], resid, torch.full_like(resid, float("nan")))
    absf = f.abs()[:, None]
    return pd.DataFrame({
        "image": np.repeat(np.arange(n), L),
        "stage": np.tile(np.arange(L), n),
        "layer": np.tile(np.array(layers, dtype=object), n),
        "kind": np.tile(np.array(["input"] + [type(named[name]).__name__ for name in layers[1:]], dtype=object), n),
        "cuts": np.tile(is_cut.numpy(), n),
        "target": np.repeat(cls.numpy(), L),
        "logit": np.repeat(f.numpy(), L),
        "A_h": A_h.reshape(-1).numpy(),
        "A_b": A_b.reshape(-1).numpy(),
        "bias_above": above.reshape(-1).numpy(),
        "residual": resid.reshape(-1).numpy(),
        "bias_share": (A_b.abs() / absf).reshape(-1).numpy(),
        "bias_above_share": (above / f[:, None]).reshape(-1).numpy(),
    })


def bias_summary(decomposition: pd.DataFrame) -> pd.DataFrame:
    """Per layer: mean A_h and A_b, mean and median |A_b|/|f|, median share of the logit carried by
    the biases above the layer, and the largest Eq. 13 residual (NaN for layers that do not cut)."""
    g = decomposition.groupby(["stage", "layer", "kind", "cuts"], sort=True)
    out = g.agg(A_h_mean=("A_h", "mean"), A_b_mean=("A_b", "mean"), logit_mean=("logit", "mean"),
                bias_share_mean=("bias_share", "mean"), bias_share_median=("bias_share", "median"),
                bias_above_share_median=("bias_above_share", "median"),
                residual_max=("residual", lambda r: float(r.max()) if r.notna().any() else float("nan")),
                n=("image", "count")).reset_index()
    return out


# ---------------------------------------------------------------------------------------------
# Zero-bias networks and the regression f^{b=0} = alpha f + beta
# ---------------------------------------------------------------------------------------------

def _bias_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] == "bias"]


def _batchnorms(model: nn.Module) -> list[tuple[str, _BN]]:
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, _BN)]
    for n, m in bns:
        if m.running_mean is None:
            raise ModelError(f"BatchNorm layer {n!r} keeps no running statistics (track_running_stats=False), so "
                             "its shift depends on the batch and cannot be set to zero; use a model whose "
                             "BatchNorm layers track running statistics")
    return bns


def zero_bias(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every bias and every BatchNorm shift set to zero.

    Zeroed: every parameter named ``bias`` (Conv, Linear, BatchNorm's beta, ...) and every
    BatchNorm ``running_mean``, so that BatchNorm's implicit bias
    ``beta - gamma * mean / sqrt(var + eps)`` is exactly 0 (gamma and var are kept, as in seed
    002's supplement C, where the mean and beta are decayed). In eval mode a BatchNorm layer then
    only rescales. ``model`` itself is not changed.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"zero_bias needs a torch.nn.Module, got {type(model).__name__}")
    _batchnorms(model)
    net = copy.deepcopy(model)
    with torch.no_grad():
        for _, p in _bias_params(net):
            p.zero_()
        for _, m in _batchnorms(net):
            m.running_mean.zero_()
    return net


#: Eq. 13 holds when every residual is below this fraction of the largest |logit| (float32 sums: ~1e-6)
RESIDUAL_TOLERANCE = 1e-3


def offset_without_biases(model: nn.Module, x: torch.Tensor) -> float:
    """The largest |logit| of the zero-bias model (:func:`zero_bias`) on an all-zero input shaped like ``x``.

    A ReLU network whose constants all lie in bias parameters and BatchNorm shifts gives exactly 0. Anything
    else is a constant the decomposition of Eq. 13 does not count as a bias: input normalization
    ``(x - mean) / std`` in ``forward`` (its shift ``-mean / std`` acts as a bias at the input), a constant
    buffer added somewhere, an activation that is not 0 at 0.
    """
    from sanitas.utils.forward import inference_logits

    return float(inference_logits(zero_bias(model), torch.zeros_like(x[:1])).abs().max())


def decomposition_note(max_residual: float, max_logit: float, offset: float) -> str:
    """Why Eq. 13 does not hold for a model ('' when it holds to :data:`RESIDUAL_TOLERANCE`)."""
    if not max_residual > RESIDUAL_TOLERANCE * max(1.0, max_logit):  # NaN (no cutting layer): nothing to say
        return ""
    text = (f"Eq. 13 does not hold for this model: the largest residual {max_residual:.2g} is "
            f"{max_residual / max(max_logit, 1e-12):.0%} of the largest logit, so the bias shares do not decompose "
            "its logits.")
    if offset > RESIDUAL_TOLERANCE * max(1.0, max_logit):
        text += (f" With every bias set to zero the model still outputs {offset:.3g} on an all-zero image: its "
                 "forward adds a constant that is not a bias parameter, e.g. input normalization (x - mean) / std, "
                 "whose shift -mean / std is a bias the decomposition must include (move the normalization into "
                 "the data, or into the first layer's weights and bias).")
    else:
        text += " The model is not piecewise linear in its biases (an activation or operation without a rule)."
    return text


def max_abs_bias(model: nn.Module) -> float:
    """The largest |bias| over all Conv/Linear/BatchNorm layers (BatchNorm's implicit bias) and
    any other parameter named ``bias``; 0.0 for a zero-bias network."""
    vals = [0.0]
    for m in model.modules():
        if isinstance(m, PARAM_KINDS):
            b = layer_bias(m)
            if b is not None and b.numel():
                vals.append(float(b.abs().max()))
    vals += [float(p.detach().abs().max()) for _, p in _bias_params(model) if p.numel()]
    return max(vals)


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    check_images(x)
    dev = model_device(model)
    with eval_mode(model):
        return torch.cat([logits_of(model, x[i:i + batch_size].to(dev)).cpu() for i in range(0, len(x), batch_size)])


def zero_bias_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of :func:`zero_bias` (``model``) on ``(x, y)``."""
    y = torch.as_tensor(y)
    if y.shape[:1] != x.shape[:1]:
        raise InputError(f"{len(y)} labels for {len(x)} images; give one label per image")
    return _accuracy(zero_bias(model), x, y, batch_size)


def _fit(f: np.ndarray, f0: np.ndarray) -> tuple[float, float, float]:
    """Least squares f0 = alpha f + beta; returns alpha, beta, R^2."""
    f, f0 = f.reshape(-1).astype(np.float64), f0.reshape(-1).astype(np.float64)
    A = np.stack([f, np.ones_like(f)], 1)
    (alpha, beta), *_ = np.linalg.lstsq(A, f0, rcond=None)
    ss_res = float(((f0 - alpha * f - beta) ** 2).sum())
    ss_tot = float(((f0 - f0.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else float("nan"))
    return float(alpha), float(beta), float(r2)


@dataclass
class BiasRegression:
    """f^{b=0}_c(x) = alpha f_c(x) + beta fitted over all images and classes (supplement B.3).

    ``per_class``: one fit per class over images; ``per_image``: one fit per image over classes
    (seed 002's supplementary Fig. 5 fits per image). ``logits`` and ``zero_bias_logits`` are (N, K).
    """

    alpha: float
    beta: float
    r2: float
    correlation: float
    per_class: pd.DataFrame
    per_image: pd.DataFrame
    logits: np.ndarray = field(repr=False)
    zero_bias_logits: np.ndarray = field(repr=False)

    def as_dict(self) -> dict[str, float]:
        pi = self.per_image
        return {"alpha": self.alpha, "beta": self.beta, "r2": self.r2, "correlation": self.correlation,
                "alpha_per_image_median": float(pi["alpha"].median()),
                "beta_per_image_median": float(pi["beta"].median()),
                "r2_per_image_median": float(pi["r2"].median())}


def bias_regression(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> BiasRegression:
    """Regress the zero-bias network's logits on the original's: f^{b=0} = alpha f + beta."""
    f = _logits(model, x, batch_size).double().numpy()
    f0 = _logits(zero_bias(model), x, batch_size).double().numpy()
    alpha, beta, r2 = _fit(f, f0)
    corr = float(np.corrcoef(f.reshape(-1), f0.reshape(-1))[0, 1]) if f.size > 1 and f.std() > 0 and f0.std() > 0 \
        else float("nan")
    per_class = pd.DataFrame([dict(zip(("alpha", "beta", "r2"), _fit(f[:, c], f0[:, c])), **{"class": c})
                              for c in range(f.shape[1])])[["class", "alpha", "beta", "r2"]]
    # per-image fits over classes, vectorised
    fm, f0m = f.mean(1, keepdims=True), f0.mean(1, keepdims=True)
    cov = ((f - fm) * (f0 - f0m)).sum(1)
    var = ((f - fm) ** 2).sum(1)
    a = np.divide(cov, var, out=np.full_like(cov, np.nan), where=var > 0)
    b = f0m[:, 0] - a * fm[:, 0]
    ss_tot = ((f0 - f0m) ** 2).sum(1)
    ss_res = ((f0 - a[:, None] * f - b[:, None]) ** 2).sum(1)
    r2i = np.divide(ss_res, ss_tot, out=np.full_like(ss_res, np.nan), where=ss_tot > 0)
    per_image = pd.DataFrame({"image": np.arange(len(f)), "alpha": a, "beta": b, "r2": 1 - r2i})
    return BiasRegression(alpha, beta, r2, corr, per_class, per_image, f, f0)


# ---------------------------------------------------------------------------------------------
# Supplement C: decaying the biases with distillation fine-tuning
# ---------------------------------------------------------------------------------------------

def decay_factor(step: int, decay_steps: int, stages: int, decay: str = "linear") -> float:
    """The multiplier applied to the original biases at ``step`` (0 from ``decay_steps`` on).

    The biases are re-scaled in ``stages`` equal stages (seed 002 re-scales every 200 steps):
    stage k = 1..stages multiplies them by ``1 - k / stages`` (linear; the last stage is already
    at zero) or by ``0.5 ** k`` (exponential); after the decay they are held at exactly zero.
    """
    if step >= decay_steps:
        return 0.0
    k = min(stages, int(step * stages // decay_steps) + 1)
    return 1.0 - k / stages if decay == "linear" else 0.5 ** k


def distill_config(model: str, dataset: str, teacher, *, T: float, steps: int, stages: int, final_fraction: float,
                   decay: str, lr: float, batch_size: int, train_size: int | None, seed: int,
                   label_weight: float = 0.0) -> dict[str, Any]:
    if not (T > 0 and math.isfinite(T)):
        raise ConfigError(f"temperature T must be a positive number, got {T!r}")
    if decay not in DECAYS:
        raise ConfigError(f"decay must be one of {DECAYS}, got {decay!r}")
    for key, v in (("steps", steps), ("stages", stages), ("batch_size", batch_size)):
        if int(v) <= 0:
            raise ConfigError(f"{key} must be positive, got {v}")
    if not 0 <= final_fraction < 1:
        raise ConfigError(f"final_fraction must be in [0, 1), got {final_fraction}")
    if not lr > 0:
        raise ConfigError(f"lr must be positive, got {lr}")
    if not (label_weight >= 0 and math.isfinite(label_weight)):
        raise ConfigError(f"label_weight must be >= 0, got {label_weight}")
    return {
        "kind": "zero-bias-distillation", "model": teacher.config["model"], "dataset": str(dataset),
        "dataset_key": teacher.config["dataset_key"], "labels": "distilled", "seed": int(seed),
        "model_kwargs": dict(teacher.config.get("model_kwargs", {})),
        "teacher_key": teacher.path.stem, "teacher_sha256": _teacher_sha(teacher),
        "T": float(T), "steps": int(steps), "stages": int(stages), "final_fraction": float(final_fraction),
        "decay": decay, "lr": float(lr), "batch_size": int(batch_size),
        "train_size": None if train_size is None else int(train_size), "optimizer": "adam",
        "lr_schedule": "constant while decaying, cosine to 0 once the biases are zero",
        "loss": "kl(softmax(t/T) || softmax(s/T)) * T^2 + label_weight * cross_entropy(s, y)",
        "label_weight": float(label_weight), "distill_version": DISTILL_VERSION,
    }


def _teacher_sha(teacher) -> str:
    from sanitas.utils.io import read_json, sha256_file

    try:
        return read_json(teacher.path.with_suffix(".json"))["checkpoint_sha256"]
    except (OSError, ValueError, KeyError):
        return sha256_file(teacher.path)


def _distill_paths(cfg: dict) -> tuple[Path, Path, str]:
    from sanitas.utils.hashing import config_hash
    from sanitas.utils.paths import models_dir

    key = config_hash(cfg)
    stem = f"{cfg['model']}-{cfg['dataset_key'][:40]}-zerobias-T{cfg['T']:g}-s{cfg['seed']}-{key}"
    return models_dir() / f"{stem}.pt", models_dir() / f"{stem}.json", key


def distill_zero_bias(model: str, dataset: str = "fashion-mnist", T: float = 100.0, *, steps: int = 1200,
                      stages: int = 10, final_fraction: float = 0.5, decay: str = "linear", lr: float = 5e-4,
                      batch_size: int = 64, train_size: int | None = None, seed: int = 0, label_weight: float = 0.5,
                      teacher_kwargs: dict | None = None, device: str | torch.device = "auto", cache: bool = True,
                      force: bool = False, quiet: bool | None = None):
    """A zero-bias version of a trained reference model, by bias decay + distillation (supplement C).

    The teacher is ``train(model, dataset, **teacher_kwargs)`` (trained or loaded from the
    cache). A copy (the student) is fine-tuned with Adam on the training images to match the
    teacher's outputs softened at temperature ``T`` (Hinton et al.: KL divergence between
    softmax(teacher / T) and softmax(student / T), times T^2; seed 002 uses T = 100). By default no
    labels are used; ``label_weight`` > 0 adds that multiple of the cross-entropy with the true
    training labels (Hinton et al.'s second objective). Meanwhile the
    biases (every ``bias`` parameter, and BatchNorm's running mean and beta, whose combination
    is BatchNorm's implicit bias) are not trained but re-scaled from their original values:
    during the first ``(1 - final_fraction) * steps`` steps in ``stages`` equal stages (see
    :func:`decay_factor`), then held at exactly zero for the rest, so the weights learn to make
    up for them. Adam's learning rate is constant during the decay and follows a cosine to zero
    once the biases are zero. BatchNorm's gamma and running variance stay fixed and the student runs in eval
    mode (no dropout, frozen statistics), as in the paper, which keeps gamma and var constant.

    Defaults (1200 steps of 64 images, 1.3 epochs of Fashion-MNIST; lr 5e-4; half the steps
    decaying in 10 linear stages, half at zero; ``label_weight`` 0.5) were chosen on vgg-small /
    Fashion-MNIST (teacher 90.4 %, biases zeroed without fine-tuning 81.3 %): with them the
    zero-bias vgg-small reaches 89.6 %; pure distillation (``label_weight=0``) plateaued at
    89.2-89.4 % over 1200-1800 steps and learning rates 3e-4 to 1e-3, i.e. 1.0-1.2 points below
    the teacher.

    Returns a :class:`sanitas.models.TrainedModel` whose every bias is exactly zero; metrics
    hold the teacher's, the brute-force zero-bias and the distilled test accuracy, the agreement
    with the teacher's predictions and the fine-tuning time. Cached like trained models
    (key: this config, which includes the teacher checkpoint's SHA-256); a corrupt checkpoint is
    reported and recomputed.
    """
    import sanitas
    from sanitas.data import load_dataset
    from sanitas.models.train import TrainedModel, _try_load, train
    from sanitas.utils.device import resolve_device
    from sanitas.utils.io import atomic_torch_save, atomic_write_json
    from sanitas.utils.seed import isolated_rng, make_generator

    if not isinstance(model, str):
        raise ConfigError(f"distill_zero_bias takes a reference model name (see `sanitas models`), got "
                          f"{type(model).__name__}")
    teacher = train(model, dataset, quiet=quiet, **(teacher_kwargs or {}))
    cfg = distill_config(model, dataset, teacher, T=T, steps=steps, stages=stages, final_fraction=final_fraction,
                         decay=decay, lr=lr, batch_size=batch_size, train_size=train_size, seed=seed,
                         label_weight=label_weight)
    cfg["teacher_config"] = {k: v for k, v in teacher.config.items()}
    train_ds = load_dataset(dataset, "train")
    test_ds = load_dataset(dataset, "test")
    pt, meta_path, key = _distill_paths(cfg)
    if cache and not force:
        hit = _try_load(cfg, pt, meta_path, train_ds.input_shape, train_ds.num_classes)
        if hit is not None:
            return hit

    dev = resolve_device(device)
    if train_size is not None:
        train_ds = train_ds.sample(train_size, seed=seed)
    x = train_ds.x
    t_net = copy.deepcopy(teacher.model).to(dev).eval()
    for p in t_net.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher.model).to(dev).eval()
    bias_ids = {id(p) for _, p in _bias_params(student)}
    originals = [(p, p.detach().clone()) for _, p in _bias_params(student)]
    originals += [(m.running_mean, m.running_mean.detach().clone()) for _, m in _batchnorms(student)]
    bn_weights = {id(m.weight) for _, m in _batchnorms(student) if m.weight is not None}
    trainable = []
    for p in student.parameters():
        frozen = id(p) in bias_ids or id(p) in bn_weights
        p.requires_grad_(not frozen)
        if not frozen:
            trainable.append(p)
    if not trainable:
        raise ModelError(f"{model} has no weights to fine-tune besides its biases")
    opt = torch.optim.Adam(trainable, lr=lr)
    decay_steps = max(1, int(round(steps * (1 - final_fraction))))
    final = max(1, steps - decay_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 1.0 if s < decay_steps else 0.5 * (1 + math.cos(math.pi * min(s - decay_steps, final) / final)))
    g = make_generator(seed)
    n = len(x)
    history = []
    start = time.perf_counter()
    factor = None
    loss_sum, loss_n = 0.0, 0
    tail, tail_from = [], steps - max(1, steps // 10)
    with isolated_rng(seed):
        order = torch.randperm(n, generator=g)
        pos = 0
        for step in progress(range(steps), desc=f"{model} zero-bias distillation", quiet=quiet):
            fct = decay_factor(step, decay_steps, stages, decay)
            if fct != factor:
                if factor is not None:
                    history.append({"factor": factor, "until_step": step, "loss": loss_sum / max(loss_n, 1)})
                    loss_sum, loss_n = 0.0, 0
                factor = fct
                with torch.no_grad():
                    for p, p0 in originals:
                        p.copy_(p0 * fct)
            if pos + batch_size > n:
                order, pos = torch.randperm(n, generator=g), 0
            idx = order[pos:pos + batch_size]
            xb = x[idx].to(dev)
            pos += batch_size
            with torch.no_grad():
                soft_t = F.log_softmax(t_net(xb) / T, 1)
            s_logits = student(xb)
            loss = F.kl_div(F.log_softmax(s_logits / T, 1), soft_t, log_target=True, reduction="batchmean") * T * T
            if label_weight:
                loss = loss + label_weight * F.cross_entropy(s_logits, train_ds.y[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach())
            loss_n += 1
            if step >= tail_from:
                tail.append(float(loss.detach()))
        history.append({"factor": factor, "until_step": steps, "loss": loss_sum / max(loss_n, 1)})
    seconds = time.perf_counter() - start
    with torch.no_grad():  # exactly zero, whatever rounding the schedule left
        for p, _ in originals:
            p.zero_()
    for p in student.parameters():
        p.requires_grad_(True)
    student = student.cpu().eval()
    teacher_net = teacher.model
    with torch.no_grad():
        t_pred = _logits(teacher_net, test_ds.x).argmax(1)
        s_pred = _logits(student, test_ds.x).argmax(1)
    metrics = {
        "test_accuracy": _accuracy(student, test_ds.x, test_ds.y),
        "teacher_test_accuracy": teacher.test_accuracy,
        "zero_bias_test_accuracy": zero_bias_accuracy(teacher_net, test_ds.x, test_ds.y),
        "agreement_with_teacher": int((t_pred == s_pred).sum()) / len(t_pred),
        "final_loss": sum(tail) / len(tail), "max_abs_bias": max_abs_bias(student), "seconds": round(seconds, 2),
        "steps": steps,
        "epochs": round(steps * batch_size / n, 3), "n_train": n, "device": str(dev), "labels": "distilled",
    }
    log(f"{model} zero-bias distillation: test accuracy {metrics['test_accuracy']:.4f} (teacher "
        f"{metrics['teacher_test_accuracy']:.4f}, biases zeroed without fine-tuning "
        f"{metrics['zero_bias_test_accuracy']:.4f}) in {seconds:.1f} s", quiet=quiet)
    if cache:
        state = {k: v.detach().cpu() for k, v in student.state_dict().items()}
        digest = atomic_torch_save(pt, state)
        atomic_write_json(meta_path, {
            "config": cfg, "key": key, "metrics": metrics, "history": history, "checkpoint_sha256": digest,
            "versions": {"sanitas": sanitas.__version__, "torch": torch.__version__,
                         "python": platform.python_version()},
        })
    return TrainedModel(student, cfg, metrics, pt, from_cache=False, history=history)


# ---------------------------------------------------------------------------------------------
# The analysis over several models
# ---------------------------------------------------------------------------------------------

@dataclass
class BiasAnalysis:
    """Results of :func:`bias_analysis`.

    ``table``: tidy rows (model, method, variant, stage, layer, metric, image, value);
    ``models``: one row per model; ``layers``: :func:`bias_summary` per model and variant;
    ``regression``: per-class fits per model; ``meta``: config, versions, timings.
    """

    table: pd.DataFrame
    models: pd.DataFrame
    layers: pd.DataFrame
    regression: pd.DataFrame
    meta: dict
    scatter: dict = field(default_factory=dict, repr=False)
    figures: list = field(default_factory=list)
    report: Path | None = None


def _long(df: pd.DataFrame, model: str, variant: str) -> pd.DataFrame:
    metrics = ["logit", "A_h", "A_b", "bias_above", "residual", "bias_share", "bias_above_share"]
    m = df.melt(id_vars=["image", "stage", "layer"], value_vars=metrics, var_name="metric", value_name="value")
    m.insert(0, "variant", variant)
    m.insert(0, "method", "decomposition")
    m.insert(0, "model", model)
    return m


def _row(model, method, variant, metric, value, stage=-1, layer="", image=-1):
    return {"model": model, "method": method, "variant": variant, "stage": stage, "layer": layer, "metric": metric,
            "image": image, "value": float(value)}


def bias_analysis(models, dataset: str = "fashion-mnist", images: int = 512, out: str | Path | None = None, *,
                  seed: int = 0, distill: bool | list[str] = False, distill_kwargs: dict | None = None,
                  train_kwargs: dict | None = None, accuracy_images: int | None = None,
                  quiet: bool | None = None) -> BiasAnalysis:
    """The zero-bias analysis of seed 002 for each model (names of reference models, or modules).

    Per model: test accuracy with and without biases (on the whole test split, or
    ``accuracy_images`` of it), the regression f^{b=0} = alpha f + beta, and the per-layer
    decomposition on ``images`` seeded test images (bias share per layer, Eq. 13 residuals).
    ``distill=True`` also makes the zero-bias model by distillation (:func:`distill_zero_bias`;
    reference models only; a list of names: only those) and reports its accuracy, fine-tuning
    time and decomposition. With ``out``, writes
    results.parquet/csv, summary.csv, layers.csv, regression.csv, meta.json, figures/*.png and
    report.html.
    """
    from sanitas.data import load_dataset
    from sanitas.engine import versions
    from sanitas.models import load_model

    if isinstance(models, (str, nn.Module)):
        models = [models]
    models = list(models)
    if not models:
        raise ConfigError("bias_analysis needs at least one model")
    if isinstance(distill, str):
        distill = [distill]
    if not isinstance(distill, bool):
        distill = list(distill)
        unknown = [d for d in distill if d not in models]
        if unknown:
            raise ConfigError(f"distill names {unknown} that are not among the models {models}")
    test = load_dataset(dataset, "test")
    sub = test.sample(images, seed=seed)
    acc_ds = test.sample(accuracy_images, seed=seed) if accuracy_images else test
    rows, summaries, layer_tabs, regs, scatter, timings, notes = [], [], [], [], {}, {}, {}
    long_parts = []
    for i, m in enumerate(models):
        name = m if isinstance(m, str) else f"{type(m).__name__}{i}"
        t0 = time.perf_counter()
        net = load_model(m, dataset, **({"quiet": quiet, **(train_kwargs or {})} if isinstance(m, str) else {}))
        acc = _accuracy(net, acc_ds.x, acc_ds.y)
        acc0 = zero_bias_accuracy(net, acc_ds.x, acc_ds.y)
        reg = bias_regression(net, sub.x)
        dec = bias_decomposition(net, sub.x)
        summ = bias_summary(dec)
        summ.insert(0, "variant", "original")
        summ.insert(0, "model", name)
        cut = dec[dec["cuts"]]
        inp = dec[dec["stage"] == 0]
        rec = {"model": name, "test_accuracy": acc, "zero_bias_accuracy": acc0, "accuracy_drop": acc - acc0,
               **reg.as_dict(), "n_bias_layers": int((summ["stage"] > 0).sum()),
               "bias_share_of_logit_median": float(inp["bias_above_share"].median()),
               "top_layer_bias_share_mean": float(summ.iloc[-1]["bias_share_mean"]),
               "max_residual": float(cut["residual"].max()),
               "offset_without_biases": offset_without_biases(net, sub.x),
               "cut_layers": int(summ["cuts"].sum()) - 1, "images": len(sub), "accuracy_images": len(acc_ds)}
        note = decomposition_note(rec["max_residual"], float(dec["logit"].abs().max()), rec["offset_without_biases"])
        rec["decomposition_holds"] = not note
        if note:
            notes[name] = note
        rows += [_row(name, "accuracy", "original", "test_accuracy", acc),
                 _row(name, "accuracy", "zero_bias", "test_accuracy", acc0)]
        rows += [_row(name, "regression", "zero_bias", k, v) for k, v in reg.as_dict().items()]
        long_parts.append(_long(dec, name, "original"))
        layer_tabs.append(summ)
        pc = reg.per_class.copy()
        pc.insert(0, "model", name)
        regs.append(pc)
        scatter[name] = (reg.logits, reg.zero_bias_logits, reg.alpha, reg.beta)
        if distill is True or (distill and name in distill):
            if not isinstance(m, str):
                notes[name] = f"{notes.get(name, '')} distillation skipped: needs a reference model name".strip()
            else:
                d = distill_zero_bias(m, dataset, quiet=quiet, teacher_kwargs=train_kwargs,
                                      **(distill_kwargs or {}))
                dacc = _accuracy(d.model, acc_ds.x, acc_ds.y)
                rec.update({"distilled_accuracy": dacc, "distilled_drop": acc - dacc,
                            "distill_seconds": d.metrics["seconds"], "distill_steps": d.metrics["steps"],
                            "distill_epochs": d.metrics["epochs"], "distill_from_cache": d.from_cache,
                            "distilled_max_abs_bias": max_abs_bias(d.model)})
                rows += [_row(name, "accuracy", "distilled", "test_accuracy", dacc),
                         _row(name, "distillation", "distilled", "seconds", d.metrics["seconds"])]
                ddec = bias_decomposition(d.model, sub.x)
                dsum = bias_summary(ddec)
                dsum.insert(0, "variant", "distilled")
                dsum.insert(0, "model", name)
                layer_tabs.append(dsum)
                long_parts.append(_long(ddec, name, "distilled"))
        summaries.append(rec)
        timings[name] = round(time.perf_counter() - t0, 2)
        log(f"{name}: accuracy {acc:.4f}, zero-bias {acc0:.4f}, alpha {reg.alpha:.3f}, beta {reg.beta:.3f}, "
            f"R^2 {reg.r2:.3f}" + (f", distilled {rec['distilled_accuracy']:.4f}" if "distilled_accuracy" in rec
                                   else ""), quiet=quiet)
    table = pd.concat([pd.DataFrame(rows)] + long_parts, ignore_index=True)
    table = table[["model", "method", "variant", "stage", "layer", "metric", "image", "value"]]
    meta = {"kind": "biases", "config": {"models": [m if isinstance(m, str) else type(m).__name__ for m in models],
                                         "dataset": str(dataset), "images": len(sub), "seed": seed,
                                         "accuracy_images": len(acc_ds),
                                         "distill": distill if isinstance(distill, bool) else list(distill),
                                         "distill_kwargs": distill_kwargs or {}, "train_kwargs": train_kwargs or {}},
            "image_indices": sub.info.get("indices"), "versions": versions(), "timings_s": timings, "notes": notes,
            "eq13": "residual reported for layers that cut the graph (every input-output path passes through "
                    "them); NaN for layers inside residual blocks"}
    res = BiasAnalysis(table, pd.DataFrame(summaries), pd.concat(layer_tabs, ignore_index=True),
                       pd.concat(regs, ignore_index=True), meta, scatter)
    if out is not None:
        write_bias_outputs(res, out)
    return res


def _accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    pred = _logits(net, x, batch_size).argmax(1)
    return int((pred == torch.as_tensor(y).cpu().long()).sum()) / len(pred)


def write_bias_outputs(res: BiasAnalysis, out: str | Path) -> Path:
    """results.parquet/csv + meta.json (engine.write_outputs), summary/layers/regression CSVs,
    figures and report.html."""
    from sanitas.engine import write_outputs
    from sanitas.report.figures import bias_regression_scatter, bias_share_bars
    from sanitas.report.html import biases_report
    from sanitas.utils.io import atomic_write_table

    out = Path(out)
    write_outputs(out, res.table, res.meta)
    for fname, df in (("summary.csv", res.models), ("layers.csv", res.layers), ("regression.csv", res.regression)):
        atomic_write_table(out / fname, df)
    res.figures = [bias_share_bars(res.layers, out / "figures" / "bias-share.png"),
                   bias_regression_scatter(res.scatter, out / "figures" / "zero-bias-regression.png")]
    res.report = biases_report(res, out, res.figures)
    return res.report
