"""The role of bias parameters (grabska2020, sections 2.3 and 3, supplement B and C).

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

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from torch import nn

from sanitas.errors import ConfigError
from sanitas.evaluate.bias_decomposition import (RESIDUAL_TOLERANCE, bias_decomposition, bias_summary,
                                                 cutting_layers, decomposition_note, offset_without_biases)
from sanitas.evaluate.zero_bias import (BiasRegression, bias_regression, max_abs_bias, zero_bias,
                                        zero_bias_accuracy)
from sanitas.models.distill import decay_factor, distill_zero_bias
from sanitas.models.train import accuracy
from sanitas.utils.progress import log

__all__ = ["BiasAnalysis", "BiasRegression", "bias_analysis", "bias_decomposition", "bias_regression", "bias_summary",
           "cutting_layers", "decay_factor", "decomposition_note", "distill_zero_bias", "max_abs_bias",
           "offset_without_biases", "RESIDUAL_TOLERANCE", "write_bias_outputs", "zero_bias", "zero_bias_accuracy"]


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
    """The zero-bias analysis of grabska2020 for each model (names of reference models, or modules).

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
        acc = accuracy(net, acc_ds.x, acc_ds.y, batch_size=512)
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
                dacc = accuracy(d.model, acc_ds.x, acc_ds.y, batch_size=512)
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
