"""Run a config (or every paper's) into a results directory, resumably, and judge the claims.

Layout of ``sanitas run CONFIG --out DIR``::

    DIR/<experiment>/       one check's results, figures and report.html (resumes inside the check)
    DIR/<experiment>/done.json   written last: a finished experiment is loaded, never re-run; it holds
                            the SHA-256 of the tables it loads, so a damaged one is recomputed
    DIR/claims.csv, claims.json, report.html, study.json

A finished experiment is keyed by its spec and by the content of the model and dataset files it
names (a replaced ``model.pt`` runs again). One process at a time writes a directory (an OS lock);
a failed experiment is reported on stderr (also with ``--quiet``) and in ``PaperRun.failed``.

``sanitas reproduce all --out DIR`` puts one such directory per paper under ``DIR/<paper>/`` and a
combined ``DIR/report.html`` and ``DIR/claims.csv`` on top.
"""

from __future__ import annotations

import contextlib
import json
import time
import traceback
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from sanitas.errors import ConfigError, SanitasError, StorageError
from sanitas.experiments.claims import claims_table, evaluate_claim
from sanitas.experiments.config import list_papers, load_config, resolve, validate
from sanitas.experiments.runners import Outcome, dataset_of, model_label, model_sources, runner_for
from sanitas.utils.hashing import config_hash
from sanitas.utils.io import (atomic_write_json, atomic_write_table, directory_lock, ensure_dir, read_json, read_table,
                              sha256_file)
from sanitas.utils.progress import log, warn

DONE = "done.json"
#: Bump when what done.json records changes: older finished experiments then run again.
#: 3: done.json records references.parquet (floors and ceilings), which claims read.
DONE_FORMAT = 3
#: The tables of a finished experiment that are read back, checked against done.json's SHA-256.
STORED_TABLES = ("results.parquet", "summary.parquet", "calibration.csv", "references.parquet")
#: The floor and ceiling rows of a model randomization (``reference`` column: floor / ceiling).
REFERENCES = "references.parquet"


@dataclass
class StoredOutcome(Outcome):
    """An :class:`Outcome` with the reference rows its experiment stored (``references.parquet``: the floor,
    draw r vs draw 0 of a stage, and the ceiling, a second trained model vs the reference), which claims
    read with ``{..., reference: floor|ceiling}``. ``None`` when the experiment stored none."""

    references: pd.DataFrame | None = None


def _with_references(oc: Outcome, references: pd.DataFrame | None) -> StoredOutcome:
    return StoredOutcome(**{f.name: getattr(oc, f.name) for f in fields(Outcome)}, references=references)


def _init_dirs(spec: dict, out: Path) -> list[Path]:
    inits = spec.get("init")
    if spec.get("check") != "model_randomization" or not isinstance(inits, list):
        return []
    return [out / str(init) for init in inits]


def _clear_references(spec: dict, out: Path) -> None:
    """References of an earlier run (``draws: 2``, now 1) must not pass for this run's: a check writes them
    only when it has some (a randomization rebuilds them from its stored cells when it resumes)."""
    for folder in [out, *_init_dirs(spec, out)]:
        for name in (REFERENCES, "references.csv"):
            (folder / name).unlink(missing_ok=True)


def _gather_references(spec: dict, out: Path) -> None:
    """An experiment that ran one randomization per init scheme (``init: [a, b]``) keeps each scheme's
    references under ``out/<init>/``; they are written together to ``out/references.parquet`` with an
    ``init`` column, as its results are, so that claims select them with ``init:``."""
    parts = []
    for folder in _init_dirs(spec, out):
        path = folder / REFERENCES
        if path.is_file():
            frame = read_table(path)
            frame.insert(0, "init", folder.name)
            parts.append(frame)
    if parts:
        atomic_write_table(out / REFERENCES, pd.concat(parts, ignore_index=True))


@dataclass
class PaperRun:
    """A config's experiments (outcome, or why it was not run) and its claims table."""

    config: dict[str, Any]
    out: Path
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    not_run: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)   # the subset of not_run that failed: why
    claims: pd.DataFrame | None = None
    seconds: float = 0.0
    report: Path | None = None

    @property
    def paper(self) -> str:
        return self.config["paper"]


