"""A paper's checkable findings as named claims with a measure and an expectation.

A claim in a config::

    - id: gbp-survives
      claim: Guided Backprop's map stays similar until the lowest layer is randomized
      experiment: cascading-cnn
      measure: {method: guided_backprop, metric: spearman_abs, stages: all_but_last, reduce: min}
      expect: "> 0.5"

Measures (all read the experiment's tidy table or its named scalars):

* ``{method, metric, stages, reduce, variant, init}``: the mean over images per stage of one method and
  metric; ``stages`` is ``first`` (the first randomized stage), ``last``, ``all`` (every stage but the
  original), ``all_but_last``, ``original``, a stage index or a stage/variant name; ``reduce`` is
  ``mean`` (default), ``min`` or ``max`` across the selected stages; ``init`` selects one scheme of an
  experiment that ran several (``init: [truncated_normal, uniform]``).
* ``{method, metric, reference: floor|ceiling}``: a model randomization's reference rows
  (``references.parquet``) instead of its results: ``floor``, the similarity of two random draws of the
  same stage (draw r vs draw 0; needs ``draws: 2`` or more; ``stages`` and ``reduce`` select stages as
  above), or ``ceiling``, the similarity of the maps of a second trained model (another seed) to the
  reference model's (needs ``model_seeds: 2`` or more; one comparison, so no ``stages``).
* ``{scalar: name}``: a number the experiment reported (``sanitas reproduce`` lists them).
* ``{calibration: baseline, metric}``: the calibration mean (e.g. ``input_x_uniform``: the
  input-dominance null of adebayo2018 section 5.2).
* ``{sub: [m1, m2]}``, ``{ratio: [m1, m2]}``, ``{abs: m}``: arithmetic on measures.

Every measure is a mean over images (and randomization draws and model seeds, where the table has
them) with a 95% bootstrap interval; a claim is judged on the interval of (measure - reference):
holds, does not hold, or inconclusive (see :mod:`sanitas.verdict`).

Expectations: ``"> 0.5"``, ``"< m"`` style strings with a number, or a mapping
``{op: "<", than: MEASURE}``, ``{op: within, tol: 0.1, of: MEASURE}`` (absolute) or
``{op: within, rel: 0.5, of: MEASURE}`` (relative). A claim that does not hold is a finding and
is reported as such; "not run" says why (experiment skipped or failed, or no rows matched).
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from sanitas.errors import ConfigError
from sanitas.utils.bootstrap import Dist, Resampler, table_mean
from sanitas.verdict import FAILS, HOLDS, INCONCLUSIVE, LEVEL, NOT_RUN, judge

#: the reference rows a measure can read (see the module docs)
REFERENCE_KINDS = ("floor", "ceiling")
OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
_SHORT = re.compile(r"^\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*$")
#: bootstrap resamples per claim (images x draws x model seeds)
N_BOOT = 2000


class MeasureError(Exception):
    """A measure could not be computed from the experiment's results (reported as 'not run')."""


@dataclass
class Verdict:
    id: str
    paper: str
    claim: str
    experiment: str
    expected: str
    measured: float | None
    verdict: str
    why: str = ""
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0
    excluded: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _parse_expect(expect) -> dict:
    if isinstance(expect, str):
        m = _SHORT.match(expect)
        if not m:
            raise ConfigError(f"expectation {expect!r}: write it as '> 0.5', '< 0.1', '>= 1' or a mapping "
                              f"{{op: within, tol: 0.1, of: MEASURE}}")
        return {"op": m.group(1), "than": float(m.group(2))}
    if isinstance(expect, dict) and expect.get("op") in OPS and "than" in expect:
        return expect
    if isinstance(expect, dict) and expect.get("op") == "within" and "of" in expect and (
            "tol" in expect or "rel" in expect):
        return expect
    raise ConfigError(f"expectation {expect!r} not understood: use '> 0.5', {{op: '<', than: MEASURE}} or "
                      f"{{op: within, tol|rel: NUMBER, of: MEASURE}}")


