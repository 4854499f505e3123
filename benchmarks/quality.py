"""Seed 002's evaluation on the reference models: activity vs bias per layer, aggregates, FullGrad.

    SANITAS_CACHE=... python benchmarks/quality.py vgg-small --images 64 --shuffles 5 --out runs/quality

Runs :func:`sanitas.evaluate.evaluate_quality` with ``layers="all"`` plus gradient, FullGrad and
random maps on Fashion-MNIST test images (seeded sample), prints the per-layer Wilcoxon table,
the aggregate ranking and the comparison of the best aggregate with the others, and the time
per method. Results measured on the project's shared 2-core CPU are in benchmarks/quality.md.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="+")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--shuffles", type=int, default=5)
    ap.add_argument("--out", default=None, help="results folder (one sub-folder per model); resumable")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from sanitas.data import load_dataset
    from sanitas.evaluate import evaluate_quality
    from sanitas.models import load_model

    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    pd.set_option("display.max_rows", 300)
    fmt = lambda v: f"{v:.3g}"  # noqa: E731
    ds = load_dataset(args.dataset, "test").sample(args.images, seed=0)
    for name in args.model:
        net = load_model(name, args.dataset, quiet=True)
        t = time.perf_counter()
        out = f"{args.out}/{name}-{args.images}" if args.out else None
        r = evaluate_quality(net, ds.x, ds.y, methods=["gradient", "fullgrad", "random"], layers="all",
                             n_shuffles=args.shuffles, quiet=True, out=out)
        print(f"== {name}: {args.images} images, {args.shuffles} shuffles, {time.perf_counter() - t:.0f} s")
        print(r.pivot(("delta_e_minus", "e_minus", "delta_e_plus", "delta_e_delta")).round(4))
        print(r.layer_table().to_string(float_format=fmt))
        print(r.aggregate_ranking().to_string())
        print("best aggregate:", r.best_aggregate)
        print(r.comparison().to_string(float_format=fmt))
        print({m: round(v.get("explain_s", 0) + v.get("score_s", 0), 1) for m, v in r.meta["cells"].items()})


if __name__ == "__main__":
    main()
