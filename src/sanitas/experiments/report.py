"""The reproduce report: claims table and verdicts on top, then every experiment with its figures."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import pandas as pd
import yaml

from sanitas.experiments.claims import claims_count
from sanitas.experiments.runners import model_label
from sanitas.report.html import embed_png, render, table_html

VERDICT_CLASS = {"holds": "verdict-pass", "does not hold": "verdict-fail", "inconclusive": "verdict-inconclusive",
                 "not run": "verdict-skip"}


def claims_html(claims: pd.DataFrame) -> str:
    """The claims table with the verdict coloured (sortable like every table of the report)."""
    cols = ["id", "paper", "claim", "expected", "measured", "verdict", "why"]
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = []
    for r in claims.to_dict("records"):
        m = r.get("measured")
        measured = "" if m is None or (isinstance(m, float) and m != m) else f"{float(m):.3f}"
        cls = VERDICT_CLASS.get(r["verdict"], "")
        cells = [f'<span class="wrap id">{html.escape(str(r["id"]))}</span>', html.escape(str(r["paper"])),
                 f'<span class="wrap claim">{html.escape(str(r["claim"]))}</span>',
                 f'<span class="wrap">{html.escape(str(r["expected"]))}</span>', measured,
                 f'<span class="{cls}">{html.escape(str(r["verdict"]))}</span>',
                 f'<span class="wrap">{html.escape(str(r["why"]) if r["why"] == r["why"] else "")}</span>']
        body.append("<tr class=\"claim\">" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (f'<table class="sortable claims"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
            f"</table>")


def _check_verdicts(oc, out: Path):
    """``(init, verdicts)`` of a randomization experiment, one per init scheme where it ran several: the verdicts
    of the result it ran with, or of the tables a finished experiment stored (with its meta.json), by the same
    function (:func:`sanitas.check_verdicts.check_verdicts`), without torch."""
    from sanitas.check_verdicts import check_verdicts
    from sanitas.utils.io import read_json

    result = oc.result
    if hasattr(result, "verdicts"):
        return [(None, result.verdicts())]
    refs = getattr(oc, "references", None)
    inits = list(dict.fromkeys(oc.table["init"])) if "init" in oc.table else [None]
    out_list = []
    for init in inits:
        folder = out if init is None else out / str(init)
        meta = read_json(folder / "meta.json") if (folder / "meta.json").is_file() else {}
        table, r = oc.table, refs
        if init is not None:
            table = table[table["init"] == init].drop(columns="init")
            if r is not None and "init" in r:
                r = r[r["init"] == init].drop(columns="init")
        ceilings = meta.get("ceiling_variants") if isinstance(meta, dict) else None
        out_list.append((init, check_verdicts(table, r, ceilings)))
    return out_list


def method_verdicts(runs) -> pd.DataFrame:
    """Per randomization experiment and method: the verdict of ``result.verdicts()``, the same function as the
    command line, the Python API and each experiment's own report (:mod:`sanitas.check_verdicts`).

    A method passes when its maps on the randomized model are clearly less alike the original maps than the maps
    of two independently trained models are (the ceiling: the whole 95% interval of the difference below -0.05,
    the smallest drop that counts), fails when they are clearly not, and is inconclusive otherwise; it is judged
    at the first randomized stage
    that can separate methods (where some method's random draws disagree more than two trained models do).
    Without a second trained model (the quick profile) no method is judged: "not judged" with the estimate and
    its interval.
    """
    rows = []
    for run in runs:
        for name, oc in run.outcomes.items():
            spec = run.config["experiments"][name]
            if spec["check"] not in ("model_randomization", "data_randomization") or not len(oc.table):
                continue
            for init, v in _check_verdicts(oc, Path(run.out) / name):
                for r in v.to_dict("records"):
                    rows.append({"paper": run.paper, "experiment": name if init is None else f"{name} ({init})",
                                 "model": model_label(spec), "method": r["method"], "verdict": r["verdict"],
                                 "judged at stage": r["variant"], "estimate": r["estimate"], "ci_low": r["ci_low"],
                                 "ci_high": r["ci_high"], "ceiling": r.get("ceiling"), "floor": r.get("floor"),
                                 "n": r["n"], "excluded": r["excluded"], "why": r["why"]})
    return pd.DataFrame(rows)


def _exp_section(run, name: str, rel_to: Path) -> dict:
    spec = run.config["experiments"][name]
    oc = run.outcomes.get(name)
    sid = f"{run.paper}-{name}"
    title = f"{run.paper} / {name}: {spec['check'].replace('_', ' ')} on {model_label(spec)}"
    if oc is None:
        return {"id": sid, "title": title, "text": f"Not run: {run.not_run.get(name, 'unknown reason')}",
                "tables": [], "figures": []}
    tables = []
    if spec["check"] in ("model_randomization", "data_randomization", "input_invariance") and len(oc.table):
        from sanitas.report.tables import mean_over, mean_summary, mean_table_html

        means = mean_summary(oc.table)
        for metric in list(dict.fromkeys(oc.table["metric"]))[:3]:
            tables.append({"caption": f"{metric}: mean over {mean_over(means, metric, oc.table)} (stage order); "
                                      "n = the images (image-draw pairs) a mean covers, and how many were excluded "
                                      "and why",
                           "html": mean_table_html(means, metric)})
    elif oc.summary is not None:
        tables.append({"caption": "", "html": table_html(oc.summary)})
    if oc.scalars:
        sc = pd.DataFrame([{"scalar": k, "value": float(v)} for k, v in oc.scalars.items()])
        tables.append({"caption": "reported numbers", "html": table_html(sc, "{:.4g}")})
    figs = [f for f in oc.figures if f.name.startswith(("curve-", "completeness-", "box", "bias", "scatter"))]
    figs += [f for f in oc.figures if f.name.startswith("maps-image0-")][:2]
    link = ""
    if oc.report is not None:
        link = os.path.relpath(oc.report, rel_to)
    desc = spec.get("description", "")
    text = f"{desc} Seconds: {oc.seconds:.0f}. Full report: {link}" if link else desc
    return {"id": sid, "title": title, "text": text.strip(), "tables": tables,
            "figures": [{"src": embed_png(f), "alt": f"{name}: {f.stem}"} for f in figs if f.is_file()]}


def _timing_text(runs, seconds: float) -> str:
    """This invocation's wall time, and the experiments' own run times (which a resumed run loads)."""
    own = sum(o.seconds for r in runs for o in r.outcomes.values())
    text = f"This run took {seconds / 60:.1f} min"
    if own > seconds * 1.05:
        text += (f"; the experiments' own run times add up to {own / 60:.1f} min (finished ones were loaded, "
                 f"not recomputed)")
    return text + "."


def _summary_sections(runs, claims: pd.DataFrame, seconds: float) -> list[dict]:
    text = (f"{claims_count(claims)}. {_timing_text(runs, seconds)} A claim that does not hold "
            f"is a finding about these models and data, not a failure of the run.")
    sections = [{"id": "claims", "title": "Claims", "text": text, "figures": [],
                 "tables": [{"caption": "each paper's checkable findings, re-measured here",
                             "html": claims_html(claims)}]}]
    mv = method_verdicts(runs)
    if len(mv):
        sections.append({"id": "verdicts", "title": "Verdict per method (randomization checks)",
                         "text": method_verdicts.__doc__.split("\n\n")[1].strip().replace("\n    ", " "),
                         "figures": [], "tables": [{"caption": "per experiment and method: the verdict, the stage it is "
                                                            "judged at, the mean similarity with its 95% interval, "
                                                            "the ceiling and the floor",
                                                 "html": table_html(mv.round(3))}]})
    return sections


def _meta_section(runs, seconds: float) -> dict:
    from sanitas.utils.versions import versions

    cfgs = "\n---\n".join(yaml.safe_dump(r.config, sort_keys=False) for r in runs)
    timing = {r.paper: {"seconds": round(r.seconds, 1),
                        "experiments": {k: round(o.seconds, 1) for k, o in r.outcomes.items()}} for r in runs}
    return {"id": "meta", "title": "Configuration, versions, seeds and timings", "tables": [], "figures": [],
            "pre": json.dumps({"versions": versions(), "total_seconds": round(seconds, 1), "timings": timing},
                              indent=1) + "\n\n" + cfgs}


def paper_report(run) -> Path:
    sections = _summary_sections([run], run.claims if run.claims is not None else pd.DataFrame(), run.seconds)
    sections += [_exp_section(run, name, run.out) for name in run.config["experiments"]]
    sections.append(_meta_section([run], run.seconds))
    title = f"sanitas reproduce: {run.config.get('title', run.paper)}"
    return render(run.out / "report.html", title, sections, subtitle=run.config.get("reference", ""))


def combined_report(runs, out: Path, claims: pd.DataFrame, seconds: float) -> Path:
    sections = _summary_sections(runs, claims, seconds)
    for run in runs:
        sections += [_exp_section(run, name, out) for name in run.config["experiments"]]
    sections.append(_meta_section(runs, seconds))
    papers = ", ".join(r.config.get("title", r.paper) for r in runs)
    return render(Path(out) / "report.html", "sanitas reproduce: claims of the papers, re-measured", sections,
                  subtitle=papers)
