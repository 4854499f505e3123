"""Which all-class VJP strategy and which pass size is faster on this device, and do they agree?

    python benchmarks/device_strategies.py [--device cuda] [--images 256]

sanitas picks per device (``sanitas.explain._core``): all-class gradients as one backward per
class row on the shared graph ("rows") on CPU and ``is_grads_batched`` ("batched") elsewhere;
IG/SmoothGrad passes of 48 MiB of activations on CPU and 1024 inputs elsewhere. This script times both
choices on random-weight reference models (no dataset or training needed, so it runs on a bare
accelerator machine) and checks that they give the same maps.

Measured 2026-11-23 on one H100 (torch 2.11), 256 / 1024 images, all-class cost in units of one
gradient: cnn rows 2.41x / 5.95x, batched 2.03x / 6.28x; vgg-small 2.86x / 5.10x vs 2.94x / 5.79x;
resnet-small 3.97x / 5.12x vs 4.17x / 6.26x (maps equal to 1e-4). IG with 32 steps: passes of 1024
beat 256 by 1.7-3x at 256 images; 4096 gained another 10-20 %. On the 2-core CPU rows win clearly
(see sanitas.explain._core.vjp).
"""

from __future__ import annotations

import argparse
import time

import torch

from sanitas.explain import _core, explain
from sanitas.models import build_model


def timed(fn, device, repeats=5):
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=256)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.rand(args.images, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (args.images,), device=device)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"{args.images} random 28x28 images, random weights\n")
    for name in ("cnn", "vgg-small", "resnet-small"):
        model = build_model(name).to(device).eval()
        t1 = timed(lambda: explain(model, x, y, method="gradient"), device)
        maps, times = {}, {}
        for strategy in ("rows", "batched"):
            _core.VJP_STRATEGY = strategy
            times[strategy] = timed(lambda: explain(model, x, "all", method="gradient"), device)
            maps[strategy] = explain(model, x, "all", method="gradient")
        _core.VJP_STRATEGY = "auto"
        diff = float((maps["rows"] - maps["batched"]).abs().max() / maps["rows"].abs().max())
        ig = {bs: timed(lambda: explain(model, x, y, method="integrated_gradients", steps=32, batch_size=bs), device)
              for bs in (256, 1024, 4096)}
        print(f"{name:13s} gradient {t1 * 1e3:7.1f} ms | all classes: rows {times['rows'] / t1:5.2f}x, "
              f"batched {times['batched'] / t1:5.2f}x (max rel. difference {diff:.1e}) | IG 32 steps: "
              + ", ".join(f"pass {bs}: {t * 1e3:.0f} ms" for bs, t in ig.items()), flush=True)


if __name__ == "__main__":
    main()
