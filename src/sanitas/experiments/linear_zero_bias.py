"""The zero-bias linear classifier (grabska2020 figure 1, section 2.1) and classifiers under scaled and
shifted inputs (supplement B.1).

Figure 1: a linear classifier without bias, ``f_c(x) = sum_k w_ck x_k``, trained with softmax and
cross-entropy. (a) "In a linear system, gradients are constant (df_c/dx_k = w_ck)". (b) "gradient x input"
attributions ``a_ck = w_ck x_k`` "decompose the output into components due to every input dimension ...
This decomposition is complete: f_c = sum_k a_ck"; "input attributions can provide the exact decomposition
only in a system with no bias parameters" (section 1). The text reads the maps: "nearly all pixels
corresponding to digit 3 are marked red for the output of that class" and "most pixels in the image of 6
contribute negative evidence to f_1". The check ``linear_zero_bias`` trains the experiment's linear model
(the reference ``linear``; training cached) with and without its bias and writes, per image, method x
variant (``zero bias`` stage 1, ``with bias`` stage 2):

* ``input_x_gradient`` / ``completeness_residual``: ``max_c |sum_k a_ck - f_c(x)|`` (closed form: 0 without
  bias, ``max_c |b_c|`` with it); ``positive_fraction_predicted``: the fraction of the object's pixels
  (``x_k != 0``) with ``a_ck > 0`` for the predicted class; ``positive_fraction_other``: the same, mean over
  the other classes;
* ``gradient`` / ``gradient_deviation``: ``max_{c,k} |df_c/dx_k - w_ck|`` (closed form: 0);
* ``classifier`` / ``correct``: the prediction is the label.

Supplement B.1 (figures 1 and 2 of the supplement): top-1 accuracy of ImageNet classifiers with the pixel
values scaled (0.001 to 1000 times) or shifted (by fractions of the training value range). "Only VGG-16,
VGG19 and InceptionV1 ... show robustness to scaling up to 100x"; these networks use no BatchNorm and no
non-linearity beyond rectification, and "BatchNorm decreases robustness to scaling and shifting input
values" (section 6); "scaling the input in a zero-bias system (e.g. the linear classifier f(x) = wx) does not
affect the ranking of the classes". The check ``input_robustness`` runs each model of the experiment (and,
with ``linear: true``, the linear classifier with and without bias) on the seeded test images times ``s``
(variant ``scale s``) and plus or minus ``c`` times the images' value range (variants ``shift -c``,
``shift +c``, for each ``c`` of ``shifts``); rows per image:
``correct``, ``changed`` (the prediction differs from the one on the unchanged image; variant ``x1`` has
``correct`` only), ``drop`` (correct on the unchanged image minus correct here); variant ``any scale``:
``changed`` under at least one scale.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from sanitas.experiments.runner_base import Outcome, study_outcome, _images, dataset_of, model_call, model_sources, runner

if TYPE_CHECKING:
    import torch
    from torch import nn

SCALES = (0.001, 0.01, 0.1, 0.5, 2.0, 10.0, 100.0, 1000.0)
SHIFTS = (0.1, 0.5, 1.0)
VARIANTS = ("zero bias", "with bias")
ZERO_BIAS_LINEAR, LINEAR = "linear (zero bias)", "linear (with bias)"


def _linear_layer(model: nn.Module):
    from torch import nn

    from sanitas.errors import ConfigError

    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if len(layers) != 1:
        raise ConfigError(f"figure 1 of grabska2020 needs a linear classifier (one nn.Linear), got {len(layers)}")
    return layers[0]


def _rows(method, variant, stage, metrics: dict, **extra) -> pd.DataFrame:
    import torch

    n = len(next(iter(metrics.values())))
    return pd.concat([pd.DataFrame({"method": method, "variant": variant, "stage": stage, "metric": m,
                                    "image": range(n), "value": torch.as_tensor(v).double().cpu().numpy(), **extra})
                      for m, v in metrics.items()], ignore_index=True)


def linear_table(models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor) -> tuple[pd.DataFrame, dict]:
    """The figure-1 table of the module docs for ``{variant: linear model}`` (variants in stage order), and the
    maps shown in the figure: ``{variant: (weights (K, C, H, W), input x gradient of the first 2 images (2, K, C,
    H, W), logits of the first 2 images)}``."""
    import torch

    from sanitas.explain import get_explainer
    from sanitas.utils.forward import inference_logits

    parts, shown = [], {}
    obj = x.abs().sum(1) > 0                                         # the object's pixels (N, H, W)
    for stage, (variant, model) in enumerate(models.items(), start=1):
        w = _linear_layer(model).weight.detach().reshape(-1, *x.shape[1:])
        logits = inference_logits(model, x)
        k = logits.shape[1]
        grads = get_explainer("gradient")(model, x, "all").detach()            # (N, K, C, H, W)
        a = get_explainer("input_x_gradient")(model, x, "all").detach()
        residual = (a.flatten(2).sum(2) - logits).abs().amax(1)
        deviation = (grads - w.unsqueeze(0)).abs().flatten(1).amax(1)
        positive = ((a.sum(2) > 0) & obj.unsqueeze(1)).flatten(2).sum(2) / obj.flatten(1).sum(1, keepdim=True)
        pred = logits.argmax(1)
        own = positive[torch.arange(len(x)), pred]
        other = (positive.sum(1) - own) / max(k - 1, 1)
        const = ~obj.flatten(1).any(1)                                          # an empty image has no map
        parts += [_rows("input_x_gradient", variant, stage, {"completeness_residual": residual,
                                                             "positive_fraction_predicted": own,
                                                             "positive_fraction_other": other},
                        constant_map=const.cpu().numpy()),
                  _rows("gradient", variant, stage, {"gradient_deviation": deviation}, constant_map=False),
                  _rows("classifier", variant, stage, {"correct": (pred == y.to(pred.device)).float()},
                        constant_map=False)]
        shown[variant] = (w, a[:2], logits[:2])
    return pd.concat(parts, ignore_index=True), shown


def _linear_figure(x, shown: dict, path: Path) -> Path:
    from sanitas.report.figures import new_figure, save_figure

    k = next(iter(shown.values()))[0].shape[0]
    rows = [(f"{v}: w_c (= gradient)", v, None) for v in shown] + [
        (f"{v}: x * w_c, image {i}", v, i) for v in shown for i in range(min(2, len(x)))]
    fig = new_figure(figsize=(1.05 * (k + 1), 1.15 * len(rows)))
    axes = fig.subplots(len(rows), k + 1, squeeze=False)
    for r, (title, variant, i) in enumerate(rows):
        w, a, logits = shown[variant]
        if i is not None:
            axes[r][0].imshow(x[i].mean(0).cpu().numpy(), cmap="gray")
        axes[r][0].set_ylabel(title, fontsize=5)
        for c in range(k):
            m = (w[c] if i is None else a[i, c]).sum(0).cpu().numpy()
            lim = float(abs(m).max()) or 1.0
            axes[r][c + 1].imshow(m, cmap="bwr", vmin=-lim, vmax=lim)
            label = f"class {c}" if i is None else f"f={float(logits[i, c]):.1f} sum={float(a[i, c].sum()):.1f}"
            axes[r][c + 1].set_title(label, fontsize=4.5)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
            if i is None:
                axes[r][0].set_frame_on(False)
    return save_figure(fig, path, dpi=130, tight=True)


def _train_linear(spec: dict, bias: bool, quiet: bool):
    from sanitas.errors import ConfigError
    from sanitas.models import train

    src = model_sources(spec)[0]
    if src.kind != "name":
        raise ConfigError(f"linear_zero_bias trains a reference linear model with and without bias (model: "
                          f"linear), got {src.describe()}")
    return train(src, dataset_of(spec), seed=int(spec["seed"]), model_kwargs={"bias": bias}, quiet=quiet)


@runner("linear_zero_bias")
def run_linear_zero_bias(spec: dict, out: Path, quiet: bool) -> Outcome:
    """Figure 1: the linear classifier with and without bias (see the module docs)."""

    t0 = time.perf_counter()
    trained = {v: _train_linear(spec, v == "with bias", quiet) for v in VARIANTS}
    ds = _images(spec)
    table, shown = linear_table({v: t.model for v, t in trained.items()}, ds.x, ds.y)
    figs = [_linear_figure(ds.x, shown, out / "figures" / "linear_zero_bias.png")]
    summary = table.groupby(["method", "variant", "metric"], sort=False)["value"].agg(["mean", "max", "count"])
    summary = summary.reset_index()
    scalars = {f"test_accuracy/{v}": float(t.metrics["test_accuracy"]) for v, t in trained.items()}
    scalars.update({f"mean/{r['metric']}/{r['variant']}": float(r["mean"]) for r in summary.to_dict("records")})
    return study_outcome(
        out, spec, t0, table, summary, figs, "sanitas: the zero-bias linear classifier (grabska2020 figure 1)",
        scalars=scalars,
        text=("A linear classifier trained with and without bias. Without bias the input x gradient maps sum to "
              "the logit exactly (completeness_residual 0); with a bias they miss it by b_c. Rows of the figure: the "
              "weights of each class (the gradient), then x * w_c for two images, titled with the logit f and the "
              "sum of the map."))


def robustness_table(models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, scales=SCALES, shifts=SHIFTS,
                     span: float | None = None, batch_size: int = 500) -> pd.DataFrame:
    """The B.1 table of the module docs for ``{name: model}``; shifts are ``-c * span`` and ``+c * span`` for each
    ``c`` of ``shifts`` (``span`` by default the images' value range, max - min)."""
    import torch

    from sanitas.utils.forward import inference_logits

    span = float(x.max() - x.min()) if span is None else float(span)
    transforms = ([("x1", lambda v: v)] + [(f"scale {s:g}", lambda v, s=s: v * s) for s in scales]
                  + [(f"shift {c:+g}", lambda v, c=c: v + c * span)
                     for c in sorted({-float(c) for c in shifts} | {float(c) for c in shifts})])
    y = torch.as_tensor(y)
    parts = []
    for name, model in models.items():
        def predict(fn):
            return torch.cat([inference_logits(model, fn(x[i:i + batch_size])).argmax(1).cpu()
                              for i in range(0, len(x), batch_size)])

        base = predict(transforms[0][1])
        ok0 = (base == y).float()
        any_scale = torch.zeros(len(x), dtype=torch.bool)
        for stage, (variant, fn) in enumerate(transforms):
            pred = base if stage == 0 else predict(fn)
            ok = (pred == y).float()
            metrics = {"correct": ok} if stage == 0 else {"correct": ok, "changed": (pred != base).float(),
                                                          "drop": ok0 - ok}
            if variant.startswith("scale"):
                any_scale |= pred != base
            parts.append(_rows(name, variant, stage, metrics, constant_map=False))
        if scales:
            parts.append(_rows(name, "any scale", len(transforms), {"changed": any_scale.float()}, constant_map=False))
    return pd.concat(parts, ignore_index=True)


def _robustness_figure(table: pd.DataFrame, path: Path) -> Path:
    from sanitas.report.figures import new_figure, save_figure

    acc = table[table["metric"] == "correct"]
    fig = new_figure(figsize=(9.0, 3.4))
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for ax, kind in zip(axes, ("scale", "shift")):
        for name, rows in acc.groupby("method", sort=False):
            means = rows.groupby("variant", sort=False)["value"].mean()
            pts = sorted([(1.0 if kind == "scale" else 0.0, means["x1"])]
                         + [(float(v.split()[1]), m) for v, m in means.items() if v.startswith(kind)])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=name)
        if kind == "scale":
            ax.set_xscale("log")
        ax.set_xlabel("pixel values times s" if kind == "scale" else "pixel values plus c x value range")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{kind} (grabska2020 supplement B.1)", fontsize=9)
        ax.legend(fontsize=6)
    return save_figure(fig, path, dpi=110, tight=True)


