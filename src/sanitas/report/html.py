"""One self-contained ``report.html`` per results directory (figures embedded as data URIs)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd
from jinja2 import Environment

from sanitas.utils.io import atomic_write_text

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1240px;padding:12px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:right;white-space:nowrap}th{background:#f4f4f4;cursor:pointer}
td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto;border:1px solid #eee;margin:4px 0}
.fig{display:inline-block;max-width:100%;vertical-align:top}.verdict-pass{color:#17693a;font-weight:600}
.verdict-fail{color:#a3261b;font-weight:600}.verdict-skip{color:#8a6d00;font-weight:600}
.wrap{display:inline-block;white-space:normal;min-width:9em;max-width:22em;text-align:left}.muted{color:#777;font-size:.85em}pre{background:#f8f8f8;padding:8px;overflow-x:auto;font-size:.8em}
.n{color:#777;font-size:.8em}.excluded{color:#8a6d00;font-size:.8em}
table.overview th{text-align:left;cursor:default}table.overview td.text{text-align:left;white-space:normal;max-width:60em}
table.claims .wrap{max-width:14em;overflow-wrap:break-word}table.claims .wrap.claim{max-width:24em}table.claims .wrap.id{min-width:6em;max-width:10em}
</style></head><body>
<h1>{{ title }}</h1>
<p class="muted">{{ subtitle }}</p>
{% for section in sections %}
<section id="{{ section.id }}"><h2>{{ section.title }}</h2>
{% if section.text %}<p>{{ section.text }}</p>{% endif %}
{% for t in section.tables %}<div><p class="muted">{{ t.caption }}</p>{{ t.html | safe }}</div>{% endfor %}
{% for f in section.figures %}<div class="fig"><img src="{{ f.src }}" alt="{{ f.alt }}"></div>{% endfor %}
{% if section.pre %}<pre>{{ section.pre }}</pre>{% endif %}
</section>
{% endfor %}
<script>
document.querySelectorAll("table.sortable th").forEach(function(th){th.addEventListener("click",function(){
 var table=th.closest("table"),tbody=table.tBodies[0],i=Array.prototype.indexOf.call(th.parentNode.children,th);
 var asc=th.dataset.asc!=="1";th.dataset.asc=asc?"1":"0";
 var rows=Array.prototype.slice.call(tbody.rows);rows.sort(function(a,b){
  var x=a.cells[i].innerText,y=b.cells[i].innerText,nx=parseFloat(x),ny=parseFloat(y);
  var r=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);return asc?r:-r;});
 rows.forEach(function(r){tbody.appendChild(r);});});});
</script>
</body></html>
"""


def embed_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


#: text cells longer than this wrap (at most 22em wide) instead of widening their table past the page
WRAP_CHARS = 40


def table_html(df: pd.DataFrame, float_format: str = "{:.3f}") -> str:
    def fmt(v):
        if isinstance(v, float):
            return "nan" if v != v else float_format.format(v)
        text = html.escape(str(v))
        return f'<span class="wrap">{text}</span>' if len(str(v)) > WRAP_CHARS else text

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in row) + "</tr>" for row in df.itertuples(index=False))
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render(path: str | Path, title: str, sections: list[dict], subtitle: str = "") -> Path:
    env = Environment(autoescape=True)
    text = env.from_string(TEMPLATE).render(title=title, subtitle=subtitle, sections=sections)
    return atomic_write_text(path, text)


def reading(kind: str) -> str:
    """What a check's numbers are measured against, in plain words (the report's "how to read this"): the
    check class's ``reading`` (:mod:`sanitas.checks.base`)."""
    from sanitas.checks import CHECKS

    return CHECKS[kind].reading if kind in CHECKS else ""


