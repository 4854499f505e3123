"""The same MPRT protocol through Quantus 0.6.0 (with Captum explainers) and through sanitas.

    pip install -e ".[bench]"        # quantus 0.6.0, captum 0.9
    python benchmarks/vs_quantus.py [--images 64]

Cascading randomization of the trained paper cnn, init 'default' (reset_parameters, what Quantus
does), methods gradient, input_x_gradient, integrated_gradients (50 steps), smoothgrad (50
samples), guided_backprop, gradcam, guided_gradcam; metrics spearman_abs, spearman, ssim.
Prints both wall times, the ratio, and the largest difference of per-layer mean scores where the
two definitions coincide (Spearman; Quantus' SSIM runs on flattened 1-D vectors, so it is timed
but not compared). Quantus 0.6.0's batched Spearman builds the full 2N x 2N matrix and breaks on
a batch of one, so it is wrapped per sample here; its SSIM is already a per-sample loop.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import scipy.stats
import torch

from sanitas.checks import model_randomization
from sanitas.data import load_dataset
from sanitas.models import train
from sanitas.randomize.init import Default


class QuantusSeeded(Default):
    """``default`` init drawn exactly as Quantus 0.6.0 draws it: ``torch.manual_seed(43)`` before every
    layer's ``reset_parameters()`` (its ``seed=42`` + 1), instead of sanitas' per-layer seed. Both tools
    then explain the same random networks, so per-layer differences measure the implementations, not
    two random draws (with per-layer seeds, one draw moved GradCAM's means by up to 0.13)."""

    name = "quantus_seeded"

    def apply(self, module, param_names, generator, seed):
        super().apply(module, param_names, generator, 43)

METHODS = ["gradient", "input_x_gradient", "integrated_gradients", "smoothgrad", "guided_backprop", "gradcam",
           "guided_gradcam"]
SANITAS_OPTS = {"integrated_gradients": "integrated_gradients", "smoothgrad": "smoothgrad"}


def captum_explain(method):
    from captum import attr as ca

    def f(model, inputs, targets, **kw):
        x = torch.as_tensor(inputs, dtype=torch.float32)
        y = torch.as_tensor(targets).long()
        conv2 = model.features.conv2
        if method == "gradient":
            a = ca.Saliency(model).attribute(x, target=y, abs=False)
        elif method == "input_x_gradient":
            a = ca.InputXGradient(model).attribute(x, target=y)
        elif method == "integrated_gradients":
            a = ca.IntegratedGradients(model).attribute(x, target=y, n_steps=50, internal_batch_size=len(x) * 50)
        elif method == "smoothgrad":
            span = float(x.max() - x.min())
            a = ca.NoiseTunnel(ca.Saliency(model)).attribute(x, target=y, nt_type="smoothgrad", nt_samples=50,
                                                              stdevs=0.15 * span, abs=False)
        elif method == "guided_backprop":
            a = ca.GuidedBackprop(model).attribute(x, target=y)
        elif method == "gradcam":
            cam = ca.LayerGradCam(model, conv2).attribute(x, target=y, relu_attributions=True)
            a = ca.LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear")
        else:
            a = ca.GuidedGradCam(model, conv2).attribute(x, target=y, interpolate_mode="bilinear")
        return a.detach().numpy()

    return f


def spearman_per_sample(a, b, batched=True, **kw):
    return np.array([scipy.stats.spearmanr(u, v)[0] for u, v in zip(a, b)])


def run_quantus(model, x, y, metric_name):
    import quantus

    def ssim_array(a, b, batched=True, **kw):  # Quantus' batched SSIM returns a list; MPRT needs an array
        return np.asarray(quantus.similarity_func.ssim(a, b, batched=batched, **kw))

    sim = {"spearman_abs": spearman_per_sample, "spearman": spearman_per_sample, "ssim": ssim_array}[metric_name]
    out = {}
    for method in METHODS:
        metric = quantus.MPRT(similarity_func=sim, layer_order="top_down", seed=42, abs=(metric_name == "spearman_abs"),
                              normalise=False, disable_warnings=True, display_progressbar=False)
        scores = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None,
                        explain_func=captum_explain(method), device="cpu", batch_size=len(x))
        out[method] = {layer: float(np.nanmean(v)) for layer, v in scores.items()}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--own-seeds", action="store_true",
                    help="randomize with sanitas' own per-layer seeds (different random weights than Quantus)")
    ap.add_argument("--sanitas-first", action="store_true",
                    help="run sanitas before Quantus: with SANITAS_HOLD_MEMORY=process (opt-in) sanitas leaves "
                         "glibc's malloc thresholds changed (sanitas.utils.memory), so this shows Quantus with them")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    model = train("cnn", "fashion-mnist").model.eval()
    ds = load_dataset("fashion-mnist", "test").sample(args.images, seed=0)
    x, y = ds.x, ds.y

    def quantus_part():
        t = time.perf_counter()
        means = {m: run_quantus(model, x, y, m) for m in ["spearman_abs", "spearman", "ssim"]}
        return means, time.perf_counter() - t

    def sanitas_part():
        from sanitas.explain import get_explainer

        t = time.perf_counter()
        explainers = [get_explainer("integrated_gradients", steps=50) if m == "integrated_gradients" else
                      get_explainer("smoothgrad", samples=50, sigma=0.15) if m == "smoothgrad" else m
                      for m in METHODS]
        res = model_randomization(model, x, y, methods=explainers, metrics=["spearman_abs", "spearman", "ssim"],
                                  init="default" if args.own_seeds else QuantusSeeded(), calibrate=False, quiet=True)
        return explainers, res, time.perf_counter() - t

    if args.sanitas_first:
        explainers, res, t_sanitas = sanitas_part()
        quantus_means, t_quantus = quantus_part()
    else:
        quantus_means, t_quantus = quantus_part()
        explainers, res, t_sanitas = sanitas_part()

    print(f"{args.images} images, cascading, init default, {len(METHODS)} methods, 3 metrics, "
          f"{'sanitas' if args.sanitas_first else 'Quantus'} first")
    print(f"Quantus 0.6.0 MPRT + Captum: {t_quantus:8.1f} s (one MPRT call per method and metric: Quantus "
          "scores one similarity per call, so each explanation is recomputed per metric)")
    print(f"sanitas:                     {t_sanitas:8.1f} s   ratio {t_quantus / t_sanitas:.1f}x\n")
    by_method: dict[str, float] = {}
    for key, sec in res.meta["timings"].items():
        kind, _, rest = key.partition("/")
        if kind in ("explain", "score") and not rest.endswith("/reference"):  # counted in 'original'
            label = "scoring" if kind == "score" else rest.rpartition("/")[0]
            by_method[label] = by_method.get(label, 0.0) + sec
    print("sanitas time by part: " + ", ".join(f"{k} {v:.2f} s" for k, v in by_method.items()) + "\n")
    s = res.summary()
    names = {repr(e) if not isinstance(e, str) else e: m for e, m in zip(explainers, METHODS)}
    worst = 0.0
    for metric in ["spearman_abs", "spearman"]:
        print(f"{metric}: per-layer mean, sanitas / quantus")
        for method_label, method in names.items():
            q = quantus_means[metric][method]
            row = []
            for _, r in s[(s["metric"] == metric) & (s["method"] == method_label)].sort_values("stage").iterrows():
                qv = q.get(r["variant"])
                if qv is None:
                    continue
                if r["variant"] != "original":  # Quantus re-explains the original (new noise): not 1 for smoothgrad
                    worst = max(worst, abs(r["mean"] - qv))
                row.append(f"{r['variant']}: {r['mean']:.3f}/{qv:.3f}")
            print(f"  {method:22s} " + "  ".join(row))
    print(f"\nlargest |difference| of per-layer means over the randomized layers (Spearman, where definitions "
          f"coincide): {worst:.3f}")
    print("(the 'original' row is left out: Quantus computes the original explanations twice, so a stochastic "
          "method's original score falls below 1 there)")


if __name__ == "__main__":
    main()
