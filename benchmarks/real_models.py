"""sanitas on ImageNet-size models: a ResNet-50 and a ViT-B/16 at 224x224, 8 RGB images.

    pip install -e ".[bench,hf]"      # quantus 0.6.0, captum 0.9, transformers
    python benchmarks/real_models.py [--models resnet50 vit-b16] [--repeats 3] [--no-cascade]

Random weights (pretrained ones cannot be fetched everywhere; speed does not depend on them).
Per model, in one process, alternating the tools and keeping the best of ``--repeats``:

* gradient of the 8 labels: plain autograd (one forward, ``torch.autograd.grad``), Captum's
  Saliency, sanitas;
* integrated gradients with 32 Gauss-Legendre steps: plain autograd (passes of 32 inputs, the
  best pass size measured here), Captum (``internal_batch_size=32``: its default, all 256 points
  in one pass, needs ~25 GB for the ResNet-50), sanitas (its default pass size);
* the cascading randomization test with the gradient, every parameterized layer a stage, one
  Spearman metric: Quantus 0.6.0's MPRT with a Captum explain function, and sanitas.

The ResNet-50 is written as torchvision writes it (``tests/zoo.py``: in-place ReLUs, ``out +=
identity``); the ViT-B/16 is Hugging Face's ``ViTForImageClassification`` with its default config.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.stats
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from zoo import TVBottleneck, TVResNet  # noqa: E402

from sanitas.checks import model_randomization  # noqa: E402
from sanitas.explain import explain  # noqa: E402
from sanitas.explain.forward import select_logits  # noqa: E402


class Logits(nn.Module):
    """The logits of a model that returns a ModelOutput (for Captum and Quantus, which need a tensor)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return select_logits(self.m(x), x.shape[0])


def resnet50():
    torch.manual_seed(0)
    return TVResNet((3, 4, 6, 3), 64, 3, 1000, TVBottleneck).eval()


def vit_b16():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(num_labels=1000)).eval()


def plain_gradient(model, x, y):
    xg = x.clone().requires_grad_(True)
    out = select_logits(model(xg), len(x))
    (g,) = torch.autograd.grad(out.gather(1, y[:, None]).sum(), xg)
    return g


def plain_ig(model, x, y, steps=32, per_pass=32):
    t, w = np.polynomial.legendre.leggauss(steps)
    alphas, weights = torch.tensor((t + 1) / 2, dtype=x.dtype), torch.tensor(w / 2, dtype=x.dtype)
    pts = (alphas.view(-1, 1, 1, 1, 1) * x.unsqueeze(0)).reshape(-1, *x.shape[1:])  # zero baseline, step-major
    ys = y.repeat(steps)
    grads = []
    for i in range(0, len(pts), per_pass):
        grads.append(plain_gradient(model, pts[i:i + per_pass], ys[i:i + per_pass]))
    g = torch.cat(grads).reshape(steps, *x.shape)
    return x * (g * weights.view(-1, 1, 1, 1, 1)).sum(0)


