"""Per-method verdicts of a randomization check, against the right floor and ceiling.

A method passes the model parameter randomization test at a stage when its maps on the randomized
model are *less alike* the original maps than the maps of two independently trained models are to
each other: the **ceiling** (``ceiling_model=``; two trained models differ too, so a method cannot be
asked to stay above that). The **floor** is how alike the maps of two independent random draws of
the same stage are: where the floor itself reaches the ceiling (the MLP gradient after its top layer:
two random output layers already agree at ~0.46) for every method, the stage cannot separate
methods, and the verdict says so instead of failing them (see :func:`stage_verdicts`).

Every number is a mean over images (and draws) with a bootstrap interval over images, draws and
model seeds (:mod:`sanitas.utils.bootstrap`), paired across method, floor and ceiling; verdicts come
from :func:`sanitas.verdict.judge`: *pass* when the whole interval of (method - ceiling) is below
``-min_effect``, *fail* when it is all at or above it, *inconclusive* otherwise. Constant and
degenerate maps (the signal vanished) are left out and counted. The method's overall verdict is its
verdict at the first randomized stage that can separate methods (the top layer, in the paper's
top-down cascade).

``min_effect`` (:data:`MIN_EFFECT`, 0.05 of the similarity by default) is the smallest drop below the
ceiling that counts as sensitivity. With 64 images and 5 draws a paired interval is narrow enough to
call a drop of 0.01 significant: input x gradient on the sanity-checks CNN scores 0.894 after the
output layer is randomized against a ceiling of 0.906 (two trained CNNs; its floor, two random draws,
is 0.891): every model, trained or random, gives it the same map of the input, and without the
smallest effect it would *pass* the check that its paper (gupta2019) says it fails. ``min_effect=0``
gives the bare statistical comparison.
"""

from __future__ import annotations

import math

import pandas as pd

from sanitas.errors import ConfigError
from sanitas.utils.bootstrap import Dist, Resampler, table_mean
from sanitas.verdict import FAILS, HOLDS, INCONCLUSIVE, LEVEL, NOT_RUN, judge

LABELS = {HOLDS: "pass", FAILS: "fail", INCONCLUSIVE: "inconclusive", NOT_RUN: "not judged"}
#: the smallest drop of the similarity below the ceiling that counts as a method's sensitivity
MIN_EFFECT = 0.05
CEILING = "ceiling: maps of an independently trained model"
NO_CEILING = ("no ceiling: pass ceiling_model= (the same architecture trained with another seed; "
              "--model-seeds 2 on the command line) to judge sensitivity")


def _excluded(rows: pd.DataFrame) -> pd.Series:
    flags = [rows[c].astype(bool) for c in ("constant_map", "degenerate_map") if c in rows]
    out = pd.Series(False, index=rows.index)
    for f in flags:
        out |= f
    return out


def _mean(rows: pd.DataFrame, resampler: Resampler) -> Dist:
    return table_mean(rows, resampler, exclude=_excluded(rows))


def default_metric(table: pd.DataFrame) -> str:
    metrics = list(dict.fromkeys(table["metric"]))
    return "spearman_abs" if "spearman_abs" in metrics else metrics[0]


