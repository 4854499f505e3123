"""Benchmark: images/second of the decision-flip metric, fast multilevel search vs a one-pixel scan.

Setting (issue 7): 256 Fashion-MNIST test images, the trained paper CNN, plain-gradient maps
``abs(d f_c / d x)`` for the predicted class c, removal to zero, orders ``-s`` and ``+s``.

* fast: ``find_flips(..., search="multilevel")`` on all images, for each ``--levels-per-round``.
* scan: ``find_flips(..., search="scan")``: level 1, 2, 3, ... one removed pixel more per
  forward pass for every image not yet flipped (batched across images), stopping at the flip.
  It is run on the first ``--scan-images`` images only and extrapolated linearly to all of them
  (the output says so). As a cross-check it also prints a second estimate that does not assume
  those images are typical: the scan evaluates exactly ``k*`` levels for an image whose first flip
  is at ``k*``, so its cost for all images is ``sum(k*)`` forwards at the scan's measured throughput.

The map computation is not timed (it is the attribution method's cost, not the metric's).

Usage: SANITAS_CACHE=... python benchmarks/perturbation.py [--images 256] [--scan-images 32]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from sanitas.data import load_dataset
from sanitas.evaluate import find_flips
from sanitas.models import load_model


def gradient_maps(model, x):
    """abs(d f_c / d x) for the predicted class c, shape (N, 1, H, W)."""
    x = x.clone().requires_grad_(True)
    logits = model(x)
    c = logits.argmax(1)
    (grad,) = torch.autograd.grad(logits.gather(1, c[:, None]).sum(), x)
    return grad.abs().detach()


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--scan-images", type=int, default=32)
    ap.add_argument("--levels-per-round", type=int, nargs="+", default=[15, 1])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--removal", default="zero")
    args = ap.parse_args(argv)

    model = load_model(args.model, "fashion-mnist").eval()
    ds = load_dataset("fashion-mnist", split="test", limit=args.images)
    x = ds.x
    maps = gradient_maps(model, x)
    with torch.no_grad():
        model(x[:64])  # warm-up
    print(f"# decision-flip benchmark: {args.model}, {len(x)} Fashion-MNIST test images 28x28 (P = 784 pixels), "
          f"gradient maps, removal={args.removal}, batch_size={args.batch_size}")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {platform.processor() or 'cpu'}, "
          f"load average {os.getloadavg()[0]:.1f} (timings on a shared machine vary)")
    common = dict(removal=args.removal, batch_size=args.batch_size, quiet=True)
    ns = min(args.scan_images, len(x))
    for order in ("-s", "+s"):
        scan, t_scan = timed(lambda: find_flips(model, x[:ns], maps[:ns], order, search="scan", **common))
        scan_ips = ns / t_scan
        scan_fwd_per_s = (scan.n_evaluated - 2 * ns) / t_scan  # perturbed images per second in scan mode
        print(f"\norder {order}")
        print(f"  scan        : {ns} images in {t_scan:7.2f} s = {scan_ips:8.2f} images/s "
              f"({scan.n_evaluated} forwards; measured on {ns} images, extrapolated to {len(x)}: "
              f"{len(x) / scan_ips:7.1f} s)")
        for L in args.levels_per_round:
            fast, t_fast = timed(lambda: find_flips(model, x, maps, order, levels_per_round=L, **common))
            fast_ips = len(x) / t_fast
            agree = (fast.level[:ns] == scan.level).float().mean().item()
            # second scan estimate from all images' flip levels (exact for images where fast == first flip)
            est_scan_s = (fast.level.sum().item() + 2 * len(x)) / scan_fwd_per_s
            print(f"  fast L={L:<3} : {len(x)} images in {t_fast:7.2f} s = {fast_ips:8.2f} images/s "
                  f"({fast.n_evaluated} forwards, {fast.n_evaluated / len(x):.1f} per image); "
                  f"flipped {int(fast.flipped.sum())}/{len(x)}, median e = {fast.e.median():.3f}, "
                  f"median flip level {int(fast.level.median())}")
            print(f"      speed-up vs scan (images/s ratio, scan extrapolated from {ns} images): "
                  f"{fast_ips / scan_ips:6.1f}x;  vs scan estimated from all {len(x)} flip levels: "
                  f"{est_scan_s / t_fast:6.1f}x")
            print(f"      same flip level as the scan on the {ns} scanned images: {agree:.1%}")


if __name__ == "__main__":
    main()