def _check_measure(m, where: str) -> None:
    if isinstance(m, (int, float)):
        return
    if not isinstance(m, dict):
        raise ConfigError(f"{where}: a measure is a number or a mapping, got {m!r}")
    for key in ("sub", "ratio"):
        if key in m:
            if not isinstance(m[key], list) or len(m[key]) != 2:
                raise ConfigError(f"{where}: {key!r} takes a list of two measures")
            for sub in m[key]:
                _check_measure(sub, where)
            return
    if "abs" in m:
        return _check_measure(m["abs"], where)
    if "scalar" in m:
        return
    if "calibration" in m:
        if "metric" not in m:
            raise ConfigError(f"{where}: a calibration measure needs a 'metric'")
        return
    for key in ("method", "metric"):
        if key not in m:
            raise ConfigError(f"{where}: measure {m!r} needs {key!r} (or use scalar:, calibration:, sub:, ratio:)")
    if m.get("reduce", "mean") not in ("mean", "min", "max"):
        raise ConfigError(f"{where}: reduce must be mean, min or max, got {m['reduce']!r}")
    if "reference" in m:
        if m["reference"] not in REFERENCE_KINDS:
            raise ConfigError(f"{where}: reference must be floor or ceiling, got {m['reference']!r}")
        if m["reference"] == "ceiling" and ("stages" in m or "reduce" in m):
            raise ConfigError(f"{where}: a ceiling is one comparison (a second trained model against the "
                              "reference), not one per stage: leave out stages/reduce")


def validate_claim(claim, experiments: dict, where: str) -> None:
    if not isinstance(claim, dict):
        raise ConfigError(f"{where}: a claim is a mapping with id, claim, experiment, measure, expect")
    for key in ("id", "claim", "experiment", "measure", "expect"):
        if key not in claim:
            raise ConfigError(f"{where}: missing {key!r}")
    if claim["experiment"] not in experiments:
        raise ConfigError(f"{where} ({claim['id']}): unknown experiment {claim['experiment']!r}; "
                          f"the config defines {list(experiments)}")
    _check_measure(claim["measure"], f"{where} ({claim['id']})")
    e = _parse_expect(claim["expect"])
    for key in ("than", "of"):
        if key in e:
            _check_measure(e[key], f"{where} ({claim['id']})")


def _select_stages(means: pd.Series, stages) -> pd.Series:
    """``means`` indexed by (stage index, variant name), original stage = 0."""
    idx = means.index.get_level_values(0)
    names = means.index.get_level_values(1)
    randomized = idx > 0
    if stages in (None, "all"):
        sel = randomized
    elif stages == "first":
        sel = idx == (idx[randomized].min() if randomized.any() else -1)
    elif stages == "last":
        sel = idx == idx.max()
    elif stages == "all_but_last":
        sel = randomized & (idx < idx.max())
    elif stages == "original":
        sel = idx == 0
    elif isinstance(stages, int):
        sel = idx == stages
    elif isinstance(stages, str):
        sel = names == stages
    else:
        raise MeasureError(f"stage selector {stages!r} not understood")
    return means[np.asarray(sel)]


def _calibration_dist(row: pd.Series, resampler: Resampler | None) -> Dist:
    """A calibration baseline as a distribution: its stored mean and interval (the masks' draws are
    not kept), resampled as a normal with the interval's width so that it enters comparisons with
    its uncertainty."""
    mean = float(row["mean"])
    if resampler is None or not {"ci_low", "ci_high"} <= set(row.index) or math.isnan(float(row["ci_low"])):
        return Dist(mean)
    sd = (float(row["ci_high"]) - float(row["ci_low"])) / (2 * 1.959964)
    rng = np.random.default_rng(abs(hash((mean, sd))) % 2**32)
    return Dist(mean, rng.normal(mean, sd, resampler.n_boot), int(row.get("n", 0) or 0))


def _flagged(rows: pd.DataFrame, column: str) -> pd.Series:
    """Rows whose ``column`` flag (constant_map, degenerate_map) is set; a table or a row without the flag (NaN: a
    row of another kind in a combined table) is not flagged."""
    if column not in rows:
        return pd.Series(False, index=rows.index)
    return rows[column].astype("boolean").fillna(False).astype(bool)


def _excluded(rows: pd.DataFrame) -> pd.Series:
    return _flagged(rows, "constant_map") | _flagged(rows, "degenerate_map")