def stage_verdicts(table: pd.DataFrame, references: pd.DataFrame | None, metric: str | None = None,
                   n_boot: int = 2000, seed: int = 0, level: float = LEVEL,
                   min_effect: float = MIN_EFFECT) -> pd.DataFrame:
    """One row per method and randomized stage: estimate, CI, floor, ceiling, verdict, n, excluded.

    A stage *can separate methods* when for at least one method two random draws of it disagree
    more than two trained models do (that method's floor is clearly below its ceiling, by at least
    ``min_effect``). Where no method's floor is (the maps of any two random draws stay more alike
    than those of two trained models), a method that does not fall below its ceiling is
    *inconclusive*, not failed: the stage
    leaves no room to show sensitivity. A method's own high floor is no excuse where another method
    shows the room exists (guided backprop's random draws agree at 0.97 because it ignores the
    randomized top layer; the gradient's agree at 0.3).
    """
    if not len(table):
        return pd.DataFrame()
    if not (isinstance(min_effect, (int, float)) and 0 <= min_effect < 1):
        raise ConfigError(f"min_effect must be a number in [0, 1) (a drop of the similarity), got {min_effect!r}")
    metric = metric or default_metric(table)
    refs = references if references is not None else pd.DataFrame(columns=["reference", "method", "metric", "stage"])
    resampler = Resampler(n_boot, seed)
    t = table[table["metric"] == metric]
    cells = []
    for method, mt in t.groupby("method", sort=False):
        mine = refs[(refs["method"] == method) & (refs["metric"] == metric)]
        ceiling_rows = mine[mine["reference"] == "ceiling"]
        ceiling = _mean(ceiling_rows, resampler) if len(ceiling_rows) else None
        for (stage, variant), st in mt[mt["stage"] > 0].groupby(["stage", "variant"], sort=True):
            floor_rows = mine[(mine["reference"] == "floor") & (mine["stage"] == stage)]
            cells.append((method, int(stage), variant, st, _mean(st, resampler), ceiling,
                          _mean(floor_rows, resampler) if len(floor_rows) else None))
    room: dict[int, bool | None] = {}  # stage -> can separate methods (None: no floor measured)
    for method, stage, _, _, _, ceiling, floor in cells:
        if floor is not None and ceiling is not None:
            room[stage] = room.get(stage, False) or judge(floor, "<", ceiling - min_effect, level=level)[0] == HOLDS
    rows = []
    for method, stage, variant, st, value, ceiling, floor in cells:
        lo, hi = value.ci(level)
        row = {"method": method, "stage": stage, "variant": variant, "metric": metric, "estimate": value.estimate,
               "ci_low": lo, "ci_high": hi, "n": value.n, "excluded": value.excluded,
               "draws": int(st["draw"].nunique()) if "draw" in st else 1, "separable": room.get(stage)}
        if floor is not None:
            row["floor"], (row["floor_ci_low"], row["floor_ci_high"]) = floor.estimate, floor.ci(level)
        if ceiling is None:
            verdict, why, row["reference"] = NOT_RUN, NO_CEILING, "none"
        else:
            row["reference"] = CEILING
            row["ceiling"], (row["ceiling_ci_low"], row["ceiling_ci_high"]) = ceiling.estimate, ceiling.ci(level)
            verdict, _ = judge(value, "<", ceiling - min_effect, level=level)
            diff = value - ceiling
            d_lo, d_hi = diff.ci(level)
            why = f"method - ceiling = {diff.estimate:+.3f} [{d_lo:+.3f}, {d_hi:+.3f}]"
            if min_effect and verdict != HOLDS and d_hi < 0:
                why += f": below the ceiling, but not by the smallest effect {min_effect:g}"
            if verdict == NOT_RUN:
                why = "no finite scores (every map constant or degenerate?)"
            elif verdict != HOLDS and room.get(stage) is False:
                verdict = INCONCLUSIVE
                why = ("this stage cannot separate methods: for every method, two random draws agree more than "
                       "two trained models do")
        row["verdict"], row["why"] = LABELS[verdict], why
        rows.append(row)
    return pd.DataFrame(rows)


def method_verdicts(stages: pd.DataFrame) -> pd.DataFrame:
    """One row per method: its verdict at the first randomized stage that can separate methods."""
    out = []
    if not len(stages):
        return pd.DataFrame(columns=["method", "verdict", "stage", "variant", "estimate", "ci_low", "ci_high", "why"])
    for method, ms in stages.groupby("method", sort=False):
        ms = ms.sort_values("stage")
        separable = ms[ms["separable"].fillna(True).astype(bool)]
        pick = separable.iloc[0] if len(separable) else ms.iloc[0]
        out.append({"method": method, "verdict": pick["verdict"], "stage": int(pick["stage"]),
                    "variant": pick["variant"], "estimate": pick["estimate"], "ci_low": pick["ci_low"],
                    "ci_high": pick["ci_high"], "reference": pick["reference"],
                    "ceiling": pick.get("ceiling", math.nan), "floor": pick.get("floor", math.nan),
                    "n": pick["n"], "excluded": int(ms["excluded"].sum()), "why": pick["why"]})
    return pd.DataFrame(out)


def check_verdicts(table: pd.DataFrame, references: pd.DataFrame | None, ceiling_variants=(),
                   metric: str | None = None, per: str = "method", n_boot: int = 2000, seed: int = 0,
                   min_effect: float = MIN_EFFECT) -> pd.DataFrame:
    """The verdicts of one check's stored tables, as ``CheckResult.verdicts()`` gives them; torch-free, so that a
    report rebuilt from a results directory judges with the very same function.

    ``ceiling_variants``: the variants of ``table`` that are the ceiling model's maps (data randomization, where
    the second trained model is a stage of the table); they move to the references.
    """
    ceilings = list(ceiling_variants or [])
    if ceilings and len(table):
        refs = table[table["variant"].isin(ceilings)].assign(reference="ceiling")
        references = refs if references is None else pd.concat([references, refs], ignore_index=True)
        table = table[~table["variant"].isin(ceilings)]
    stages = stage_verdicts(table, references, metric, n_boot=n_boot, seed=seed, min_effect=min_effect)
    return stages if per == "stage" else method_verdicts(stages)
