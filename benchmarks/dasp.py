"""DASP benchmarks: seconds per image on the reference ``cnn``, and accuracy against exact Shapley values.

    python benchmarks/dasp.py                      # timing: cnn at 28x28, 16 and 64 coalition sizes
    python benchmarks/dasp.py --images 2 --sizes 16 64 --groups 2
    python benchmarks/dasp.py --accuracy           # error vs exact Shapley as n_sizes grows (tiny nets)

Timing uses an untrained ``cnn`` (weights from a fixed seed; the cost does not depend on them)
and random images in [0, 1]; one player per pixel (the model has one channel, so per-element
and per-pixel are the same), baseline 0. The first image's time includes the one-off
converter trace, so it is reported separately from the steady-state mean.

Accuracy: the tiny networks of ``tests/test_dasp.py`` (3x3 inputs, M = 9 players, and a 4x4
two-channel conv net with M = 16 pixel players) against exact Shapley values by enumeration.
The error of one (input, class) is ``||phi_dasp - phi_exact|| / ||phi_exact||`` over players;
reported as the mean (and the worst seed's mean) over seeds x inputs x classes, together with
the completeness gap ``|sum phi - (f(x) - f(b))| / mean |f(x) - f(b)|`` and, for scale, the
same error for gradient x input.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from sanitas.models import build_model  # noqa: E402
from sanitas.shapley import dasp, shapley_exact  # noqa: E402
from sanitas.utils.seed import isolated_rng, make_generator  # noqa: E402

D = torch.float64


# --------------------------------------------------------------------------- timing


def timing(images: int, sizes: list[int], groups, batch_size: int | None) -> None:
    with isolated_rng(0):
        model = build_model("cnn", input_shape=(1, 28, 28)).eval()
    x = torch.rand(images, 1, 28, 28, generator=make_generator(0))
    print(f"cnn 28x28, untrained; players: {groups or 'per element (= per pixel, 1 channel)'}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print(f"{'n_sizes':>8} {'players':>8} {'pairs/img':>10} {'first s':>9} {'mean s/img':>11} {'pairs/s':>9}")
    for n in sizes:
        times = []
        for i in range(images):
            t0 = time.perf_counter()
            a = dasp(model, x[i:i + 1], n_sizes=n, feature_groups=groups, batch_size=batch_size, quiet=True,
                     return_players=True)
            times.append(time.perf_counter() - t0)
        m = a.shape[-1]
        pairs = m * min(n, m)
        steady = sum(times[1:]) / (len(times) - 1) if len(times) > 1 else times[0]
        print(f"{n:>8} {m:>8} {pairs:>10} {times[0]:>9.2f} {steady:>11.2f} {pairs / steady:>9.0f}", flush=True)


# --------------------------------------------------------------------------- accuracy


def tiny_mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(9, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 3)).double().eval()


def tiny_cnn(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 16), nn.ReLU(),
                         nn.Linear(16, 3)).double().eval()


def small_cnn(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 2 * 2, 16), nn.ReLU(), nn.Linear(16, 3)).double().eval()


def rel_error(a, ref):
    return ((a - ref).norm(dim=-1) / ref.norm(dim=-1))  # (N, K)


def grad_x_input(net, x, b):
    xs = x.clone().requires_grad_(True)
    out = net(xs)
    k = out.shape[1]
    g = torch.stack([torch.autograd.grad(out[:, c].sum(), xs, retain_graph=True)[0] for c in range(k)], 1)
    return (g * (x - b).unsqueeze(1)).reshape(x.shape[0], k, -1)


def accuracy(seeds: int, inputs: int) -> None:
    cases = [("mlp 9 el.", tiny_mlp, (1, 3, 3), None, [1, 2, 3, 5, 9]),
             ("conv 9 el.", tiny_cnn, (1, 3, 3), None, [1, 2, 3, 5, 9]),
             ("conv 16 px", small_cnn, (2, 4, 4), "pixel", [1, 2, 4, 8, 16])]
    with isolated_rng(0):
        for name, make, shape, groups, ns in cases:
            rows = {}
            gi_err = []
            for s in range(seeds):
                net = make(s)
                g = make_generator(100 + s)
                x = torch.randn(inputs, *shape, generator=g, dtype=D)
                b = torch.zeros_like(x)
                ex = shapley_exact(net, x, b, feature_groups=groups, return_players=True)
                with torch.no_grad():
                    total = net(x) - net(b)
                if groups is None:
                    gi_err.append(float(rel_error(grad_x_input(net, x, b), ex).mean()))
                for mode in ("uniform", "random"):
                    for n in ns:
                        a = dasp(net, x, b, n_sizes=n, sizes=mode, feature_groups=groups, seed=s, quiet=True,
                                 return_players=True)
                        err = float(rel_error(a, ex).mean())
                        comp = float(((a.sum(-1) - total).abs() / total.abs().mean()).mean())
                        rows.setdefault((mode, n), []).append((err, comp))
            print(f"\n{name} (M = {ex.shape[-1]}), {seeds} seeds x {inputs} inputs x {ex.shape[1]} classes")
            print(f"  {'sizes':>8} {'n_sizes':>7} {'rel.err mean':>12} {'worst seed':>10} {'completeness gap':>17}")
            for (mode, n), r in rows.items():
                errs = [e for e, _ in r]
                comps = [c for _, c in r]
                print(f"  {mode:>8} {n:>7} {sum(errs) / len(errs):>12.3f} {max(errs):>10.3f} "
                      f"{sum(comps) / len(comps):>17.3f}")
            if gi_err:
                print(f"  gradient x input: rel.err mean {sum(gi_err) / len(gi_err):.3f}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--accuracy", action="store_true", help="error vs exact Shapley on tiny nets instead of timing")
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 64])
    p.add_argument("--groups", default=None, help="feature_groups: an int patch size or 'pixel' (default: elements)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--inputs", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.accuracy:
        accuracy(a.seeds, a.inputs)
    else:
        groups = int(a.groups) if a.groups and a.groups.isdigit() else a.groups
        timing(a.images, a.sizes, groups, a.batch_size)


if __name__ == "__main__":
    main()