def _path_digest(value) -> str | None:
    """SHA-256 of a file (or of every file under a folder) that a spec names by path; None otherwise."""
    if not isinstance(value, str) or not value:
        return None
    path = Path(value).expanduser()
    try:
        if path.is_file():
            return sha256_file(path)
        if path.is_dir():
            return config_hash({str(f.relative_to(path)): sha256_file(f) for f in sorted(path.rglob("*"))
                                if f.is_file()}, length=64)
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc}") from None
    return None


def _experiment_key(spec: dict) -> str:
    """The key of a finished experiment: its spec, the content of the model / dataset files it names
    (a model.pt replaced under the same name is new work), the sanitas version and done.json's format."""
    from sanitas import __version__

    named = [f for src in model_sources(spec) for f in src.files()] if spec.get("model") is not None else []
    dataset = dataset_of(spec) if spec.get("dataset") is not None else None
    named.append(dataset.get("path") if isinstance(dataset, dict) else dataset)
    digests = {str(v): _path_digest(v) for v in named}
    files = {k: d for k, d in digests.items() if d is not None}
    return config_hash({"spec": spec, "sanitas": __version__, "files": files, "format": DONE_FORMAT})


def _save_done(out: Path, spec: dict, oc: Outcome) -> None:
    if oc.summary is not None:
        atomic_write_table(out / "summary.parquet", oc.summary)
    tables = {name: sha256_file(out / name) for name in STORED_TABLES if (out / name).is_file()}
    atomic_write_json(out / DONE, {"key": _experiment_key(spec), "spec": spec, "scalars": oc.scalars,
                                   "seconds": oc.seconds, "figures": [str(f.relative_to(out)) for f in oc.figures],
                                   "report": oc.report.name if oc.report else None, "tables": tables})


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


def damage(out: Path) -> str | None:
    """Why a finished experiment's stored results cannot be trusted (``None``: they can, or it never
    finished): done.json unreadable, or a table missing or not matching its recorded SHA-256."""
    done = out / DONE
    if not done.is_file():
        return None
    try:
        info = read_json(done)
    except StorageError as exc:
        return str(exc)
    tables = info.get("tables")
    if not isinstance(tables, dict) or "results.parquet" not in tables:
        return f"{done} was written by an older sanitas (no checksums)"
    for name, digest in tables.items():
        if name not in STORED_TABLES:
            continue
        path = out / name
        if not path.is_file():
            return f"{path} is missing"
        if sha256_file(path) != digest:
            return f"{path} does not match its checksum in {DONE} (truncated or changed)"
    return None


def load_outcome(out: Path, spec: dict | None = None) -> Outcome | None:
    """The stored outcome of a finished experiment (``None`` if unfinished, its spec changed, or its stored
    results are damaged: see :func:`damage`, the caller says so and recomputes)."""
    done = out / DONE
    if not done.is_file() or damage(out) is not None:
        return None
    info = read_json(done)
    if spec is not None and info.get("key") != _experiment_key(spec):
        return None
    tables = info["tables"]
    table = read_table(out / "results.parquet")
    cal = read_table(out / "calibration.csv") if "calibration.csv" in tables else None
    summary = read_table(out / "summary.parquet") if "summary.parquet" in tables else None
    refs = read_table(out / REFERENCES) if REFERENCES in tables else None
    figs = [out / f for f in info.get("figures", []) if (out / f).is_file()]
    report = out / info["report"] if info.get("report") else None
    return StoredOutcome(table, info.get("scalars", {}), cal, figs, report, float(info.get("seconds", 0.0)), summary,
                         references=refs)


