"""Cost of competition for pixels: CGI vs input_x_gradient.

    python benchmarks/competition.py

1. 256 Fashion-MNIST images, trained paper cnn (K = 10).
2. A random-weights CNN with a 1000-way head on 64x64 RGB inputs (ImageNet-sized head), 8 images,
   exact (all 1000 classes, in chunks) and top-M approximations.
Prints seconds and the ratio CGI / input_x_gradient for each.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from sanitas.data import load_dataset
from sanitas.explain import explain, nonzero_fraction
from sanitas.models import train


def best(fn, repeats=3):
    t_best = float("inf")
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        t_best = min(t_best, time.perf_counter() - t)
    return t_best, out


def big_head_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(64 * 16, 256), nn.ReLU(), nn.Linear(256, 1000)).eval()


def main():
    model = train("cnn", "fashion-mnist").model.eval()
    ds = load_dataset("fashion-mnist", "test", limit=256)
    t_ixg, _ = best(lambda: explain(model, ds.x, ds.y, method="input_x_gradient"))
    t_cgi, cgi = best(lambda: explain(model, ds.x, ds.y, method="competitive(input_x_gradient)"))
    print(f"cnn, 256 images, K=10: input_x_gradient {t_ixg:.3f} s, CGI {t_cgi:.3f} s, ratio {t_cgi / t_ixg:.1f}x; "
          f"CGI non-zero fraction {nonzero_fraction(cgi).mean():.3f}")
    big = big_head_model()
    x = torch.rand(8, 3, 64, 64)
    y = torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(0))
    t_ixg, _ = best(lambda: explain(big, x, y, method="input_x_gradient"))
    print(f"1000-way head, 8 images 64x64: input_x_gradient {t_ixg:.3f} s")
    for opts in [{"class_chunk": 100}, {"class_chunk": 250}, {"top_classes": 50}, {"top_classes": 10}]:
        t, m = best(lambda: explain(big, x, y, method="competitive(input_x_gradient)", **opts), repeats=1)
        print(f"  CGI {opts}: {t:.2f} s, ratio {t / t_ixg:.0f}x, non-zero fraction {nonzero_fraction(m).mean():.4f}")


if __name__ == "__main__":
    main()
