"""``sanitas report DIR``: rebuild report.html (and re-judge the claims) from results on disk."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sanitas.errors import ConfigError, StorageError
from sanitas.utils.io import directory_lock, read_json, read_table


def _check_dir(d: Path) -> Path:
    import torch

    from sanitas.checks.result import CheckResult
    from sanitas.engine import SHOWN_INPUTS, CellStore
    from sanitas.report.figures import check_figures
    from sanitas.report.html import check_report

    meta = read_json(d / "meta.json")
    if not isinstance(meta, dict):
        raise StorageError(f"{d / 'meta.json'} is damaged (not a mapping); re-run the command that wrote {d}")
    cfg = meta.get("config", {})
    kind = cfg.get("check", "check")
    table = read_table(d / "results.parquet")
    cal = read_table(d / "calibration.csv") if (d / "calibration.csv").is_file() else None
    if kind not in ("model_randomization", "data_randomization", "input_invariance"):
        raise ConfigError(f"{d}: rebuilding a {kind!r} report is not supported; re-run the command instead")
    images = None
    if (d / SHOWN_INPUTS).is_file():
        try:
            images = torch.load(d / SHOWN_INPUTS, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - the maps are drawn without their inputs
            images = None
    refs = read_table(d / "references.parquet") if (d / "references.parquet").is_file() else None
    res = CheckResult(kind, table, cal, meta, CellStore.shown_maps(d), images, list(meta.get("stages", [])), d,
                      references=refs)
    return check_report(res, d, check_figures(res, d))


def rebuild(directory: str | Path) -> tuple[Path, pd.DataFrame | None]:
    """Rebuild the report of a results directory; damaged files are named in a :class:`StorageError`
    (or, for one experiment of a study, reported as not run), and nothing is written while another
    sanitas process writes there."""
    d = Path(directory)
    if not d.is_dir():
        raise ConfigError(f"{d} is not a directory")
    with directory_lock(d):
        return _rebuild(d)


def _rebuild(d: Path) -> tuple[Path, pd.DataFrame | None]:
    from sanitas.experiments.report import combined_report, paper_report
    from sanitas.experiments.reproduce import judge, load_run, write_claims

    if (d / "reproduce.json").is_file():
        info = read_json(d / "reproduce.json")
        if not isinstance(info, dict) or not isinstance(info.get("papers"), list):
            raise StorageError(f"{d / 'reproduce.json'} is damaged (no list of papers); re-run `sanitas reproduce` "
                               f"with --out {d}")
        runs = []
        for paper in info["papers"]:
            run = load_run(d / paper)
            judge(run)
            paper_report(run)
            runs.append(run)
        claims = pd.concat([r.claims for r in runs], ignore_index=True)
        write_claims(d, claims)
        return combined_report(runs, d, claims, float(info.get("seconds", 0.0))), claims
    if (d / "study.json").is_file():
        run = load_run(d)
        judge(run)
        return paper_report(run), run.claims
    if (d / "results.parquet").is_file() and (d / "meta.json").is_file():
        return _check_dir(d), None
    raise ConfigError(f"{d} holds no sanitas results (no reproduce.json, study.json or results.parquet + meta.json)")
