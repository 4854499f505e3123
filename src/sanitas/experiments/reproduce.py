"""Run a config (or every paper's) into a results directory, resumably, and judge the claims.

Layout of ``sanitas run CONFIG --out DIR``::

    DIR/<experiment>/       one check's results, figures and report.html (resumes inside the check)
    DIR/<experiment>/done.json   written last: a finished experiment is loaded, never re-run
    DIR/claims.csv, claims.json, report.html, study.json

``sanitas reproduce all --out DIR`` puts one such directory per paper under ``DIR/<paper>/`` and a
combined ``DIR/report.html`` and ``DIR/claims.csv`` on top.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sanitas.errors import ConfigError, SanitasError
from sanitas.experiments.claims import claims_table, evaluate_claim
from sanitas.experiments.config import list_papers, load_config, resolve
from sanitas.experiments.runners import RUNNERS, Outcome
from sanitas.utils.hashing import config_hash
from sanitas.utils.io import atomic_write_json, atomic_write_table

DONE = "done.json"


@dataclass
class PaperRun:
    """A config's experiments (outcome, or why it was not run) and its claims table."""

    config: dict[str, Any]
    out: Path
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    not_run: dict[str, str] = field(default_factory=dict)
    claims: pd.DataFrame | None = None
    seconds: float = 0.0
    report: Path | None = None

    @property
    def paper(self) -> str:
        return self.config["paper"]


def _experiment_key(spec: dict) -> str:
    from sanitas import __version__

    return config_hash({"spec": spec, "sanitas": __version__})


def _save_done(out: Path, spec: dict, oc: Outcome) -> None:
    if oc.summary is not None:
        atomic_write_table(out / "summary.parquet", oc.summary)
    atomic_write_json(out / DONE, {"key": _experiment_key(spec), "spec": spec, "scalars": oc.scalars,
                                   "seconds": oc.seconds, "figures": [str(f.relative_to(out)) for f in oc.figures],
                                   "report": oc.report.name if oc.report else None})


def write_claims(directory: Path, claims: pd.DataFrame) -> None:
    """``claims.csv`` and ``claims.json`` (one record per claim) in ``directory``."""
    atomic_write_table(directory / "claims.csv", claims)
    atomic_write_json(directory / "claims.json", json.loads(claims.to_json(orient="records")))


def judge(run: PaperRun) -> pd.DataFrame:
    """Judge a run's claims on its outcomes (fresh or loaded from disk) and write the claims files."""
    verdicts = [evaluate_claim(c, run.paper, run.outcomes.get(c["experiment"]), run.not_run.get(c["experiment"]))
                for c in run.config.get("claims") or []]
    run.claims = claims_table(verdicts)
    write_claims(run.out, run.claims)
    return run.claims


