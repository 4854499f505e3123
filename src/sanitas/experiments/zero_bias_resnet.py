"""The zero-bias ResNet and "completeness is not essential" (grabska2020 section 3, Fig. 4, supplement D).

grabska2020 decays every bias of a BatchNorm ResNet to zero while distilling it from the original
(supplement C), so that in the zero-bias network the activity attributions of every layer,
a^{h,l}_{ij} = sum_phi h^l_{ij phi} df_c/dh^l_{ij phi} (Eq. 11), sum to the logit (Eq. 6: a *complete*
decomposition), while in the original network their gross sums A^{h,l} (Eq. 14) "differ greatly" from
it and are often negative (Fig. 4). It then asks whether completeness improves the explanations:
signed attribution maps of the zero-bias network are more discriminative (delta e-, Fig. 9), the
improvement is smaller for unsigned saliency maps, and the best saliency maps do not improve
(supplement D.1, Fig. 11): "completeness is not essential for interpretability". Supplement D (Fig. 8)
also correlates a^{h,l} of the original with those of the zero-bias networks.

The check ``zero_bias_resnet`` reproduces this on a small ResNet (stem + residual blocks; the paper's
ResNet-50 "layers" are its stem and its 16 blocks, so the layers here are the stem and every block's
output, both of which every path to the logit passes through). Networks (the table's ``variant``):
``vanilla`` (the trained model), ``zero-bias`` (bias decay + distillation, :func:`distill_zero_bias`)
and ``zeroed`` (biases set to zero by brute force, :func:`zero_bias`; Fig. 8's orange). Stages: 0 the
input attributions a^{h,0} = x * grad, 1..L the layers. Rows (``method`` / ``metric``):

* ``activity`` / ``completeness_gap``: |A^{h,l} - f_c| / |f_c| for the explained (predicted) class;
* ``activity`` / ``negative_share``: the share of negative evidence, sum(max(-a, 0)) / sum(|a|);
* ``activity`` / ``correlation`` (zero-bias and zeroed networks): Pearson's r between the network's
  a^{h,l} and the vanilla network's, both for the vanilla network's predicted class (Fig. 8);
* ``signed`` and ``saliency`` / every decision-flip metric of :func:`perturbation_scores` with
  ``-s`` (e_minus, e_minus_xi, delta_e_minus): maps bilinearUpsample(a^{h,l}) (Fig. 9) and
  bilinearUpsample(|a^{h,l}|) (Fig. 11), each network explaining and perturbed on its own decision;
  ``gradient`` (stage 0): sum over channels of |df_c/dx|, the paper's grey reference.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sanitas.experiments.runner_base import study_outcome
from sanitas.experiments.runners import Outcome, dataset_of, model_call, model_sources, runner

if TYPE_CHECKING:  # torch is imported where it runs: reading a finished study's tables needs none
    import torch
    from torch import nn

#: line colours of the figure, by method (line style by network)
COLORS = {"signed": "C0", "saliency": "C1", "activity": "C2"}
#: the training options an experiment may give its model (a cheap model for the quick profile)
TRAIN_KEYS = ("epochs", "train_size")


def depth_layers(model: nn.Module) -> list[str]:
    """The layers whose attributions are compared: for a residual network its stem and every residual
    block (modules whose class name ends in ``Block``), otherwise every ``Conv2d``, in module order."""
    from torch import nn

    named = list(model.named_modules())
    blocks = [n for n, m in named if type(m).__name__.endswith("Block")]
    if blocks:
        return [n for n, _ in named if n.rsplit(".", 1)[-1] == "stem"][:1] + blocks
    return [n for n, m in named if isinstance(m, nn.Conv2d)]


def spec_layers(spec: dict, model: nn.Module) -> list[str]:
    """An experiment's ``layers:`` (one name or a list; numbers are ``nn.Sequential`` names) or
    :func:`depth_layers`."""
    given = spec.get("layers")
    if given is None:
        return depth_layers(model)
    return [str(n) for n in (given if isinstance(given, list) else [given])]


def attributions(model: nn.Module, x: torch.Tensor, layers: list[str], target: torch.Tensor | None = None) -> dict:
    """Logits, the explained class, the input gradient and a^{h,l} of ``layers`` (input first) for one pass.

    Returns ``{"logit": (N,), "target": (N,), "grad": (N, C, H, W), "maps": [(N, H, W), (N, h1, w1), ...]}``,
    ``maps[0]`` the input attributions sum_c x * df/dx, ``maps[l]`` the activity attributions of ``layers[l-1]``;
    the class is ``target`` or the model's prediction.
    """
    import torch

    from sanitas.explain._core import eval_mode, logits_of, model_device, selection
    from sanitas.explain.layers import layer_attributions

    x = x.detach().to(model_device(model))
    with eval_mode(model):
        with torch.no_grad():
            logits = logits_of(model, x)
        tgt = logits.argmax(1) if target is None else torch.as_tensor(target, device=x.device)
        G = selection(tgt, x.shape[0], logits.shape[1], x.device, x.dtype)
        with torch.enable_grad():
            gx, las = layer_attributions(model, x, G, layers, kinds=(), with_input=True)
    by_name = {la.name: la.activity[0].detach() for la in las}
    missing = [n for n in layers if n not in by_name]
    if missing:
        from sanitas.errors import ConfigError
        raise ConfigError(f"layer(s) {missing} returned no tensor in the forward pass; choose modules that do")
    maps = [(x * gx[0]).sum(1).detach()] + [by_name[n] for n in layers]
    return {"logit": logits[torch.arange(len(x)), tgt].detach(), "target": tgt, "grad": gx[0].detach(), "maps": maps}


def completeness_gap(maps: list[torch.Tensor], logit: torch.Tensor) -> list[torch.Tensor]:
    """|A^{h,l} - f_c| / |f_c| per layer and image (0 for a complete decomposition, Eq. 6)."""
    return [(a.flatten(1).double().sum(1) - logit.double()).abs() / logit.double().abs() for a in maps]


def negative_share(a: torch.Tensor) -> torch.Tensor:
    """sum(max(-a, 0)) / sum(|a|) per image: the share of negative evidence in an attribution map."""
    import torch

    a = a.flatten(1).double()
    return (-a).clamp_min(0).sum(1) / a.abs().sum(1).clamp_min(torch.finfo(torch.float64).tiny)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson's r between two maps of each image (NaN when one is constant)."""
    import torch

    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    den = (a.norm(dim=1) * b.norm(dim=1))
    return torch.where(den > 0, (a * b).sum(1) / den.clamp_min(1e-300), torch.full_like(den, float("nan")))


