"""The executors on one machine: a paper's quick profile run locally and on Ray with 1 and 2 workers.

    pip install -e ".[ray]"
    python benchmarks/executors.py [--paper sanity-checks] [--full] [--repeats 1]

Every run starts from an empty results directory with the reference models already trained and
cached (a first run trains them; that run is not timed). Only the experiments on the engine (model
and data randomization, input invariance) send cells to the executor; the others run in the driver
either way, so the script reports the wall time of the whole profile and of those experiments, the number of cells they computed, and
the overhead per cell: ``(t_ray - t_local) / cells``. It also checks that every executor wrote the
same results tables, byte for byte, as the local one. Ray is started by the script with
``num_cpus`` = the number of workers and shut down between runs (its start-up is timed apart).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from sanitas.experiments import run_config
from sanitas.experiments.config import load_config


#: the checks whose cells an executor runs
ON_ENGINE = ("model_randomization", "data_randomization", "input_invariance")


def _cells(out: Path, experiments: list[str]) -> int:
    """Cells the experiments on the engine computed (one file per cell in their stores)."""
    return sum(len(list((out / name / "cells").glob("*.pt"))) for name in experiments)


def _tables(out: Path, experiments: list[str]) -> dict[str, bytes]:
    return {f"{name}/{t}": (out / name / t).read_bytes() for name in experiments
            for t in ("results.csv", "results.parquet") if (out / name / t).exists()}


def _one(paper: str, quick: bool, executor, root: Path, label: str) -> dict:
    out = root / label
    t = time.perf_counter()
    run = run_config(paper, out, quick=quick, quiet=True, report=False, executor=executor)
    total = time.perf_counter() - t
    exps = [n for n, spec in run.config["experiments"].items()
            if spec.get("check") in ON_ENGINE and n in run.outcomes]
    return {"label": label, "seconds": total, "mr_seconds": sum(run.outcomes[n].seconds for n in exps),
            "cells": _cells(out, exps), "failed": dict(run.failed), "tables": _tables(out, exps)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paper", default="sanity-checks")
    ap.add_argument("--full", action="store_true", help="the full profile instead of the quick one")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    quick = not args.full
    load_config(args.paper)  # an unknown paper fails here, before anything runs

    from sanitas.executors import RayExecutor

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run_config(args.paper, root / "warm-up", quick=quick, quiet=True, report=False)  # trains/caches models
        rows.append(_one(args.paper, quick, "local", root, "local"))
        for n in args.workers:
            t = time.perf_counter()
            ex = RayExecutor(num_cpus=n)
            start = time.perf_counter() - t
            try:
                row = _one(args.paper, quick, ex, root, f"ray-{n}")
            finally:
                ex.close()
            row["ray_start_seconds"] = start
            rows.append(row)
    base = rows[0]
    print(f"{args.paper} ({'quick' if quick else 'full'} profile), torch {torch.__version__}, "
          f"{torch.get_num_threads()} intra-op threads in the driver")
    print(f"{'executor':<9} {'total s':>8} {'rand. s':>8} {'cells':>6} {'overhead/cell ms':>17} {'same tables':>12}")
    for r in rows:
        over = 1e3 * (r["mr_seconds"] - base["mr_seconds"]) / max(r["cells"], 1)
        same = r["tables"] == base["tables"]
        start = f"  (Ray start {r['ray_start_seconds']:.1f} s)" if "ray_start_seconds" in r else ""
        print(f"{r['label']:<9} {r['seconds']:>8.1f} {r['mr_seconds']:>8.1f} {r['cells']:>6} "
              f"{'-' if r is base else f'{over:.0f}':>17} {str(same):>12}{start}")
        if r["failed"]:
            print(f"  failed: {r['failed']}")
    if args.json:
        Path(args.json).write_text(json.dumps([{k: v for k, v in r.items() if k != "tables"} for r in rows],
                                              indent=1))


if __name__ == "__main__":
    main()
