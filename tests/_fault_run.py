"""The workload test_faults.py kills, corrupts and races: a small, deterministic model randomization run.

``python tests/_fault_run.py OUT [IMAGES]`` runs it into OUT (printing ``ready`` once imports are done and
``done`` at the end; a SanitasError is one line on stderr and exit status 1, as on the command line);
``run(out, images)`` is the same run in the test's own process.
"""

from __future__ import annotations

import sys

import torch

METHODS = ["gradient", "integrated_gradients(steps=8)", "smoothgrad(gradient, samples=4)"]
METRICS = ["spearman_abs", "ssim"]


def workload(images: int = 6):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 8, 8, generator=g)[:images]
    y = (torch.arange(6) % 10)[:images]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        from sanitas.models import build_model

        model = build_model("cnn", (1, 8, 8), 10)
    return model, x, y


def run(out, images: int = 6):
    from sanitas.checks import model_randomization

    model, x, y = workload(images)
    return model_randomization(model, x, y, methods=METHODS, metrics=METRICS, out=out, quiet=True)


if __name__ == "__main__":
    torch.set_num_threads(1)  # as the tests' own process (conftest): the same floating-point sums
    import sanitas.checks  # noqa: F401 - imported before "ready", so a kill lands in the run itself
    from sanitas.errors import SanitasError

    print("ready", flush=True)
    try:
        run(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 6)
    except SanitasError as exc:
        print(f"sanitas: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    print("done", flush=True)