def layer_maps(maps: list[torch.Tensor], size, signed: bool) -> list[torch.Tensor]:
    """bilinearUpsample(a^{h,l}) (signed) or bilinearUpsample(|a^{h,l}|) at the input's size."""
    from sanitas.explain.cam import upsample

    out = []
    for a in maps:
        a = a if signed else a.abs()
        out.append(a if tuple(a.shape[-2:]) == tuple(size) else upsample(a, size, "bilinear"))
    return out


def _rows(variant: str, method: str, stage: int, metric: str, values) -> pd.DataFrame:
    import torch

    v = values.detach().double().cpu().numpy() if torch.is_tensor(values) else np.asarray(values, dtype=np.float64)
    return pd.DataFrame({"method": method, "variant": variant, "stage": stage, "metric": metric,
                         "image": np.arange(len(v)), "value": v, "constant_map": False})


def _flip_rows(variant: str, model, x, maps: dict, n_shuffles: int, seed: int) -> list[pd.DataFrame]:
    """Decision-flip metrics (``-s``) of ``{(method, stage): maps}``, one search for all of them."""
    from sanitas.evaluate.perturbation import perturbation_scores

    keyed = {f"{m}@{s}": v for (m, s), v in maps.items()}
    df = perturbation_scores(model, x, keyed, n_shuffles=n_shuffles, seed=seed, orders=("-s",), quiet=True)
    out = []
    for key, part in df.groupby("method", sort=False):
        method, stage = key.rsplit("@", 1)
        for metric, rows in part.groupby("metric", sort=False):
            out.append(_rows(variant, method, int(stage), metric, rows.sort_values("image")["value"].to_numpy()))
    return out