def best_of(fns: dict, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Best wall time and best CPU time (all threads of this process) of each function. The CPU time
    is the steadier figure on a machine shared with other jobs."""
    best = {k: float("inf") for k in fns}
    cpu = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():  # alternated, so that load affects every tool alike
            t, c = time.perf_counter(), time.process_time()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
            cpu[name] = min(cpu[name], time.process_time() - c)
    return best, cpu


def line(label: str, timed: tuple[dict[str, float], dict[str, float]]) -> str:
    t, c = timed
    return (f"{label:<14}" + ", ".join(f"{k} {t[k]:.2f} s (cpu {c[k]:.2f})" for k in t)
            + f"   sanitas / plain {t['sanitas'] / t['plain autograd']:.2f} (cpu {c['sanitas'] / c['plain autograd']:.2f})"
            + f", captum / sanitas {t['captum'] / t['sanitas']:.2f} (cpu {c['captum'] / c['sanitas']:.2f})")


def quantus_mprt(model, x, y):
    import quantus
    from captum.attr import Saliency

    def explain_func(model, inputs, targets, **kw):
        a = Saliency(model).attribute(torch.as_tensor(inputs), target=torch.as_tensor(targets).long(), abs=False)
        return a.detach().numpy()

    def spearman(a, b, batched=True, **kw):
        return np.array([scipy.stats.spearmanr(u, v)[0] for u, v in zip(a, b)])

    metric = quantus.MPRT(similarity_func=spearman, layer_order="top_down", seed=42, abs=True, normalise=False,
                          disable_warnings=True, display_progressbar=False)
    scores = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None, explain_func=explain_func,
                    device="cpu", batch_size=len(x))
    return len(scores)


def cascade(name, model, logits, x, y):
    """The cascading test with the gradient: Quantus' MPRT (+ Captum) against sanitas."""
    start, c = time.perf_counter(), time.process_time()
    # each layer's own re-initialization where every layer has one (the ResNet: small truncated-normal
    # weights would shrink its signal to denormal floats, slow on CPUs); the ViT's embeddings have none
    init = "default" if name == "resnet50" else "truncated_normal"
    res = model_randomization(model, x, y, methods=["gradient"], metrics=["spearman_abs"], init=init, calibrate=False,
                              quiet=True)
    t_sanitas, c_sanitas = time.perf_counter() - start, time.process_time() - c
    start, c = time.perf_counter(), time.process_time()
    n_layers = quantus_mprt(logits, x, y)
    t_quantus, c_quantus = time.perf_counter() - start, time.process_time() - c
    print(f"cascading MPRT (gradient, {len(res.stages) - 1} stages; Quantus {n_layers} layers): Quantus+Captum "
          f"{t_quantus:.1f} s (cpu {c_quantus:.1f}), sanitas {t_sanitas:.1f} s (cpu {c_sanitas:.1f}), ratio "
          f"{t_quantus / t_sanitas:.2f} (cpu {c_quantus / c_sanitas:.2f})", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["resnet50", "vit-b16"])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-cascade", action="store_true", help="skip the cascading test (the longest part)")
    ap.add_argument("--only-cascade", action="store_true", help="only the cascading test")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from captum.attr import IntegratedGradients, Saliency

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.images} images of 3x224x224")
    for name in args.models:
        model = {"resnet50": resnet50, "vit-b16": vit_b16}[name]()
        logits = Logits(model)
        g = torch.Generator().manual_seed(0)
        x = torch.rand(args.images, 3, 224, 224, generator=g)
        y = torch.randint(0, 1000, (args.images,), generator=g)
        n_params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"\n== {name} ({n_params:.1f} M parameters)", flush=True)
        if args.only_cascade:
            cascade(name, model, logits, x, y)
            continue
        ref = plain_gradient(model, x, y)
        # sanitas' CPU kernels round differently from the plain ones (1e-5 of the largest value at most)
        assert torch.allclose(explain(model, x, y, method="gradient"), ref, rtol=1e-4,
                              atol=1e-5 * float(ref.abs().max()))
        t = best_of({"plain autograd": lambda: plain_gradient(model, x, y),
                     "captum": lambda: Saliency(logits).attribute(x, target=y, abs=False),
                     "sanitas": lambda: explain(model, x, y, method="gradient")}, args.repeats)
        print(line("gradient:", t), flush=True)
        t = best_of({"plain autograd": lambda: plain_ig(model, x, y),
                     "captum": lambda: IntegratedGradients(logits).attribute(x, target=y, n_steps=32,
                                                                            method="gausslegendre",
                                                                            internal_batch_size=32),
                     "sanitas": lambda: explain(model, x, y, method="integrated_gradients", steps=32)},
                    max(1, args.repeats - 1))
        print(line("IG-32:", t), flush=True)
        if not args.no_cascade:
            cascade(name, model, logits, x, y)


if __name__ == "__main__":
    main()