def verdict_section(result) -> dict | None:
    """The method verdicts (with confidence intervals) shown right after the overview, from the same function as
    the command line and the API (``result.verdicts()``); None for checks without stage verdicts."""
    from sanitas.check_verdicts import MIN_EFFECT

    if result.kind not in ("model_randomization", "data_randomization") or not len(result.table):
        return None
    v = result.verdicts()
    if not len(v):
        return None
    shown = v[[c for c in ("method", "verdict", "variant", "estimate", "ci_low", "ci_high", "ceiling", "floor", "n",
                           "excluded", "why") if c in v]].rename(columns={"variant": "judged at stage"})
    judged = v["reference"].ne("none").any()
    if result.kind == "data_randomization":
        shown = shown.drop(columns=["floor"], errors="ignore")  # one permuted-label model: no random draws
        text = ("A method passes when its maps of the permuted-label model are clearly less alike the true-label "
                "model's maps than the maps of the model trained with another seed are (the ceiling: the whole 95% "
                f"interval of the difference below -{MIN_EFFECT:g}, the smallest drop that counts), fails when they "
                "are clearly not, and is inconclusive otherwise." if judged else "No verdict without a ceiling: "
                "train a second true-label model (ceiling: true in a config; the default of `sanitas "
                "data-randomization`).")
        return {"id": "verdicts", "title": "Verdicts", "text": text, "figures": [],
                "tables": [{"caption": "per method: verdict, mean similarity with its 95% interval over images, and "
                                       "the ceiling", "html": table_html(shown.round(3))}]}
    text = ("A method passes when its maps on the randomized model are clearly less alike the original maps than "
            "the maps of two independently trained models are (the ceiling: the whole 95% interval of the "
            f"difference below -{MIN_EFFECT:g}, the smallest drop that counts), fails when they are clearly not, and "
            "is inconclusive otherwise. The floor is how "
            "alike two random draws of the stage are; a stage where no method's floor is below its ceiling cannot "
            "separate methods. Each method is judged at the first randomized stage that can. Constant and "
            "degenerate maps (the signal vanished) are excluded and counted." if judged else
            "No verdict without a ceiling: run again with a model trained with another seed (--model-seeds 2, "
            "or ceiling_model= in Python). The estimates with their 95% intervals are shown.")
    return {"id": "verdicts", "title": "Verdicts", "text": text, "figures": [],
            "tables": [{"caption": "per method: verdict, the stage it is judged at, mean similarity with its 95% "
                                   "interval (images x draws), ceiling and floor", "html": table_html(shown.round(3))}]}


def overview_section(result) -> dict:
    """The report's first section: the model, the data, the accuracy on the explained images, what the numbers
    are measured against, and which methods were left out (and why) or resolved a layer."""
    meta = result.meta
    about = meta.get("about") or {}
    facts = meta.get("model") or {}
    rows = []
    model = about.get("model", "")
    if facts:
        built = f"{facts['class']}, {facts['parameters']:,d} parameters"
        model = f"{model} ({built})" if model else built
    if model:
        rows.append(("model", model))
    if about.get("data"):
        rows.append(("data", about["data"]))
    if about.get("layout") or about.get("class_order"):
        rows.append(("classes", about.get("layout") or about["class_order"]))
    order = {str(name): i for i, name in enumerate(meta.get("stages") or [])}

    def staged(d: dict) -> list:  # meta.json keeps keys sorted: show them in stage order
        return sorted(d.items(), key=lambda kv: order.get(str(kv[0]), len(order)))

    acc = meta.get("accuracy")
    if isinstance(acc, dict):
        rows.append(("accuracy on the explained images",
                     ", ".join(f"{k}: {v:.1%}" for k, v in staged(acc) if v == v)))
    elif isinstance(acc, (int, float)) and acc == acc:
        n = facts.get("images") or (result.table["image"].nunique() if len(result.table) else 0)
        rows.append(("accuracy on the explained images", f"{acc:.1%} of {n}"))
    for name, note in staged(meta.get("training") or {}):
        rows.append((f"model {name}", note))
    pm = meta.get("permuted_training")
    if isinstance(pm, dict) and pm.get("train_accuracy") is not None:
        reached = {True: "reached", False: "NOT reached"}.get(pm.get("memorized"), "")
        rows.append(("permuted-label training", f"train accuracy {pm['train_accuracy']:.1%} on the permuted labels"
                     + (f" (target {reached} in {pm.get('epochs_run')} epochs)" if reached else "")
                     + f", test accuracy {pm.get('test_accuracy', float('nan')):.1%}"))
    for method, why in (meta.get("refused") or {}).items():
        rows.append((f"{method}: left out", why))
    for method, info in (meta.get("resolved") or {}).items():
        if isinstance(info, dict) and info.get("layer"):
            rows.append((f"{method}: layer", info["layer"]))
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td class=\"text\">{html.escape(str(v))}</td></tr>"
                   for k, v in rows)
    return {"id": "overview", "title": "Overview", "text": reading(result.kind), "figures": [],
            "tables": [{"caption": "", "html": f'<table class="overview"><tbody>{body}</tbody></table>'}]}