def zero_bias_table(nets: dict[str, nn.Module], x: torch.Tensor, layers: list[str], *, n_shuffles: int = 5,
                    seed: int = 0, perturb: tuple[str, ...] = ("vanilla", "zero-bias")) -> tuple[pd.DataFrame, dict]:
    """The table of the module docs for ``nets`` (``vanilla`` first) and the raw attributions (for figures)."""
    size = tuple(x.shape[-2:])
    ref = attributions(nets["vanilla"], x, layers)
    parts, raw = [], {}
    for variant, net in nets.items():
        own = ref if variant == "vanilla" else attributions(net, x, layers)
        raw[variant] = own
        for stage, (gap, a) in enumerate(zip(completeness_gap(own["maps"], own["logit"]), own["maps"])):
            parts.append(_rows(variant, "activity", stage, "completeness_gap", gap))
            parts.append(_rows(variant, "activity", stage, "negative_share", negative_share(a)))
        if variant != "vanilla":
            same = attributions(net, x, layers, target=ref["target"])
            for stage, (a, b) in enumerate(zip(same["maps"], ref["maps"])):
                parts.append(_rows(variant, "activity", stage, "correlation", pearson(a, b)))
        if variant in perturb:
            maps = {("gradient", 0): own["grad"].abs().sum(1)}
            for method, signed in (("signed", True), ("saliency", False)):
                maps.update({(method, s): m for s, m in enumerate(layer_maps(own["maps"], size, signed))})
            parts += _flip_rows(variant, net, x, maps, n_shuffles, seed)
    return pd.concat(parts, ignore_index=True), raw


def _summary(table: pd.DataFrame) -> pd.DataFrame:
    return (table.groupby(["variant", "method", "metric", "stage"], sort=False)["value"]
            .agg(["mean", "median", "count"]).reset_index())


def scalars_of(table: pd.DataFrame, accuracy: dict[str, float]) -> dict[str, float]:
    """``accuracy/<variant>`` (on the explained images), ``max_gap/<variant>`` (largest per-layer mean
    completeness gap over the hidden layers) and ``mean/<metric>/<variant>/<method>`` over the hidden layers;
    the runner adds ``test_accuracy/<variant>`` (the whole test set)."""
    out = {f"accuracy/{k}": float(v) for k, v in accuracy.items()}
    hidden = table[table["stage"] > 0]
    gaps = hidden[hidden["metric"] == "completeness_gap"].groupby(["variant", "stage"])["value"].mean()
    for variant, g in gaps.groupby(level=0):
        out[f"max_gap/{variant}"] = float(g.max())
    for (metric, variant, method), g in hidden.groupby(["metric", "variant", "method"]):
        out[f"mean/{metric}/{variant}/{method}"] = float(g["value"].mean())
    return out