def run_config(config: dict | str | Path, out: str | Path, *, quick: bool = False, images: int | None = None,
               only: list[str] | None = None, quiet: bool = False, report: bool = True,
               executor: str | Any | None = None, address: str | None = None,
               dataset: str | None = None) -> PaperRun:
    """Run every experiment of a config into ``out`` (resuming), then judge its claims.

    ``dataset`` (e.g. ``"mnist"``) runs the same protocol on another dataset: every experiment's dataset is
    replaced (:func:`~sanitas.experiments.config.resolve`), and the dataset is loaded first, so that one that
    is neither on disk nor downloadable is an error before anything runs.

    A failed experiment does not stop the others; it is listed in ``PaperRun.failed`` (the command
    line exits non-zero). ``out`` is locked against a second writer for the whole run.
    ``executor`` (``"local"``, ``"ray"`` with ``address``, or an executor object; default: the
    enclosing :func:`~sanitas.executors.use_executor`, else local) runs the cells of the model and
    data randomization and input invariance experiments; the others run here. Results are the same
    whichever runs them, and a run interrupted under one executor resumes under the other.
    """
    if isinstance(config, dict):
        validate(config)
        cfg = config
    else:
        cfg = load_config(config)
    cfg = resolve(cfg, quick=quick, images=images, only=only, dataset=dataset)
    if dataset is not None:
        available(dataset)
    with directory_lock(out) as directory, _executor_scope(executor, address):
        return _run_locked(cfg, directory, quiet, report)


def available(dataset: str) -> None:
    """Load ``dataset``'s test split (from disk, or downloaded and checked against its SHA-256 where that is
    allowed: :mod:`sanitas.data.idx_datasets`); raises :class:`~sanitas.errors.DatasetNotFoundError` saying
    where it looked and how to get it."""
    from sanitas.data import load_dataset

    load_dataset(dataset, "test")


def _executor_scope(executor, address):
    """A :func:`use_executor` block for an executor choice; no block (the caller's, or local) for None."""
    if executor is None:
        if address:
            raise ConfigError("an address applies to the ray executor; add --executor ray")
        return contextlib.nullcontext()
    from sanitas.executors import use_executor

    return use_executor(executor, address)