def check_report(result, out_dir: str | Path, figures: list[Path]) -> Path:
    """The report of one check result: the overview (model, data, accuracy, how to read it), the method
    verdicts, the means per stage with the images each covers, calibration, figures, config, timings."""
    from sanitas.report.tables import mean_over, mean_summary, mean_table_html, stage_labels

    out_dir = Path(out_dir)
    labels = stage_labels(result.meta, result.stages)
    sections = [overview_section(result)]
    verdicts = verdict_section(result)
    if verdicts is not None:
        sections.append(verdicts)
    means = mean_summary(result.table) if len(result.table) else pd.DataFrame()
    tables = []
    for metric in dict.fromkeys(result.table["metric"]) if len(result.table) else []:
        tables.append({"caption": f"{metric}: mean over {mean_over(means, metric, result.table)} per stage (columns "
                                  "in stage order); n = the images (image-draw pairs) a mean covers, with how many "
                                  "were excluded and why",
                       "html": mean_table_html(means, metric, labels)})
    sections.append({"id": "summary", "title": "Similarity per stage", "tables": tables, "figures": [],
                     "text": ("Images whose map is constant (e.g. an all-zero GradCAM) have no ranking to compare: "
                              "they are excluded from a mean and counted in its cell.")})
    curves = [f for f in figures if f.name.startswith("curve-")]
    sections.append({"id": "curves", "title": "Similarity across stages", "tables": [],
                     "figures": [{"src": embed_png(f), "alt": f.stem} for f in curves]})
    grids = [f for f in figures if f.name.startswith("maps-")]
    sections.append({"id": "maps", "title": "Maps", "tables": [],
                     "figures": [{"src": embed_png(f), "alt": f.stem} for f in grids],
                     "text": ("Rows: methods; columns: stages. The number under each map is the map's sum." if grids
                              else "No maps were kept for this run.")})
    if result.calibration is not None and len(result.calibration):
        sections.append({"id": "calibration", "title": "Calibration", "figures": [],
                         "tables": [{"caption": "similarity of random masks and the input-dominance null",
                                     "html": table_html(result.calibration)}]})
    summary = result.summary()
    sections.append({"id": "table", "title": "All summary rows", "figures": [],
                     "tables": [{"caption": "mean, bootstrap 95% CI, n (images scored), NaN count and constant maps "
                                            "per method, stage and metric", "html": table_html(summary)}]})
    sections.append({"id": "meta", "title": "Configuration, versions, timings", "tables": [], "figures": [],
                     "pre": json.dumps(result.meta, indent=1, default=str)})
    about = result.meta.get("about") or {}
    subtitle = " · ".join(x for x in (about.get("model_spec"), about.get("data"),
                                      f"{result.table['image'].nunique() if len(result.table) else 0} images") if x)
    return render(out_dir / "report.html", f"sanitas: {result.kind.replace('_', ' ')}", sections, subtitle=subtitle)


def check_report_simple(out_dir: str | Path, title: str, summary: pd.DataFrame, figures: list[Path], meta: dict,
                        text: str = "") -> Path:
    """A one-table report (results that are not stage-by-stage similarities)."""
    sections = [{"id": "summary", "title": "Summary", "text": text, "figures": [],
                 "tables": [{"caption": "", "html": table_html(summary)}]},
                {"id": "figures", "title": "Figures", "tables": [],
                 "figures": [{"src": embed_png(f), "alt": Path(f).stem} for f in figures]},
                {"id": "meta", "title": "Configuration, versions, timings", "tables": [], "figures": [],
                 "pre": json.dumps(meta, indent=1, default=str)}]
    return render(Path(out_dir) / "report.html", title, sections)


