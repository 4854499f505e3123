"""What the report and the command line show of a check's summary: stage labels a reader can place, and
means that say how many images they cover and how many were left out, and why.

A mean is taken over the images whose score is a number. Images whose map was constant, at this stage or at
the reference stage (all zero, typically a GradCAM whose ReLU removed everything: there is no ranking to
compare), or whose score is undefined for another reason (NaN) are excluded and counted, never silently
dropped.
"""

from __future__ import annotations

import html
import re

import pandas as pd

_UNINFORMATIVE = re.compile(r"(^|\.)\d+$")


def stage_labels(meta: dict, stages) -> dict[str, str]:
    """Display label per stage name: ``8`` -> ``8 Linear`` when the name alone says nothing (``nn.Sequential``
    indices); other names as they are."""
    types = meta.get("layer_types") or {}
    out = {}
    for name in stages:
        name = str(name)
        kind = types.get(name)
        out[name] = f"{name} {kind}" if kind and _UNINFORMATIVE.search(name) else name
    return out


def excluded(row) -> int:
    return int(row.get("nan_count", 0) or 0)


def why_excluded(row) -> str:
    """``4 of 64 excluded (constant maps)`` for a summary row, or '' when every image counted."""
    nan = excluded(row)
    if not nan:
        return ""
    constant = int(row.get("constant_maps", 0) or 0)
    total = int(row["n"]) + nan
    reasons = []
    if constant:
        reasons.append(f"{constant} constant map{'s' * (constant != 1)}")
    if nan - constant > 0:
        reasons.append(f"{nan - constant} undefined score{'s' * (nan - constant != 1)}")
    return f"{nan} of {total} excluded ({', '.join(reasons)})"


def _ordered(s: pd.DataFrame) -> list[str]:
    return s.drop_duplicates("stage").sort_values("stage")["variant"].astype(str).tolist()


def mean_table(summary: pd.DataFrame, metric: str, labels: dict[str, str] | None = None) -> pd.DataFrame:
    """Methods x stages of one metric's means (stage order), columns labelled by :func:`stage_labels`."""
    s = summary[summary["metric"] == metric].copy()
    s["variant"] = s["variant"].astype(str)
    order = _ordered(s)
    p = s.pivot(index="method", columns="variant", values="mean")
    methods = list(dict.fromkeys(s["method"]))
    p = p.reindex(index=methods, columns=order)
    return p.rename(columns=labels or {})


def coverage_lines(summary: pd.DataFrame, metric: str, labels: dict[str, str] | None = None) -> list[str]:
    """One line per mean that left images out: method, stage, how many, why."""
    labels = labels or {}
    s = summary[summary["metric"] == metric]
    out = []
    for r in s.to_dict("records"):
        why = why_excluded(r)
        if why:
            out.append(f"{r['method']} at {labels.get(str(r['variant']), r['variant'])}: {why}")
    return out


def images_counted(summary: pd.DataFrame, metric: str) -> int:
    """The number of images a mean covers when none is excluded."""
    s = summary[summary["metric"] == metric]
    return int((s["n"] + s["nan_count"]).max()) if len(s) else 0


def mean_over(summary: pd.DataFrame, metric: str, table: pd.DataFrame) -> str:
    """What a mean of ``metric`` covers, in words: ``"16 images"``, or ``"16 images x 2 random draws"`` when
    the randomized stages were drawn several times (their means pool the draws; ``n`` counts image-draw pairs)."""
    draws = int(table["draw"].max()) + 1 if "draw" in table.columns and len(table) else 1
    if draws > 1:
        return f"{table['image'].nunique()} images x {draws} random draws"
    return f"{images_counted(summary, metric)} images"


def mean_table_html(summary: pd.DataFrame, metric: str, labels: dict[str, str] | None = None) -> str:
    """:func:`mean_table` as HTML; every cell shows its mean and the images it covers (n), and the number
    excluded and why when any were."""
    s = summary[summary["metric"] == metric].copy()
    s["variant"] = s["variant"].astype(str)
    order = _ordered(s)
    labels = labels or {}
    cells = {(r["method"], str(r["variant"])): r for r in s.to_dict("records")}
    head = "<th>method</th>" + "".join(f"<th>{html.escape(labels.get(v, v))}</th>" for v in order)
    rows = []
    for method in dict.fromkeys(s["method"]):
        tds = [f"<td>{html.escape(str(method))}</td>"]
        for v in order:
            r = cells.get((method, v))
            if r is None:
                tds.append("<td></td>")
                continue
            mean = "nan" if r["mean"] != r["mean"] else f"{r['mean']:.3f}"
            why = why_excluded(r)
            note = f'<br><span class="n">n={int(r["n"])}</span>'
            if why:
                note += f'<br><span class="excluded">{html.escape(why)}</span>'
            tds.append(f"<td>{mean}{note}</td>")
        rows.append("<tr>" + "".join(tds) + "</tr>")
    return (f'<table class="sortable means"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody>'
            "</table>")


def constant_excluded(table: pd.DataFrame) -> pd.Series:
    """Per row: the score is NaN because a map compared is constant, this stage's or the reference's (stage 0:
    the same method, metric and image). Needs the engine's ``constant_map`` column."""
    nan = table["value"].isna()
    own = table["constant_map"].astype(bool)
    keys = ["method", "metric", "image"]
    ref = table.loc[table["stage"] == 0, keys].assign(_ref=own[table["stage"] == 0].to_numpy())
    ref = ref.drop_duplicates(keys)
    merged = table[keys].merge(ref, on=keys, how="left")["_ref"].fillna(False).astype(bool).to_numpy()
    return nan & (own | merged)


def mean_summary(table: pd.DataFrame, by=("method", "stage", "variant", "metric")) -> pd.DataFrame:
    """Per group: the mean of the scores that are numbers, ``n`` (their count), ``nan_count`` and (with the
    engine's ``constant_map`` column) ``constant_maps``: how many of the NaN scores come from a constant map
    (:func:`constant_excluded`); no bootstrap, for tables of means."""
    t = table.assign(_nan=table["value"].isna())
    if "constant_map" in t.columns:
        t["_const"] = constant_excluded(table).to_numpy()
    g = t.groupby(list(by), sort=False)
    out = g["value"].agg(mean="mean", n="count").reset_index()
    out["nan_count"] = g["_nan"].sum().to_numpy().astype(int)
    if "_const" in t.columns:
        out["constant_maps"] = g["_const"].sum().to_numpy().astype(int)
    return out
