"""What sanitas' CPU kernels and the opt-in memory hold do to one explanation: integrated gradients per model.

    python benchmarks/cpu_passes.py [--images 64] [--steps 16] [--repeats 3]
    python benchmarks/cpu_passes.py --linear      # the table behind the F.linear rule of explain.kernels

For each zoo model (untrained weights: the speed of a pass does not depend on them) it runs
integrated gradients on random 28x28 grayscale images in four configurations, each in a fresh
process because glibc's malloc settings, once changed, outlive everything:

* ``plain``: PyTorch's own kernels (SANITAS_CPU_KERNELS=0), glibc's malloc as it is,
* ``sanitas``: the default, the kernels of sanitas.explain.kernels (a single explanation holds
  no memory),
* ``reserve``: the default, with the calls inside ``with sanitas.utils.memory.hold_freed_memory():``
  (the heap reserve a check holds; changes no malloc setting),
* ``process``: the default plus the process-wide opt-in (SANITAS_HOLD_MEMORY=process),

and prints the best wall time, the minor page faults and the system time of one call.

``--linear`` times ``F.linear`` through the BLAS and as oneDNN's 1x1 convolution (forward plus
input gradient, best of 7) for the rows a pass has and the weights of the zoo models, and marks
what the rule of ``sanitas.explain.kernels.linear_prefers_onednn`` picks on this CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time, torch
from sanitas.explain import get_explainer
from sanitas.models import build_model
from sanitas.utils.memory import hold_freed_memory
name, images, steps, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
reserve = sys.argv[5] == "reserve"
torch.manual_seed(0)
model = build_model(name).eval()
x = torch.rand(images, 1, 28, 28)
ig = get_explainer("integrated_gradients", steps=steps)
def call():
    if reserve:
        with hold_freed_memory():
            ig(model, x, 0)
    else:
        ig(model, x, 0)
call()
best = None
for _ in range(repeats):
    r0 = resource.getrusage(resource.RUSAGE_SELF); t = time.perf_counter()
    call()
    dt = time.perf_counter() - t; r1 = resource.getrusage(resource.RUSAGE_SELF)
    run = {"s": dt, "faults": r1.ru_minflt - r0.ru_minflt, "sys": r1.ru_stime - r0.ru_stime}
    best = run if best is None or dt < best["s"] else best
print(json.dumps(best))
"""

CONFIGS = {  # environment, and whether the calls run inside hold_freed_memory()
    "plain": ({"SANITAS_CPU_KERNELS": "0", "SANITAS_HOLD_MEMORY": "scope"}, False),
    "sanitas": ({"SANITAS_CPU_KERNELS": "1", "SANITAS_HOLD_MEMORY": "scope"}, False),
    "reserve": ({"SANITAS_CPU_KERNELS": "1", "SANITAS_HOLD_MEMORY": "scope"}, True),
    "process": ({"SANITAS_CPU_KERNELS": "1", "SANITAS_HOLD_MEMORY": "process"}, False),
}

ROWS = (32, 64, 110, 140, 256, 1284)
#: (K, N) of the zoo models' linear layers (cnn, mlp, vgg-small, alexnet1) and two square ones
WEIGHTS = ((3136, 1024), (1024, 10), (784, 2500), (2500, 1500), (1500, 500), (1152, 256), (576, 512),
           (512, 512), (1024, 1024), (2048, 2048))


def passes(args):
    print(f"integrated gradients, {args.images} images x {args.steps} steps, best of {args.repeats} calls")
    print(f"{'model':14s}" + "".join(f"{c:>26s}" for c in CONFIGS) + "   plain/sanitas  sanitas/reserve  sanitas/process")
    for name in args.models.split(","):
        cells, times = [], {}
        for config, (env, reserve) in CONFIGS.items():
            out = subprocess.run([sys.executable, "-c", CHILD, name, str(args.images), str(args.steps),
                                  str(args.repeats), "reserve" if reserve else "-"], env={**os.environ, **env},
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            times[config] = r["s"]
            cells.append(f"{r['s']:6.3f} s {r['faults']:7d} flt {r['sys']:4.2f} sys")
        print(f"{name:14s}" + "".join(f"{c:>26s}" for c in cells) + f"   {times['plain'] / times['sanitas']:12.2f}x"
              f" {times['sanitas'] / times['reserve']:15.2f}x {times['sanitas'] / times['process']:15.2f}x")


def linear_table():
    import torch
    import torch.nn.functional as F

    from sanitas.explain import kernels

    def best(fn, a, w, b, go, reps=7):
        out = float("inf")
        for i in range(reps + 1):  # one warm-up
            ag = a.detach().clone().requires_grad_(True)
            t0 = time.perf_counter()
            torch.autograd.grad(fn(ag, w, b), ag, go)
            if i:
                out = min(out, time.perf_counter() - t0)
        return out

    print(f"F.linear forward + input gradient, {torch.get_num_threads()} threads; "
          f"blas_lacks_avx512() = {kernels.blas_lacks_avx512()} (vendor {kernels.cpu_vendor()}, "
          f"capability {torch.backends.cpu.get_cpu_capability()})")
    print(f"{'M':>6s} {'K':>6s} {'N':>6s} {'BLAS ms':>9s} {'oneDNN ms':>10s} {'oneDNN/BLAS':>12s}  rule")
    g = torch.Generator().manual_seed(0)
    for k, n in WEIGHTS:
        w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
        for m in ROWS:
            a, go = torch.randn(m, k, generator=g), torch.ones(m, n)
            t_blas, t_onednn = best(F.linear, a, w, b, go), best(kernels.linear_onednn, a, w, b, go)
            pick = "oneDNN" if kernels.linear_prefers_onednn(a, w, b) else "BLAS"
            print(f"{m:6d} {k:6d} {n:6d} {t_blas * 1e3:9.3f} {t_onednn * 1e3:10.3f} {t_onednn / t_blas:12.2f}  {pick}",
                  flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="cnn,mlp,vgg-small,resnet-small,alexnet1")
    ap.add_argument("--linear", action="store_true", help="print the BLAS / oneDNN table for F.linear instead")
    args = ap.parse_args()
    linear_table() if args.linear else passes(args)


if __name__ == "__main__":
    main()