def biases_report(result, out_dir: str | Path, figures: list[Path]) -> Path:
    """The report of :func:`sanitas.evaluate.biases.bias_analysis`."""
    out_dir = Path(out_dir)
    layers = result.layers.drop(columns=["n"], errors="ignore")
    sections = [
        {"id": "summary", "title": "Accuracy with and without biases", "figures": [],
         "tables": [{"caption": "per model: test accuracy, accuracy with every bias and BatchNorm shift set to zero, "
                                "the fit f^{b=0} = alpha f + beta over images and classes, and the median share of "
                                "the explained logit carried by all biases", "html": table_html(result.models)}],
         "text": ("grabska2020, supplement B: networks without BatchNorm keep most of their accuracy when their biases "
                  "are set to zero, and their outputs shrink (alpha < 1); BatchNorm networks collapse. "
                  + " ".join(f"{name}: {note}" for name, note in (result.meta.get("notes") or {}).items()))},
        {"id": "figures", "title": "Figures", "tables": [],
         "figures": [{"src": embed_png(f), "alt": Path(f).stem} for f in figures]},
        {"id": "layers", "title": "Per-layer decomposition (Eq. 13-14)", "figures": [],
         "tables": [{"caption": "A_h and A_b: gross sums of activity and bias attributions of the explained "
                                "(predicted) class; bias_above_share: share of the logit carried by the biases "
                                "above the layer; residual_max: largest |f - A_h - biases above| (NaN where the "
                                "layer does not cut the graph)", "html": table_html(layers, "{:.4g}")}]},
        {"id": "regression", "title": "Regression per class", "figures": [],
         "tables": [{"caption": "f^{b=0}_c = alpha f_c + beta fitted per class over images",
                     "html": table_html(result.regression)}]},
        {"id": "meta", "title": "Configuration, versions, timings", "tables": [], "figures": [],
         "pre": json.dumps(result.meta, indent=1, default=str)},
    ]
    return render(out_dir / "report.html", "sanitas: the role of biases", sections,
                  subtitle=f"{len(result.models)} model(s); {result.meta['config']['images']} images")


def quality_report(res, out_dir: Path) -> Path:
    """The report of :func:`sanitas.evaluate.evaluate_quality` (a :class:`~sanitas.evaluate.QualityResult`)."""
    sections = []
    piv = res.pivot(("delta_e_minus", "e_minus", "delta_e_plus", "e_plus", "delta_e_delta")).reset_index()
    sections.append({"id": "summary", "title": "Summary (mean over images)", "tables": [
        {"caption": "delta_e_* compare each map with maps of the same method for other images (higher delta_e_minus "
                    "and delta_e_delta, lower delta_e_plus are better); bootstrap CIs in summary.csv",
         "html": table_html(piv)}]})
    lt = res.layer_table()
    if not lt.empty:
        names = lt.drop_duplicates("layer_index")[["layer_index", "layer"]]
        n_act = int(((lt.metric == res.select_metric) & (lt.winner == "activity")).sum())
        n_all = int((lt.metric == res.select_metric).sum())
        sections.append({"id": "layers", "title": "Activity vs bias attributions per layer",
                         "text": f"On {res.select_metric}, activity maps beat bias maps in {n_act} of {n_all} layers "
                                 "(Wilcoxon signed-rank test paired per image, Holm-adjusted over layers; "
                                 "rank_biserial > 0 favours activity).",
                         "tables": [{"caption": "per-layer tests", "html": table_html(lt, "{:.3g}")},
                                    {"caption": "layer names", "html": table_html(names)}]})
    rk = res.aggregate_ranking()
    if not rk.empty:
        cmp_ = res.comparison()
        sections.append({"id": "aggregates", "title": f"Best aggregate: {res.best_aggregate}",
                         "text": f"Candidates ranked by mean {res.select_metric}; the best is compared with the "
                                 "others by Wilcoxon tests (positive median_difference: the best aggregate is higher).",
                         "tables": [{"caption": "ranking", "html": table_html(rk, "{:.4f}")},
                                    {"caption": "comparison", "html": table_html(cmp_, "{:.3g}")}]})
    if not res.wilcoxon.empty:
        w = res.wilcoxon[res.wilcoxon.metric == res.select_metric]
        sections.append({"id": "wilcoxon", "title": f"Pairwise Wilcoxon tests ({res.select_metric})",
                         "text": "All pairs and metrics are in wilcoxon.csv (Holm-adjusted per metric).",
                         "tables": [{"caption": "", "html": table_html(w, "{:.3g}")}]})
    sections.append({"id": "figures", "title": "Figures", "figures": [{"src": embed_png(p), "alt": p.name}
                                                                       for p in res.figures]})
    cfg = {k: v for k, v in res.meta["config"].items()}
    sections.append({"id": "config", "title": "Configuration and timings",
                     "pre": json.dumps({"config": cfg, "methods": res.meta["methods"],
                                        "timings": res.meta["timings"]}, indent=1, default=str)})
    n_img = res.table["image"].nunique()
    return render(out_dir / "report.html", "Explanation quality (decision-flip metric, grabska2020)", sections,
                  subtitle=f"{len(res.specs)} methods, {n_img} images")