def measure(m, outcome, resampler: Resampler | None = None) -> Dist:
    """Evaluate a measure on an experiment outcome (see the module docs), with its bootstrap
    distribution when ``resampler`` is given (shared by the measures of one claim: paired)."""
    if isinstance(m, (int, float)):
        return Dist(float(m))
    if "sub" in m:
        a, b = (measure(x, outcome, resampler) for x in m["sub"])
        return a - b
    if "ratio" in m:
        a, b = (measure(x, outcome, resampler) for x in m["ratio"])
        if b.estimate == 0:
            raise MeasureError("ratio with a zero denominator")
        return a / b
    if "abs" in m:
        return abs(measure(m["abs"], outcome, resampler))
    if "scalar" in m:
        if m["scalar"] not in outcome.scalars:
            raise MeasureError(_missing_scalar(m["scalar"], outcome.scalars))
        return Dist(float(outcome.scalars[m["scalar"]]))
    if "calibration" in m:
        cal = outcome.calibration
        if cal is None or not len(cal):
            raise MeasureError("the experiment has no calibration")
        row = cal[(cal["baseline"] == m["calibration"]) & (cal["metric"] == m["metric"])]
        if not len(row):
            raise MeasureError(f"no calibration row for baseline {m['calibration']!r}, metric {m['metric']!r}")
        return _calibration_dist(row.iloc[0], resampler)
    t = outcome.table if "reference" not in m else _references(m["reference"], outcome)
    rows = t[(t["method"] == m["method"]) & (t["metric"] == m["metric"])]
    if "variant" in m:
        rows = rows[rows["variant"] == m["variant"]]
    if "init" in m:
        if "init" not in rows.columns:
            raise MeasureError(f"the experiment ran one init scheme (no 'init' column); give it init: [..., "
                               f"{m['init']}] to measure init {m['init']!r}")
        rows = rows[rows["init"] == m["init"]]
    if not len(rows):
        raise MeasureError(f"no {m['reference'] + ' ' if 'reference' in m else ''}rows for method {m['method']!r}, "
                           f"metric {m['metric']!r}" + (f", init {m['init']!r}" if "init" in m else ""))
    if m.get("reference") == "ceiling":  # one comparison, whatever stage index the ceiling rows carry
        return table_mean(rows, resampler, exclude=_excluded(rows))
    keys = rows.groupby(["stage", "variant"]).size().index
    means = pd.Series(range(len(keys)), index=keys)
    sel = _select_stages(means, m.get("stages", "all"))
    if not len(sel):
        raise MeasureError(f"stage selector {m.get('stages')!r} matched no stage")
    dists, empty = [], []
    for stage, variant in sel.index:
        part = rows[(rows["stage"] == stage) & (rows["variant"] == variant)]
        dists.append(table_mean(part, resampler, exclude=_excluded(part)))  # NaN and degenerate maps left out
        if dists[-1].n == 0:
            empty.append((variant, part))
    if empty:
        raise MeasureError(_no_maps_left(m["method"], empty))
    return dists[0] if len(dists) == 1 else Dist.reduce(dists, m.get("reduce", "mean"))


def _no_maps_left(method: str, empty: list[tuple[str, pd.DataFrame]]) -> str:
    """Why a measure has nothing to judge at some stages: its maps there are all degenerate, constant or NaN."""
    names = [v for v, _ in empty]
    rows = pd.concat([p for _, p in empty])
    count = {c: int(_flagged(rows, c).sum()) for c in ("degenerate_map", "constant_map")}
    parts = [f"{count['degenerate_map']} degenerate (the signal vanished)" if count["degenerate_map"] else "",
             f"{count['constant_map']} constant" if count["constant_map"] else ""]
    kinds = ", ".join(p for p in parts if p) or "every score NaN"
    hint = (" - an init that keeps the signal (init: default) can judge these stages"
            if count["degenerate_map"] else "")
    shown = ", ".join(map(str, names[:4])) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return (f"no map of {method} is left to judge at stage(s) {shown} ({kinds} of {len(rows)} scores){hint}")


def _references(kind: str, outcome) -> pd.DataFrame:
    """The experiment's ``kind`` (floor / ceiling) rows, or why there are none."""
    refs = getattr(outcome, "references", None)
    rows = refs[refs["reference"] == kind] if refs is not None and "reference" in refs else None
    if rows is None or not len(rows):
        need = "draws: 2 or more (two random draws of each stage)" if kind == "floor" else \
            "model_seeds: 2 or more (a second trained model)"
        raise MeasureError(f"the experiment stored no {kind} rows: a {kind} needs a model randomization with {need}")
    return rows


def _fmt(m) -> str:
    if isinstance(m, (int, float)):
        return f"{m:g}"
    if "scalar" in m:
        return m["scalar"]
    if "calibration" in m:
        return f"null {m['calibration']} ({m['metric']})"
    if "sub" in m:
        return f"({_fmt(m['sub'][0])} - {_fmt(m['sub'][1])})"
    if "ratio" in m:
        return f"{_fmt(m['ratio'][0])} / {_fmt(m['ratio'][1])}"
    if "abs" in m:
        return f"|{_fmt(m['abs'])}|"
    parts = [m["method"], m["metric"]]
    if "reference" in m:
        parts.append("floor (two random draws)" if m["reference"] == "floor" else "ceiling (a second trained model)")
    if "variant" in m:
        parts.append(m["variant"])
    if "init" in m:
        parts.append(f"({m['init']} init)")
    stages = m.get("stages", "all")
    if m.get("reference") == "ceiling":
        return " ".join(str(p) for p in parts)
    if stages in ("first", "last", "original") or isinstance(stages, int):
        parts.append(f"at the {stages} stage" if isinstance(stages, str) else f"at stage {stages}")
    elif m.get("reduce", "mean") != "mean" or stages != "all":
        parts.append(f"{m.get('reduce', 'mean')} over {stages} stages")
    return " ".join(str(p) for p in parts)