def load_outcome(out: Path, spec: dict | None = None) -> Outcome | None:
    """The stored outcome of a finished experiment (``None`` if unfinished or its spec changed)."""
    done = out / DONE
    if not done.is_file() or not (out / "results.parquet").is_file():
        return None
    try:
        info = json.loads(done.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if spec is not None and info.get("key") != _experiment_key(spec):
        return None
    table = pd.read_parquet(out / "results.parquet")
    cal = pd.read_csv(out / "calibration.csv") if (out / "calibration.csv").is_file() else None
    summary = pd.read_parquet(out / "summary.parquet") if (out / "summary.parquet").is_file() else None
    figs = [out / f for f in info.get("figures", []) if (out / f).is_file()]
    report = out / info["report"] if info.get("report") else None
    return Outcome(table, info.get("scalars", {}), cal, figs, report, float(info.get("seconds", 0.0)), summary)


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def run_config(config: dict | str | Path, out: str | Path, *, quick: bool = False, images: int | None = None,
               only: list[str] | None = None, quiet: bool = False, report: bool = True) -> PaperRun:
    """Run every experiment of a config into ``out`` (resuming), then judge its claims."""
    cfg = load_config(config) if not isinstance(config, dict) else config
    cfg = resolve(cfg, quick=quick, images=images, only=only)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = PaperRun(cfg, out)
    t0 = time.perf_counter()
    for name, spec in cfg["experiments"].items():
        if spec.get("skip"):
            run.not_run[name] = f"skipped: {spec['skip']}"
            continue
        exp_out = out / name
        spec_for_key = {k: v for k, v in spec.items() if k != "description"}
        oc = load_outcome(exp_out, spec_for_key)
        if oc is not None:
            _log(f"[{cfg['paper']}] {name}: finished earlier ({oc.seconds:.0f} s), loaded", quiet)
            run.outcomes[name] = oc
            continue
        _log(f"[{cfg['paper']}] {name}: running {spec['check']} on {spec['model']} ({spec['images']} images)", quiet)
        exp_out.mkdir(parents=True, exist_ok=True)
        try:
            oc = RUNNERS[spec["check"]](spec, exp_out, quiet)
        except SanitasError as exc:
            run.not_run[name] = f"failed: {exc}"
            _log(f"[{cfg['paper']}] {name}: FAILED: {exc}", quiet)
            continue
        except Exception as exc:  # a bug must not take the other papers' results down with it
            run.not_run[name] = f"failed: {type(exc).__name__}: {exc}"
            traceback.print_exc()
            continue
        _save_done(exp_out, spec_for_key, oc)
        run.outcomes[name] = oc
        _log(f"[{cfg['paper']}] {name}: done in {oc.seconds:.0f} s", quiet)
    run.seconds = time.perf_counter() - t0
    judge(run)
    atomic_write_json(out / "study.json", {"paper": cfg["paper"], "config": cfg, "seconds": run.seconds,
                                           "experiment_order": list(cfg["experiments"]),
                                         "experiment_seconds": {k: o.seconds for k, o in run.outcomes.items()},
                                         "not_run": run.not_run})
    if report:
        from sanitas.experiments.report import paper_report

        run.report = paper_report(run)
    return run


def reproduce(papers: str | list[str] = "all", out: str | Path = "sanitas-reproduce", *, quick: bool = False,
              images: int | None = None, quiet: bool = False) -> tuple[list[PaperRun], pd.DataFrame, Path]:
    """Run the shipped configs (``"all"`` or paper names); returns (runs, claims table, combined report)."""
    from sanitas.experiments.report import combined_report

    names = list_papers() if papers == "all" or papers == ["all"] else (
        [papers] if isinstance(papers, str) else list(papers))
    unknown = [p for p in names if p not in list_papers()]
    if unknown:
        raise ConfigError(f"unknown paper(s) {unknown}: choose from {list_papers()} or 'all'")
    out = Path(out)
    t0 = time.perf_counter()
    runs = [run_config(name, out / name, quick=quick, images=images, quiet=quiet) for name in names]
    claims = pd.concat([r.claims for r in runs], ignore_index=True)
    write_claims(out, claims)
    total = time.perf_counter() - t0
    atomic_write_json(out / "reproduce.json", {"papers": names, "quick": quick, "images": images,
                                               "seconds": total, "paper_seconds": {r.paper: r.seconds for r in runs}})
    report = combined_report(runs, out, claims, seconds=total)
    return runs, claims, report


def load_run(out: str | Path) -> PaperRun:
    """A finished (or partly finished) ``run_config`` directory, read back from disk."""
    out = Path(out)
    info_path = out / "study.json"
    if not info_path.is_file():
        raise ConfigError(f"{out} has no study.json: not a directory written by `sanitas run` / `sanitas reproduce`")
    info = json.loads(info_path.read_text())
    cfg = info["config"]
    order = info.get("experiment_order") or list(cfg["experiments"])   # JSON keys are stored sorted
    cfg["experiments"] = {k: cfg["experiments"][k] for k in order}
    run = PaperRun(cfg, out, seconds=float(info.get("seconds", 0.0)), not_run=dict(info.get("not_run", {})))
    for name in cfg["experiments"]:
        oc = load_outcome(out / name)
        if oc is not None:
            run.outcomes[name] = oc
        else:
            run.not_run.setdefault(name, "no finished results in this directory")
    run.claims = pd.read_csv(out / "claims.csv") if (out / "claims.csv").is_file() else None
    return run
