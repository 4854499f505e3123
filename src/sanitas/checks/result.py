"""Result of a sanity check: tidy table, summary with CIs and NaN counts, calibration, plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from sanitas.check_verdicts import MIN_EFFECT, check_verdicts

if TYPE_CHECKING:  # a stored result is read without torch (sanitas report DIR)
    import torch


def summarize_table(table: pd.DataFrame, by=("method", "stage", "variant", "metric"), n_boot: int = 1000,
                    seed: int = 0) -> pd.DataFrame:
    """Mean, bootstrap 95% CI, number of images and NaN count per group (NaN never averaged in); with the
    engine's ``constant_map`` column also ``constant_maps``: how many of the NaN scores come from a constant map,
    this stage's or the reference's (:func:`sanitas.report.tables.constant_excluded`)."""
    from sanitas.utils.stats import summarize

    rows = []
    if "constant_map" in table.columns and len(table):
        from sanitas.report.tables import constant_excluded

        table = table.assign(_constant=constant_excluded(table).to_numpy())
    for key, grp in table.groupby(list(by), sort=False):
        values = grp["value"].to_numpy(dtype=float)
        s = summarize(values, n_boot=n_boot, seed=seed)
        row = {**dict(zip(by, key)), "mean": s["mean"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
               "n": s["n"], "nan_count": s["nan_count"]}
        if "_constant" in grp:
            row["constant_maps"] = int(grp["_constant"].sum())
        rows.append(row)
    return pd.DataFrame(rows)


def model_facts(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """What a report says about a checked model: its class, its number of parameters, and its accuracy on the
    explained images (from a forward pass that changes nothing)."""
    from sanitas.utils.forward import inference_logits

    correct = inference_logits(model, x).argmax(1) == y.to(x.device)
    return {"class": type(model).__name__, "parameters": int(sum(p.numel() for p in model.parameters())),
            "accuracy": float(correct.double().mean()) if len(y) else float("nan"), "images": int(len(y))}


@dataclass
class CheckResult:
    """What a sanity check returns; ``table`` has one row per image x method x stage x metric."""

    kind: str
    table: pd.DataFrame
    calibration: pd.DataFrame
    meta: dict[str, Any]
    maps: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    images: torch.Tensor | None = None
    stages: list[str] = field(default_factory=list)
    out_dir: Path | None = None
    #: floor and ceiling comparisons (``reference`` column: "floor" / "ceiling"), see ``verdicts()``
    references: pd.DataFrame | None = None
    #: the figures and ``report.html`` drawn when the check wrote its results to a directory
    figures: list[Path] = field(default_factory=list)
    report: Path | None = None

    def summary(self) -> pd.DataFrame:
        return summarize_table(self.table)

    def verdicts(self, metric: str | None = None, per: str = "method", n_boot: int = 2000,
                 seed: int = 0, min_effect: float = MIN_EFFECT) -> pd.DataFrame:
        """Verdicts with 95% intervals against the floor and the ceiling (:mod:`sanitas.check_verdicts`).

        ``per="method"``: one row per method (its verdict at the first stage that can separate
        methods); ``per="stage"``: one row per method and randomized stage. Columns: method, stage,
        estimate, ci_low, ci_high, reference, verdict (pass / fail / inconclusive / not judged), why,
        n, excluded (constant or degenerate maps). ``metric`` defaults to spearman_abs. ``min_effect``: the
        smallest drop below the ceiling that passes (default :data:`sanitas.check_verdicts.MIN_EFFECT`, 0.05).
        """
        return check_verdicts(self.table, self.references, self.meta.get("ceiling_variants"), metric, per,
                              n_boot=n_boot, seed=seed, min_effect=min_effect)

    def pivot(self, metric: str = "spearman_abs", stat: str = "mean") -> pd.DataFrame:
        """Methods x stages table of one metric's mean (or ci_low, ci_high, nan_count)."""
        s = self.summary()
        s = s[s["metric"] == metric]
        order = s.drop_duplicates("stage").sort_values("stage")["variant"].tolist()
        p = s.pivot(index="method", columns="variant", values=stat)
        return p[[c for c in order if c in p.columns]]

    def __repr__(self) -> str:
        n_img = self.table["image"].nunique() if len(self.table) else 0
        return (f"CheckResult({self.kind}: {self.table['method'].nunique() if len(self.table) else 0} methods, "
                f"{len(self.stages)} stages, {n_img} images, {len(self.table)} rows)")