def describe_expect(expect) -> str:
    e = _parse_expect(expect)
    if e["op"] == "within":
        tol = f"{e['tol']:g}" if "tol" in e else f"{100 * e['rel']:g}%"
        return f"within {tol} of {_fmt(e['of'])}"
    return f"{e['op']} {_fmt(e['than'])}"


def _missing_scalar(name: str, scalars) -> str:
    """Name the missing scalar and its closest relatives (same prefix: ``r2/cnn`` for ``r2/vgg-small``)."""
    prefix = name.split("/")[0] + "/" if "/" in name else None
    near = sorted(k for k in scalars if prefix and k.startswith(prefix))
    if near:
        return f"the experiment reported no scalar {name!r}, only {', '.join(near)} (a model not in this run?)"
    shown = sorted(scalars)
    more = f", ... ({len(shown) - 8} more)" if len(shown) > 8 else ""
    return f"the experiment reported no scalar {name!r} (it has {', '.join(shown[:8])}{more})"


def evaluate_claim(claim: dict, paper: str, outcome, skipped: str | None = None, seed: int = 0) -> Verdict:
    """The verdict of one claim on an experiment's outcome (``None`` outcome: not run, ``skipped`` says why).

    Judged by :func:`sanitas.verdict.judge` on the 95% bootstrap interval of (measure - reference):
    holds, does not hold, or inconclusive when the interval straddles the expectation.
    """
    expected = describe_expect(claim["expect"])
    base = dict(id=claim["id"], paper=paper, claim=claim["claim"], experiment=claim["experiment"],
                expected=f"{_fmt(claim['measure'])} {expected}")
    if outcome is None:
        return Verdict(**base, measured=None, verdict=NOT_RUN, why=skipped or "experiment not run")
    e = _parse_expect(claim["expect"])
    resampler = Resampler(N_BOOT, seed)
    try:
        value = measure(claim["measure"], outcome, resampler)
        lo, hi = value.ci(LEVEL)
        stats = dict(measured=value.estimate, ci_low=lo, ci_high=hi, n=value.n, excluded=value.excluded)
        if math.isnan(value.estimate):
            return Verdict(**base, **stats, verdict=NOT_RUN, why="the measure is NaN (every map constant?)")
        ref = measure(e["of"] if e["op"] == "within" else e["than"], outcome, resampler)
        if math.isnan(ref.estimate):  # a comparison with NaN is False: it would read as "does not hold"
            return Verdict(**base, **stats, verdict=NOT_RUN,
                           why="the reference measure is NaN (every map constant, or no finite scores?)")
        if e["op"] == "within":
            tol = e["tol"] if "tol" in e else e["rel"] * abs(ref.estimate)
            verdict, diff = judge(value, "within", ref, tol=tol)
        else:
            verdict, diff = judge(value, e["op"], ref)
        d_lo, d_hi = diff.ci(LEVEL)
        fixed = isinstance(e.get("than"), (int, float))
        why = (f"difference from {'the threshold' if fixed else f'the reference {ref.estimate:.3f}'}: "
               f"{diff.estimate:+.3f} [{d_lo:+.3f}, {d_hi:+.3f}]")
    except MeasureError as exc:
        return Verdict(**base, measured=None, verdict=NOT_RUN, why=str(exc))
    return Verdict(**base, **stats, verdict=verdict, why=why)


def claims_count(claims: pd.DataFrame) -> str:
    """``"41 claims: 30 hold, 6 do not hold, 3 inconclusive, 2 not run"``."""
    counts = claims["verdict"].value_counts().to_dict() if len(claims) else {}
    return (f"{len(claims)} claims: {counts.get(HOLDS, 0)} hold, {counts.get(FAILS, 0)} do not hold, "
            f"{counts.get(INCONCLUSIVE, 0)} inconclusive, {counts.get(NOT_RUN, 0)} not run")


def claims_table(verdicts: list[Verdict]) -> pd.DataFrame:
    return pd.DataFrame([v.as_dict() for v in verdicts],
                        columns=["id", "paper", "claim", "experiment", "expected", "measured", "ci_low", "ci_high",
                                 "verdict", "why", "n", "excluded"])
