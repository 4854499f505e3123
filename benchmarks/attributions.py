"""Throughput of every attribution method, sanitas vs Captum, on the trained paper CNN.

    python benchmarks/attributions.py [--images 256] [--repeats 3]

Prints images/second for both tools where Captum has the method, the ratio, and the cost of
target="all" (10 classes) relative to one single-target gradient.
"""

from __future__ import annotations

import argparse
import time

import torch

from sanitas.data import load_dataset
from sanitas.explain import EXPLAINERS, explain
from sanitas.models import train

SETTINGS = {
    "integrated_gradients": {"steps": 32},
    "smoothgrad": {"samples": 16},
    "vargrad": {"samples": 16},
}


# DASP has its own benchmark (benchmarks/dasp.py): ~30 s per image here.
SKIP = {"dasp"}


def best_time(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def best_pair(fa, fb, repeats):
    ta = tb = float("inf")
    for _ in range(repeats):
        ta = min(ta, best_time(fa, 1))
        tb = min(tb, best_time(fb, 1))
    return ta, tb


def captum_calls(model, x, y):
    from captum import attr as ca

    conv2 = model.features.conv2
    return {
        "gradient": lambda: ca.Saliency(model).attribute(x, target=y, abs=False),
        "input_x_gradient": lambda: ca.InputXGradient(model).attribute(x, target=y),
        "integrated_gradients": lambda: ca.IntegratedGradients(model).attribute(
            x, target=y, n_steps=32, internal_batch_size=len(x) * 32),
        "smoothgrad": lambda: ca.NoiseTunnel(ca.Saliency(model)).attribute(
            x, target=y, nt_type="smoothgrad", nt_samples=16, stdevs=0.15, abs=False),
        "vargrad": lambda: ca.NoiseTunnel(ca.Saliency(model)).attribute(
            x, target=y, nt_type="vargrad", nt_samples=16, stdevs=0.15, abs=False),
        "guided_backprop": lambda: ca.GuidedBackprop(model).attribute(x, target=y),
        "deconvnet": lambda: ca.Deconvolution(model).attribute(x, target=y),
        "gradcam": lambda: ca.LayerAttribution.interpolate(
            ca.LayerGradCam(model, conv2).attribute(x, target=y, relu_attributions=True), (28, 28), "bilinear"),
        "guided_gradcam": lambda: ca.GuidedGradCam(model, conv2).attribute(x, target=y),
        "deeplift": lambda: ca.DeepLift(model).attribute(x, baselines=torch.zeros_like(x), target=y),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_grad_enabled(True)
    model = train("cnn", "fashion-mnist").model.eval()
    ds = load_dataset("fashion-mnist", "test", limit=args.images)
    x, y = ds.x, ds.y
    try:
        theirs = captum_calls(model, x, y)
    except ImportError:
        theirs = {}
    print(f"{args.images} Fashion-MNIST images, trained cnn, {torch.get_num_threads()} threads, best of "
          f"{args.repeats}\n")
    print(f"{'method':24s} {'sanitas img/s':>14s} {'captum img/s':>13s} {'ratio':>7s}")
    for name in EXPLAINERS.names():
        if name in SKIP:
            continue
        opts = SETTINGS.get(name, {})
        ours = lambda: explain(model, x, y, method=name, **opts)  # noqa: E731
        if name in theirs:  # alternate the two tools so that a burst of load hits both alike
            t_ours, t_theirs = best_pair(ours, theirs[name], args.repeats)
        else:
            t_ours = best_time(ours, args.repeats)
        line = f"{name:24s} {args.images / t_ours:14.0f}"
        if name in theirs:
            line += f" {args.images / t_theirs:13.0f} {t_theirs / t_ours:7.2f}"
        print(line, flush=True)
    t1 = best_time(lambda: explain(model, x, y, method="gradient"), args.repeats)
    tall = best_time(lambda: explain(model, x, "all", method="gradient"), args.repeats)
    tgbp = best_time(lambda: explain(model, x, "all", method="guided_backprop"), args.repeats)
    print(f"\ntarget='all' (10 classes) gradient: {tall:.3f} s = {tall / t1:.2f}x one single-target gradient "
          f"({t1:.3f} s); guided_backprop all classes {tgbp / t1:.2f}x")


if __name__ == "__main__":
    main()
