"""Run every check (model randomization, data randomization, input invariance, quality) on tiny models and
compare their tables with an earlier run.

Kept to show that moving the checks onto one protocol (``sanitas.checks.base.Check``, cells through
``engine.run``; issue 19, section 1) left their results as they were: run it once with the sources before
a change and once after, then compare. The calls use the oldest signatures (positional methods and
metrics, ``evaluate_methods``), which every later version still takes.

    PYTHONPATH=OLD/src   .venv/bin/python scripts/compare_checks.py /tmp/before
    PYTHONPATH=$PWD/src  .venv/bin/python scripts/compare_checks.py /tmp/after --against /tmp/before

For whole papers, ``--reproduce A B`` compares the ``results.parquet`` of every experiment of two
``sanitas reproduce`` output directories the same way.

Each case writes its results directory under OUT/<case>/. With ``--against`` every case's
``results.parquet`` (and ``calibration.csv`` where there is one) must have the same rows and exactly the
same values in every column both runs have; columns only one run has are listed. Exit status 1 on any
difference.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("SANITAS_QUIET", "1")
os.environ.setdefault("SANITAS_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import warnings  # noqa: E402

from sanitas.checks import data_randomization, input_invariance, model_randomization  # noqa: E402
from sanitas.evaluate import evaluate_methods  # noqa: E402
from sanitas.models import build_model  # noqa: E402

SHAPE = (1, 16, 16)
METHODS = ["gradient", "input_x_gradient", "integrated_gradients(steps=8)", "guided_backprop", "gradcam",
           "smoothgrad(gradient, samples=4)"]
METRICS = ["spearman_abs", "spearman", "ssim"]


def _cnn(seed: int):
    torch.manual_seed(seed)
    return build_model("cnn", SHAPE, 10).eval()


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, *SHAPE, generator=g), torch.arange(6) % 10


def cases():
    x, y = _batch()
    true, perm, other = _cnn(0), _cnn(1), _cnn(2)
    yield "data_randomization", lambda out: data_randomization(true, perm, x, y, METHODS, METRICS,
                                                               ceiling_model=other, out=out, seed=3)
    # the true model as its own ceiling: the third variant is the reference model itself
    yield "data_randomization_self_ceiling", lambda out: data_randomization(
        true, perm, x, y, METHODS[:3], METRICS, ceiling_model=true, out=out, calibrate=False)
    ii = [m for m in METHODS if m != "smoothgrad(gradient, samples=4)"]
    yield "input_invariance", lambda out: input_invariance(true, x, y, ii, METRICS, shift=-1.0, out=out)
    yield "input_invariance_shift_baselines", lambda out: input_invariance(
        true, x, y, ii, METRICS, shift=0.5, shift_baselines=True, out=out, calibrate=True, seed=1)
    yield "model_randomization_draws_ceiling", lambda out: model_randomization(
        true, x, y, METHODS[:4], METRICS, draws=2, ceiling_model=other, out=out, map_stats=["map_sum"])
    yield "model_randomization_independent", lambda out: model_randomization(
        true, x, y, ["gradient", "gradcam"], METRICS, mode="independent", init="uniform", out=out, seed=2)
    yield "model_randomization_random_logit", lambda out: model_randomization(
        true, x, y, ["gradient"], ["spearman_abs"], mode="random_logit", out=out, calibrate=False)
    yield "quality", lambda out: evaluate_methods(true, x, y, ["gradient", "input_x_gradient", "random"],
                                                  layers="all", n_shuffles=2, out=out, figures=False,
                                                  test_method="asymptotic")


def compare(name: str, before: Path, after: Path) -> list[str]:
    """Differences between two results files of one case (an empty list when they agree)."""
    if not before.exists() and not after.exists():
        return []
    if not before.exists() or not after.exists():
        return [f"{name}: only one run wrote it"]
    read = pd.read_parquet if before.suffix == ".parquet" else pd.read_csv
    a, b = read(before), read(after)
    problems = []
    only_a, only_b = [c for c in a if c not in b], [c for c in b if c not in a]
    if only_a:
        problems.append(f"{name}: columns only before: {only_a}")
    if only_b:
        print(f"  {name}: columns added: {only_b}")
    if len(a) != len(b):
        return problems + [f"{name}: {len(a)} rows before, {len(b)} after"]
    common = [c for c in a if c in b]
    try:
        pd.testing.assert_frame_equal(a[common].reset_index(drop=True), b[common].reset_index(drop=True),
                                      check_exact=True)
    except AssertionError as exc:
        problems.append(f"{name}: {exc}")
    return problems


def compare_reproductions(a: Path, b: Path) -> list[str]:
    """Differences between the results tables of every experiment two ``sanitas reproduce`` runs both have."""
    problems, seen = [], 0
    for before in sorted(a.glob("*/*/results.parquet")):
        rel = before.relative_to(a)
        after = b / rel
        if after.exists():
            seen += 1
            problems += compare(str(rel), before, after)
        else:
            print(f"  {rel}: not in {b}")
    print(f"{seen} experiments compared")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, nargs="?", help="where this run writes its results directories")
    ap.add_argument("--against", type=Path, help="an earlier run's OUT to compare with")
    ap.add_argument("--reproduce", type=Path, nargs=2, metavar=("A", "B"),
                    help="compare two `sanitas reproduce` output directories instead")
    args = ap.parse_args(argv)
    if args.reproduce:
        problems = compare_reproductions(*args.reproduce)
        print("\n".join(problems) if problems else "same rows and values in every experiment")
        return 1 if problems else 0
    problems = []
    warnings.simplefilter("ignore", FutureWarning)  # the oldest signatures, on purpose
    for case, run in cases():
        res = run(args.out / case)
        print(f"{case}: {len(res.table)} rows, methods {sorted(set(res.table['method']))}")
        if args.against is not None:
            for fname in ("results.parquet", "calibration.csv"):
                problems += compare(f"{case}/{fname}", args.against / case / fname, args.out / case / fname)
    if args.against is not None:
        print("\n".join(problems) if problems else "same rows and values in every case")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
