"""The 1-layer sum-pooling convolution (adebayo2018 section 5.3, figure 7): saliency maps of a random
convolution look like an edge detector's.

The model is ``l(x) = sum_ij relu(w * x)_ij``: one random ``k x k`` filter (``filters`` of them, summed),
a ReLU and a sum over the whole feature map, untrained (its weights are drawn, seeded, from a normal
distribution: the paper's network is random too). Its gradient has a closed form. With ``a_pq =
1{(w * x)_pq > 0}`` the activation pattern of the ReLU units, each active unit ``(p, q)`` adds its filter,
placed on the pixels it reads, to the gradient:

    d l / d x_ij = sum_pq a_pq w_(i - p + c, j - q + c)        (c = k // 2, zero padding, w read as torch
                                                              reads it: a cross-correlation)

i.e. a masked sum of filters: the activation pattern convolved with ``w`` (a true convolution), which is the
cross-correlation that torch's ``conv2d`` computes with the flipped filter (:func:`closed_form_gradient`).
The paper writes
``sum_kl a_(i+k, j+l) w_kl`` for a convolution in the flipped convention and ``a = 1{w * x >= 0}``;
autograd's ReLU has derivative 0 at 0, so the two differ only where ``w * x`` is exactly 0 (for a filter
without bias: a black ``k x k`` neighbourhood). "This implies that the 3 x 3 activation pattern local to
pixel x_ij uniquely determines" the gradient: uniform regions share one activation pattern and one value,
and edges, where the pattern changes, stand out. Without the ReLU (``linear``, a linear model, section 5.3)
``a = 1`` everywhere and the gradient is the same for every image.

The experiment (check ``sum_pool_conv``, no trained model) explains test images with each method on the
ReLU model and on its linear twin (methods named ``"<method> (linear)"``), and scores (``metrics``) each
map against

* stage 1 ``vs sobel``: the Sobel edge map (``detector``) of the same image;
* stage 2 ``vs sobel of another image``: the edge map of the next image (``i + 1``): the null of the pairing;
* stage 3 ``random input vs its sobel``: the map of a random input (the image's pixels permuted, seeded:
  the same values without structure) against that input's edge map;
* stage 4 ``vs another image's map``: the method's map of the next image.

Scalars: ``closed_form_error`` (the largest difference between autograd's gradient and the closed form,
relative to the largest gradient, over images, both models) and ``gradient_spread/relu``,
``gradient_spread/linear`` (the largest difference between two images' gradients, relative to the largest
gradient: 0 for the linear model).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from sanitas.experiments.runner_base import Outcome, study_outcome, _images, build_methods, runner

if TYPE_CHECKING:
    import torch

STAGES = ("vs {d}", "vs {d} of another image", "random input vs its {d}", "vs another image's map")
METHODS = ("gradient", "input_x_gradient", "smoothgrad", "integrated_gradients", "guided_backprop")
LINEAR = " (linear)"


def sum_pool_conv(channels: int = 1, filters: int = 1, kernel: int = 3, relu: bool = True, seed: int = 0):
    """The model of adebayo2018 figure 7: ``x -> sum(relu(conv(x)))`` as ``(N, 1)`` logits, random weights
    (normal, seeded), no bias, zero padding that keeps the image size. ``relu=False``: the linear twin."""
    import torch
    from torch import nn

    from sanitas.utils.validation import count

    kernel = count(kernel, "kernel")
    if kernel % 2 == 0:
        raise ValueError(f"kernel must be odd (the map keeps the image's size), got {kernel}")

    class SumPoolConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(channels, filters, kernel, padding=kernel // 2, bias=False)
            self.act = nn.ReLU() if relu else nn.Identity()

        def forward(self, x):
            return self.act(self.conv(x)).sum(dim=(1, 2, 3)).unsqueeze(1)

    model = SumPoolConv()
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        model.conv.weight.copy_(torch.randn(model.conv.weight.shape, generator=g))
    return model.eval()


def closed_form_gradient(x: torch.Tensor, weight: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """``d/dx sum(relu(conv2d(x, weight, padding=k//2)))`` written out: every active unit ``(f, p, q)`` adds its
    filter ``weight[f]`` on the ``k x k`` pixels it reads (see the module docs). ``relu=False``: every unit."""
    import torch
    import torch.nn.functional as F

    k = weight.shape[-1]
    c = k // 2
    z = F.conv2d(x, weight, padding=c)
    a = (z > 0).to(x.dtype) if relu else torch.ones_like(z)
    n, _, h, w = x.shape
    grad = torch.zeros(n, x.shape[1], h + 2 * c, w + 2 * c, dtype=x.dtype)
    for di in range(k):           # the filter's tap (di, dj) reads pixel (p + di - c, q + dj - c) for unit (p, q)
        for dj in range(k):
            # sum over filters f of a[n, f, p, q] * weight[f, :, di, dj], placed at (p + di, q + dj) of the padded map
            grad[:, :, di:di + h, dj:dj + w] += torch.einsum("nfpq,fc->ncpq", a, weight[:, :, di, dj].to(x.dtype))
    return grad[:, :, c:c + h, c:c + w]


def _rows(method, stage, variant, values, constant) -> pd.DataFrame:
    n = len(constant)
    return pd.concat([pd.DataFrame({"method": method, "variant": variant, "stage": stage, "metric": metric,
                                    "image": range(n), "value": v.detach().double().cpu().numpy(),
                                    "constant_map": constant.numpy()}) for metric, v in values.items()],
                     ignore_index=True)


def _spread(g: torch.Tensor) -> float:
    scale = float(g.abs().max())
    return float((g - g[:1]).abs().max()) / scale if scale > 0 else float("nan")


def sum_pool_table(x: torch.Tensor, methods: dict, metrics: dict, *, filters: int = 1, kernel: int = 3,
                   detector: str = "sobel", seed: int = 0) -> tuple[pd.DataFrame, dict, dict]:
    """The table of the module docs, its scalars, and the maps of the first image (and of its random input)
    for the figure."""
    import torch

    from sanitas.cells import as_image_batch, constant_maps, score
    from sanitas.explain import get_explainer

    if len(x) < 2:
        raise ValueError("the sum-pool experiment compares each image with the next: give it 2 images or more")
    g = torch.Generator().manual_seed(int(seed) + 1)
    flat = x.flatten(1)
    rand = torch.stack([row[torch.randperm(row.numel(), generator=g)] for row in flat]).reshape(x.shape)
    nxt = torch.roll(torch.arange(len(x)), -1)
    target = torch.zeros(len(x), dtype=torch.long)
    models = {"": sum_pool_conv(x.shape[1], filters, kernel, True, seed),
              LINEAR: sum_pool_conv(x.shape[1], filters, kernel, False, seed)}
    edge = get_explainer(detector)   # model-free: the model is only passed along
    e_x, e_r = edge(models[""], x, target).detach(), edge(models[""], rand, target).detach()
    shown = {"input": x[:1], detector: e_x[:1], "random input": rand[:1], f"{detector} (random)": e_r[:1]}

    def const(*maps):
        out = torch.zeros(len(x), dtype=torch.bool)
        for m in maps:
            out |= constant_maps(as_image_batch(m)).cpu()
        return out

    parts, scalars, errors = [], {}, []
    for suffix, model in models.items():
        for name, explainer in methods.items():
            maps = explainer(model, x, target).detach()
            maps_r = explainer(model, rand, target).detach()
            label = name + suffix
            shown[label] = maps[:1]
            shown[f"{label}, random input"] = maps_r[:1]
            names = [s.format(d=detector) for s in STAGES]
            parts += [_rows(label, 1, names[0], score(metrics, e_x, maps, x), const(maps, e_x)),
                      _rows(label, 2, names[1], score(metrics, e_x[nxt], maps, x), const(maps, e_x[nxt])),
                      _rows(label, 3, names[2], score(metrics, e_r, maps_r, rand), const(maps_r, e_r)),
                      _rows(label, 4, names[3], score(metrics, maps[nxt], maps, x), const(maps, maps[nxt]))]
        grad = get_explainer("gradient")(model, x, target).detach()
        hand = closed_form_gradient(x, model.conv.weight.detach(), relu=not suffix)
        errors.append(float((grad - hand).abs().max()) / max(float(hand.abs().max()), 1e-30))
        scalars[f"gradient_spread/{'linear' if suffix else 'relu'}"] = _spread(grad)
    scalars["closed_form_error"] = max(errors)
    return pd.concat(parts, ignore_index=True), scalars, shown


def _figure(shown: dict, path: Path) -> Path:
    from sanitas.report.figures import new_figure, save_figure

    pairs = [(k, v) for k, v in shown.items() if "random" not in k] + \
        [(k, v) for k, v in shown.items() if "random" in k]
    cols = (len(pairs) + 1) // 2
    fig = new_figure(figsize=(1.5 * cols, 3.4))
    axes = fig.subplots(2, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (name, m) in enumerate(pairs):
        ax = axes[i // cols if i < cols else 1, i % cols]
        img = m[0].mean(0) if name in ("input", "random input") else m[0].abs().sum(0)
        ax.imshow(img.float().cpu().numpy(), cmap="gray")
        ax.set_title(name, fontsize=5)
    return save_figure(fig, path, dpi=120, tight=True)


@runner("sum_pool_conv")
def run_sum_pool_conv(spec: dict, out: Path, quiet: bool) -> Outcome:
    """Maps of a random 1-layer sum-pooling convolution against edge maps (see the module docs)."""
    from sanitas.checks.model_randomization import resolve_metrics
    from sanitas.utils.progress import log

    t0 = time.perf_counter()
    ds = _images(spec)
    methods = build_methods(spec.get("methods", list(METHODS)))
    metrics = resolve_metrics(spec.get("metrics", ["spearman_abs", "ssim"]))
    detector = spec.get("detector", "sobel")
    log(f"1-layer sum-pool conv: {len(methods)} methods against {detector} on {len(ds.x)} images", quiet=quiet)
    table, scalars, shown = sum_pool_table(ds.x, methods, metrics, filters=int(spec.get("filters", 1)),
                                           kernel=int(spec.get("kernel", 3)), detector=detector,
                                           seed=int(spec["seed"]))
    figs = [_figure(shown, out / "figures" / "sum_pool.png")]
    ok = table[~table["constant_map"]]
    summary = ok.groupby(["method", "variant", "metric"], sort=False)["value"].agg(["mean", "count"]).reset_index()
    return study_outcome(
        out, spec, t0, table, summary, figs, "sanitas: the 1-layer sum-pooling convolution",
        scalars=scalars, meta={"scalars": scalars},
        text=("Maps of a random 1-layer convolution with ReLU and sum pooling (adebayo2018 section 5.3, figure 7) and "
              "of its linear twin, against the edge map of the same image, of another image, and on a random input "
              "(the image's pixels permuted) against its own edge map. The figure: the first image, its edge map and "
              "each method's map; below, the same for the random input."))