def _run_locked(cfg: dict, out: Path, quiet: bool, report: bool) -> PaperRun:
    from sanitas.models.train import training_defaults   # imports torch: not when a finished study is read

    run = PaperRun(cfg, out)
    t0 = time.perf_counter()
    for name, spec in cfg["experiments"].items():
        if spec.get("skip"):
            run.not_run[name] = f"skipped: {spec['skip']}"
            continue
        exp_out = out / name
        spec_for_key = {k: v for k, v in spec.items() if k != "description"}
        why = damage(exp_out)
        if why is not None:
            warn(f"[{cfg['paper']}] {name}: stored results cannot be used ({why}); recomputing them")
        oc = load_outcome(exp_out, spec_for_key)
        if oc is not None:
            log(f"[{cfg['paper']}] {name}: finished earlier ({oc.seconds:.0f} s), loaded", quiet=quiet)
            run.outcomes[name] = oc
            continue
        log(f"[{cfg['paper']}] {name}: running {spec['check']} on {model_label(spec)} ({spec['images']} images)",
            quiet=quiet)
        try:
            ensure_dir(exp_out)
            (exp_out / DONE).unlink(missing_ok=True)  # unfinished until this run says otherwise
            _clear_references(spec, exp_out)
            with training_defaults(**(spec.get("training") or {})):   # the models this experiment trains
                oc = runner_for(spec["check"])(spec, exp_out, quiet)
            _gather_references(spec, exp_out)
            _save_done(exp_out, spec_for_key, oc)
            refs = exp_out / REFERENCES
            oc = _with_references(oc, read_table(refs) if refs.is_file() else None)
        except SanitasError as exc:
            run.failed[name] = str(exc)
            run.not_run[name] = f"failed: {exc}"
            warn(f"[{cfg['paper']}] experiment {name!r} failed: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - a bug must not take the other papers' results down with it
            run.failed[name] = f"{type(exc).__name__}: {exc}"
            run.not_run[name] = f"failed: {run.failed[name]}"
            traceback.print_exc()
            warn(f"[{cfg['paper']}] experiment {name!r} failed: {type(exc).__name__}: {exc} (a bug: please report it)")
            continue
        run.outcomes[name] = oc
        log(f"[{cfg['paper']}] {name}: done in {oc.seconds:.0f} s", quiet=quiet)
    run.seconds = time.perf_counter() - t0
    judge(run)
    atomic_write_json(out / "study.json", {"paper": cfg["paper"], "config": cfg, "seconds": run.seconds,
                                           "experiment_order": list(cfg["experiments"]),
                                           "experiment_seconds": {k: o.seconds for k, o in run.outcomes.items()},
                                           "not_run": run.not_run, "failed": run.failed})
    if report:
        from sanitas.experiments.report import paper_report

        run.report = paper_report(run)
    return run


class Reproduction(NamedTuple):
    """What :func:`reproduce` returns: each paper's run, the combined claims table, the report's path.
    A named tuple, so ``runs, claims, report = reproduce(...)`` works as well as ``result.claims``."""

    runs: list[PaperRun]
    claims: pd.DataFrame
    report: Path


def reproduce(papers: str | list[str] = "all", out: str | Path = "sanitas-reproduce", *, quick: bool = False,
              images: int | None = None, quiet: bool = False, executor: str | Any | None = None,
              address: str | None = None, dataset: str | None = None) -> Reproduction:
    """Run the shipped configs (``"all"`` or paper names); returns (runs, claims table, combined report).
    ``executor``, ``address``: as in :func:`run_config` (one Ray session serves every paper); ``dataset``
    (e.g. ``"mnist"``): the same protocols on another dataset (see :func:`run_config`)."""
    from sanitas.experiments.report import combined_report

    names = list_papers() if papers == "all" or papers == ["all"] else (
        [papers] if isinstance(papers, str) else list(papers))
    unknown = [p for p in names if p not in list_papers()]
    if unknown:
        raise ConfigError(f"unknown paper(s) {unknown}: choose from {list_papers()} or 'all'")
    if dataset is not None:
        available(dataset)
    t0 = time.perf_counter()
    with directory_lock(out) as directory, _executor_scope(executor, address):
        runs = [run_config(name, directory / name, quick=quick, images=images, quiet=quiet, dataset=dataset)
                for name in names]
        claims = pd.concat([r.claims for r in runs], ignore_index=True)
        write_claims(directory, claims)
        total = time.perf_counter() - t0
        atomic_write_json(directory / "reproduce.json", {"papers": names, "quick": quick, "images": images,
                                                         "dataset": dataset, "seconds": total,
                                                         "paper_seconds": {r.paper: r.seconds for r in runs}})
        report = combined_report(runs, directory, claims, seconds=total)
    return Reproduction(runs, claims, report)


def load_run(out: str | Path) -> PaperRun:
    """A finished (or partly finished) ``run_config`` directory, read back from disk."""
    out = Path(out)
    info_path = out / "study.json"
    if not info_path.is_file():
        raise ConfigError(f"{out} has no study.json: not a directory written by `sanitas run` / `sanitas reproduce`")
    info = read_json(info_path)
    try:
        cfg = info["config"]
        order = info.get("experiment_order") or list(cfg["experiments"])   # JSON keys are stored sorted
        cfg["experiments"] = {k: cfg["experiments"][k] for k in order}
    except (KeyError, TypeError, AttributeError) as exc:
        raise StorageError(f"{info_path} is damaged (no {exc}); re-run `sanitas run` / `sanitas reproduce` "
                           "with the same --out to rewrite it") from None
    run = PaperRun(cfg, out, seconds=float(info.get("seconds", 0.0)), not_run=dict(info.get("not_run", {})),
                   failed=dict(info.get("failed", {})))
    for name in cfg["experiments"]:
        why = damage(out / name)
        oc = load_outcome(out / name) if why is None else None
        if oc is not None:
            run.outcomes[name] = oc
        elif why is not None:
            warn(f"{out / name}: stored results cannot be used ({why}); re-run with the same --out to recompute them")
            run.not_run[name] = f"stored results cannot be used ({why}); re-run to recompute them"
        else:
            run.not_run.setdefault(name, "no finished results in this directory")
    run.claims = None
    if (out / "claims.csv").is_file():
        try:
            run.claims = read_table(out / "claims.csv")
        except StorageError as exc:  # derived from the outcomes: judge() writes it again
            warn(f"{exc}; the claims will be judged again")
    return run