@runner("input_robustness")
def run_input_robustness(spec: dict, out: Path, quiet: bool) -> Outcome:
    """Supplement B.1: accuracy under scaled and shifted inputs (see the module docs)."""
    from sanitas.models import load_model

    t0 = time.perf_counter()
    ds = _images(spec)
    models = {}
    for src in model_sources(spec):
        with model_call(output=src.output):
            models[src.spec_string()] = load_model(src, dataset_of(spec), quiet=quiet)
    if spec.get("linear", False):
        models[ZERO_BIAS_LINEAR] = _train_linear({**spec, "model": "linear"}, False, quiet).model
        models[LINEAR] = _train_linear({**spec, "model": "linear"}, True, quiet).model
    table = robustness_table(models, ds.x, ds.y, spec.get("scales", SCALES), spec.get("shifts", SHIFTS))
    figs = [_robustness_figure(table, out / "figures" / "input_robustness.png")]
    acc = table[table["metric"] == "correct"]
    summary = acc.groupby(["method", "variant"], sort=False)["value"].mean().unstack("variant").reset_index()
    means = acc.groupby(["method", "variant"])["value"].mean()
    scalars = {f"accuracy/{m}/{v}": float(val) for (m, v), val in means.items()}
    return study_outcome(
        out, spec, t0, table, summary, figs, "sanitas: accuracy under scaled and shifted inputs (grabska2020 supplement B.1)",
        scalars=scalars,
        text=("Test accuracy of each model with its pixel values multiplied by s or shifted by c times their value "
              "range. A zero-bias linear classifier keeps every prediction under any positive scaling."))