def _figures(table: pd.DataFrame, raw: dict, layers: list[str], x: torch.Tensor, out: Path) -> list[Path]:
    from matplotlib.ticker import MaxNLocator

    from sanitas.report.figures import new_figure, save_figure

    figs = []
    variants = [v for v in ("vanilla", "zero-bias") if v in raw]
    n = len(layers) + 1
    fig = new_figure(figsize=(1.5 * (n + 1), 1.7 * len(variants)))
    axes = fig.subplots(len(variants), n + 1, squeeze=False)
    for r, variant in enumerate(variants):
        own = raw[variant]
        axes[r][0].imshow(x[0].mean(0).cpu().numpy(), cmap="gray")
        axes[r][0].set_title(f"{variant}\nf_c = {float(own['logit'][0]):.2f}", fontsize=6)
        for c, a in enumerate(own["maps"], start=1):
            m = a[0].cpu().numpy()
            lim = float(np.abs(m).max()) or 1.0
            axes[r][c].imshow(m, cmap="bwr", vmin=-lim, vmax=lim)
            axes[r][c].set_title(f"l={c - 1}: A={float(m.sum()):.2f}", fontsize=6)
        for ax in axes[r]:
            ax.axis("off")
    fig.suptitle("a^{h,l} of the first image (red positive, blue negative); A = gross sum (Eq. 14)", fontsize=7)
    fig.tight_layout()
    figs.append(save_figure(fig, out / "figures" / "zero_bias_attributions.png", dpi=120))

    panels = [("delta_e_minus", "delta e- (higher: more discriminative)"), ("correlation", "r with vanilla a^{h,l}"),
              ("negative_share", "share of negative evidence")]
    fig = new_figure(figsize=(3.2 * len(panels), 2.8))
    for ax, (metric, title) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        sel = table[table["metric"] == metric]
        for (variant, method), g in sel.groupby(["variant", "method"], sort=False):
            means = g.groupby("stage")["value"].mean()
            if method == "gradient":
                ax.axhline(float(means.iloc[0]), ls=":", color="grey" if variant == "vanilla" else "k", lw=1,
                           label=f"gradient ({variant})")
                continue
            ax.plot(means.index, means.to_numpy(), marker="o", ms=3, color=COLORS.get(method, "C3"),
                    ls={"vanilla": "-", "zero-bias": "--"}.get(variant, ":"), label=f"{method} ({variant})")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("layer (0: input)", fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=5)
    fig.tight_layout()
    figs.append(save_figure(fig, out / "figures" / "zero_bias_quality.png", dpi=120))
    return figs


@runner("zero_bias_resnet")
def run_zero_bias_resnet(spec: dict, out: Path, quiet: bool) -> Outcome:
    """The original, distilled zero-bias and brute-force zero-bias network compared (see the module docs)."""
    from sanitas.evaluate.zero_bias import zero_bias
    from sanitas.experiments.runners import _images
    from sanitas.models import load_model
    from sanitas.models.distill import distill_zero_bias
    from sanitas.models.train import accuracy
    from sanitas.utils.progress import log

    t0 = time.perf_counter()
    src = model_sources(spec)[0]
    train_kwargs = {k: spec[k] for k in TRAIN_KEYS if k in spec}
    dataset = dataset_of(spec)
    with model_call(output=src.output):
        net = load_model(src, dataset, quiet=quiet, **train_kwargs)
        student = distill_zero_bias(src.spec_string(), dataset, teacher_kwargs=train_kwargs, seed=int(spec["seed"]),
                                    quiet=quiet, **dict(spec.get("distill_options") or {}))
        nets = {"vanilla": net.eval(), "zero-bias": student.model.eval(), "zeroed": zero_bias(net).eval()}
        ds = _images(spec)
        layers = spec_layers(spec, net)
        log(f"zero-bias ResNet: layers {', '.join(layers)}", quiet=quiet)
        table, raw = zero_bias_table(nets, ds.x, layers, n_shuffles=int(spec.get("n_shuffles", 5)),
                                     seed=int(spec["seed"]))
        acc = {k: accuracy(m, ds.x, ds.y) for k, m in nets.items()}
    scalars = scalars_of(table, acc)
    test = {"vanilla": "teacher_test_accuracy", "zero-bias": "test_accuracy", "zeroed": "zero_bias_test_accuracy"}
    scalars.update({f"test_accuracy/{k}": float(student.metrics[v]) for k, v in test.items() if v in student.metrics})
    figs = _figures(table, raw, layers, ds.x, out)
    summary = _summary(table)
    return study_outcome(
        out, spec, t0, table, summary, figs, "sanitas: the zero-bias ResNet (grabska2020 Fig. 4, supplement D)", scalars=scalars,
        meta={"layers": layers, "distilled": student.metrics},
        text=("Activity attributions a^{h,l} of the stem and every residual block, in the trained network, its "
              "zero-bias version (bias decay + distillation, T = 100) and with its biases zeroed by brute force: "
              "how far their gross sums are from the logit (completeness, Eq. 6), their share of negative "
              "evidence, their correlation with the original's, and the decision-flip quality of the signed "
              "and unsigned maps (delta e-, Eq. 20)."))
