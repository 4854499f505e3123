"""Benchmark: images/second of the decision-flip metric, fast multilevel search vs a one-pixel scan.

Setting (issue 7): 256 Fashion-MNIST test images, the trained paper CNN, plain-gradient maps
``abs(d f_c / d x)`` for the predicted class c, removal to zero, orders ``-s`` and ``+s``.

* fast: ``find_flips(..., search="multilevel")`` on all images, for each ``--levels-per-round``.
* one-pixel scan: ``find_flips(..., search="scan", levels_per_round=1)``: level 1, 2, 3, ...,
  one removed pixel more per forward pass for every image not yet flipped (batched across
  images), stopping at the first flip. It is run on the first ``--scan-images`` images only and
  extrapolated linearly to all of them (the output says so). As a cross-check it also prints a
  second estimate that does not assume those images are typical: the scan evaluates exactly
  ``k*`` levels for an image whose first flip is at ``k*``, so its cost for all images is
  ``sum(k*)`` forwards at the scan's measured throughput.
* exact batched scan: ``search="scan"`` with ``--exact-block`` consecutive levels per image per
  forward round, on all images: the first flip of every image, used to measure how often the
  multilevel search returns it on this trained network (non-monotone decisions).

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
    ap.add_argument("--exact-block", type=int, default=64,
                    help="levels per image per round of the exact batched scan (0: skip it)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--removal", default="zero")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_model(args.model, "fashion-mnist").eval()
    ds = load_dataset("fashion-mnist", split="test", limit=args.images)
    x = ds.x
    maps = gradient_maps(model, x)
    with torch.no_grad():
        model(x[:64])  # warm-up
    n, ns = len(x), min(args.scan_images, len(x))
    print(f"# decision-flip benchmark: {args.model}, {n} Fashion-MNIST test images 28x28 (P = 784 pixels), "
          f"gradient maps abs(df_c/dx), removal={args.removal}, batch_size={args.batch_size}")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), {platform.processor() or 'cpu'}, "
          f"load average {os.getloadavg()[0]:.1f} before the run (a shared machine: timings vary)")
    common = dict(removal=args.removal, batch_size=args.batch_size, quiet=True)
    for order in ("-s", "+s"):
        print(f"\norder {order}")
        scan, t_scan = timed(lambda: find_flips(model, x[:ns], maps[:ns], order, search="scan", levels_per_round=1,
                                                **common))
        scan_ips = ns / t_scan
        scan_fwd_per_s = (scan.n_evaluated - 2 * ns) / t_scan  # perturbed images per second in scan mode
        print(f"  one-pixel scan        : {ns} images in {t_scan:7.2f} s = {scan_ips:8.2f} images/s "
              f"({scan.n_evaluated} forwards). MEASURED ON {ns} IMAGES ONLY, extrapolated to {n}: "
              f"{n / scan_ips:.1f} s")
        exact = None
        if args.exact_block:
            exact, t_ex = timed(lambda: find_flips(model, x, maps, order, search="scan",
                                                   levels_per_round=args.exact_block, **common))
            print(f"  exact batched scan B={args.exact_block}: {n} images in {t_ex:7.2f} s = {n / t_ex:8.2f} images/s "
                  f"({exact.n_evaluated} forwards); first flip found for {int(exact.flipped.sum())}/{n}, "
                  f"median e = {exact.e.median():.3f}; decision seen flipping back for "
                  f"{int(exact.nonmonotone.sum())}/{n}")
            print(f"      speed-up over the one-pixel scan: {(n / t_ex) / scan_ips:6.1f}x (same answers: "
                  f"{(exact.level[:ns] == scan.level).float().mean().item():.0%} on the {ns} scanned images)")
        for L in args.levels_per_round:
            fast, t_fast = timed(lambda: find_flips(model, x, maps, order, levels_per_round=L, **common))
            fast_ips = n / t_fast
            # a second scan estimate from all images' flip levels (exact where fast == first flip)
            levels = (exact.level if exact is not None else fast.level).sum().item()
            est_scan_s = (levels + 2 * n) / scan_fwd_per_s
            print(f"  multilevel L={L:<3}      : {n} images in {t_fast:7.2f} s = {fast_ips:8.2f} images/s "
                  f"({fast.n_evaluated} forwards, {fast.n_evaluated / n:.1f} per image); flipped "
                  f"{int(fast.flipped.sum())}/{n}, median e = {fast.e.median():.3f}, "
                  f"flip-back seen for {int(fast.nonmonotone.sum())}/{n}")
            print(f"      SPEED-UP vs one-pixel scan (images/s ratio; scan extrapolated from {ns} images): "
                  f"{fast_ips / scan_ips:6.1f}x;  scan cost estimated from all {n} first-flip levels: "
                  f"{est_scan_s / t_fast:6.1f}x")
            print(f"      same flip level as the one-pixel scan on its {ns} images: "
                  f"{(fast.level[:ns] == scan.level).float().mean().item():.1%}")
            if exact is not None:
                same = fast.level == exact.level
                de = (fast.e - exact.e).abs()
                print(f"      same flip level as the exact scan on all {n} images: {same.float().mean().item():.1%}; "
                      f"|e_fast - e_exact|: median {de.median():.4f}, mean {de.mean():.4f}, max {de.max():.4f} "
                      f"(fast >= exact always: {bool((fast.level >= exact.level).all())})")


if __name__ == "__main__":
    main()
