"""What sanitas' CPU kernels and memory hold do to one explanation: integrated gradients per model.

    python benchmarks/cpu_passes.py [--images 64] [--steps 16] [--repeats 3]

For each zoo model (untrained weights: the speed of a pass does not depend on them) it runs
integrated gradients on random 28x28 grayscale images in three configurations, each in a fresh
process because glibc's malloc settings outlive a scope:

* ``plain``: PyTorch's own kernels, glibc's default malloc (SANITAS_CPU_KERNELS=0,
  SANITAS_HOLD_MEMORY=0),
* ``hold``: freed memory kept mapped between passes (sanitas.utils.memory) only,
* ``sanitas``: the default, hold plus the kernels of sanitas.explain.kernels,

and prints the best wall time, the minor page faults and the system time of one call.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch
from sanitas.explain import get_explainer
from sanitas.models import build_model
name, images, steps, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
model = build_model(name).eval()
x = torch.rand(images, 1, 28, 28)
ig = get_explainer("integrated_gradients", steps=steps)
ig(model, x, 0)
best = None
for _ in range(repeats):
    r0 = resource.getrusage(resource.RUSAGE_SELF); t = time.perf_counter()
    ig(model, x, 0)
    dt = time.perf_counter() - t; r1 = resource.getrusage(resource.RUSAGE_SELF)
    run = {"s": dt, "faults": r1.ru_minflt - r0.ru_minflt, "sys": r1.ru_stime - r0.ru_stime}
    best = run if best is None or dt < best["s"] else best
print(json.dumps(best))
"""

CONFIGS = {
    "plain": {"SANITAS_CPU_KERNELS": "0", "SANITAS_HOLD_MEMORY": "0"},
    "hold": {"SANITAS_CPU_KERNELS": "0", "SANITAS_HOLD_MEMORY": "1"},
    "sanitas": {"SANITAS_CPU_KERNELS": "1", "SANITAS_HOLD_MEMORY": "1"},
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="cnn,mlp,vgg-small,resnet-small,alexnet1")
    args = ap.parse_args()
    print(f"integrated gradients, {args.images} images x {args.steps} steps, best of {args.repeats} calls")
    print(f"{'model':14s}" + "".join(f"{c:>26s}" for c in CONFIGS) + "   speed-up")
    for name in args.models.split(","):
        cells, times = [], {}
        for config, env in CONFIGS.items():
            out = subprocess.run([sys.executable, "-c", CHILD, name, str(args.images), str(args.steps),
                                  str(args.repeats)], env={**os.environ, **env}, capture_output=True, text=True,
                                 check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            times[config] = r["s"]
            cells.append(f"{r['s']:6.3f} s {r['faults']:7d} flt {r['sys']:4.2f} sys")
        print(f"{name:14s}" + "".join(f"{c:>26s}" for c in cells) + f"   {times['plain'] / times['sanitas']:.2f}x")


if __name__ == "__main__":
    main()
