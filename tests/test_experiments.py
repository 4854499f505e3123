"""Declarative experiments, claims, resumable runs, reproduce and report rebuilding."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from sanitas.cli import main
from sanitas.errors import ConfigError, UnknownNameError
from sanitas.experiments import (config_text, evaluate_claim, list_papers, load_config, load_run, measure, resolve,
                                 run_config)
from sanitas.experiments import runners as runners_mod
from sanitas.experiments.claims import FAILS, HOLDS, NOT_RUN, MeasureError
from sanitas.experiments.runners import Outcome

from conftest import TINY

# -- configs ----------------------------------------------------------------------------------------

def test_shipped_configs_load_and_cover_the_four_papers():
    papers = list_papers()
    assert set(papers) >= {"sanity-checks", "competition", "sensitivity"}
    for p in papers:
        cfg = load_config(p)
        assert cfg["claims"], p
        # the quick profile resolves and every claim names an experiment of the config
        q = resolve(cfg, quick=True)
        assert all(c["experiment"] in q["experiments"] for c in cfg["claims"])
        assert yaml.safe_load(config_text(p)) == cfg


def test_every_shipped_claim_cites_where_its_paper_says_it():
    """Issue 18: each claim names the section, figure, appendix, ... of the statement it encodes (or says that
    the paper does not make it)."""
    import re

    place = re.compile(r"\b(sections?|figures?|figs?\.|appendix|appendices|supplements?|footnote|theorem|definition|"
                       r"eqs?\.|remark)", re.I)
    missing = [f"{p}: {c['id']}" for p in list_papers() for c in load_config(p)["claims"]
               if not place.search(c["claim"])]
    assert not missing, missing


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["experiments"]["cascading"].update(check="bogus"), "unknown check 'bogus'"),
    (lambda c: c["claims"][0].update(experiment="nope"), "unknown experiment 'nope'"),
    (lambda c: c["claims"][0].update(expect="about 3"), "'> 0.5'"),
    (lambda c: c["claims"][0]["measure"].pop("metric"), "needs 'metric'"),
    (lambda c: c.update(colour="red"), "unknown top-level key"),
    (lambda c: c["experiments"]["complete"].pop("model"), "needs a 'model'"),
])
def test_bad_configs_name_the_problem(tmp_path, mutate, message):
    cfg = yaml.safe_load(TINY)
    mutate(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_unknown_paper_and_missing_file():
    with pytest.raises(UnknownNameError, match="unknown paper"):
        load_config("no-such-paper")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("missing.yaml")


def test_resolve_applies_quick_profile_and_images():
    cfg = yaml.safe_load(TINY)
    r = resolve(cfg, quick=True, images=3)
    assert r["experiments"]["never"]["skip"] == "not in the quick profile"
    assert all(e["images"] == 3 and e["dataset"] == "digits" for e in r["experiments"].values())
    r = resolve(cfg, only=["complete"])
    assert "skip" in r["experiments"]["cascading"] and "skip" not in r["experiments"]["complete"]
    with pytest.raises(ConfigError, match="unknown experiment"):
        resolve(cfg, only=["zzz"])


# -- claims on a hand-made table ----------------------------------------------------------------------

def _outcome():
    rows = []
    # stage 0 original (1.0), stages 1..3 randomized; two images with values v and v + 0.1
    for stage, name, v in [(0, "original", 1.0), (1, "top", 0.6), (2, "mid", 0.4), (3, "bottom", 0.2)]:
        for image, d in enumerate((0.0, 0.1)):
            rows.append({"method": "m", "variant": name, "stage": stage, "metric": "s", "image": image,
                         "value": v + d})
    rows.append({"method": "m", "variant": "top", "stage": 1, "metric": "s", "image": 2, "value": float("nan")})
    cal = pd.DataFrame([{"metric": "s", "baseline": "input_x_uniform", "mean": 0.3}])
    return Outcome(pd.DataFrame(rows), {"k": 10.0}, cal)


@pytest.mark.parametrize("m, expected", [
    ({"method": "m", "metric": "s", "stages": "first"}, 0.65),          # NaN skipped, not averaged in
    ({"method": "m", "metric": "s", "stages": "last"}, 0.25),
    ({"method": "m", "metric": "s", "stages": "original"}, 1.05),
    ({"method": "m", "metric": "s", "stages": "all"}, (0.65 + 0.45 + 0.25) / 3),
    ({"method": "m", "metric": "s", "stages": "all_but_last", "reduce": "min"}, 0.45),
    ({"method": "m", "metric": "s", "stages": "all", "reduce": "max"}, 0.65),
    ({"method": "m", "metric": "s", "stages": 2}, 0.45),
    ({"method": "m", "metric": "s", "stages": "bottom"}, 0.25),
    ({"method": "m", "metric": "s", "variant": "mid"}, 0.45),
    ({"scalar": "k"}, 10.0),
    ({"calibration": "input_x_uniform", "metric": "s"}, 0.3),
    ({"sub": [{"scalar": "k"}, 4]}, 6.0),
    ({"ratio": [{"method": "m", "metric": "s", "stages": "last"}, {"scalar": "k"}]}, 0.025),
    ({"abs": {"sub": [1, {"scalar": "k"}]}}, 9.0),
])
def test_measures(m, expected):
    assert measure(m, _outcome()).estimate == pytest.approx(expected)


def test_claims_are_judged_on_their_interval():
    """The same mean 0.45 holds against 0.6, does not hold against 0.3, and is inconclusive against 0.45's
    neighbourhood: the interval decides, not the point."""
    import numpy as np

    from sanitas.experiments.claims import evaluate_claim

    rng = np.random.default_rng(0)
    rows = [{"method": "m", "variant": "top", "stage": 1, "metric": "s", "image": i, "draw": d,
             "value": 0.45 + rng.normal(0, 0.1)} for i in range(40) for d in range(3)]
    oc = Outcome(pd.DataFrame(rows), {}, None)
    verdicts = {}
    for thr in (0.6, 0.3, 0.46):
        claim = {"id": "c", "claim": "c", "experiment": "e", "measure": {"method": "m", "metric": "s"},
                 "expect": f"< {thr}"}
        v = evaluate_claim(claim, "p", oc)
        verdicts[thr] = v.verdict
        assert v.ci_low < v.measured < v.ci_high and v.n == 120
    assert verdicts == {0.6: "holds", 0.3: "does not hold", 0.46: "inconclusive"}


def test_measure_errors_become_not_run():
    oc = _outcome()
    with pytest.raises(MeasureError, match="no rows"):
        measure({"method": "zz", "metric": "s"}, oc)
    claim = {"id": "x", "claim": "c", "experiment": "e", "measure": {"scalar": "missing"}, "expect": "> 1"}
    v = evaluate_claim(claim, "p", oc)
    assert v.verdict == NOT_RUN and "no scalar 'missing'" in v.why
    v = evaluate_claim(claim, "p", None, "skipped: quick profile")
    assert v.verdict == NOT_RUN and v.why == "skipped: quick profile"


def test_missing_scalar_names_its_relatives_briefly():
    scalars = {f"{k}/{m}": 1.0 for k in ("r2", "alpha", "beta", "accuracy") for m in ("cnn", "mlp")}
    oc = Outcome(pd.DataFrame(), scalars)
    with pytest.raises(MeasureError) as e:
        measure({"scalar": "r2/vgg-small"}, oc)
    assert str(e.value).endswith("only r2/cnn, r2/mlp (a model not in this run?)")
    with pytest.raises(MeasureError) as e:
        measure({"scalar": "nothing"}, Outcome(pd.DataFrame(), {**scalars, "x/a": 1.0, "y/b": 2.0}))
    assert "it has accuracy/cnn, accuracy/mlp," in str(e.value) and str(e.value).endswith("... (2 more))")


@pytest.mark.parametrize("expect, verdict", [
    ("< 0.3", HOLDS), ("> 0.3", FAILS), ("<= 0.25", HOLDS), (">= 0.26", FAILS),
    ({"op": "within", "tol": 0.06, "of": {"calibration": "input_x_uniform", "metric": "s"}}, HOLDS),
    ({"op": "within", "tol": 0.04, "of": {"calibration": "input_x_uniform", "metric": "s"}}, FAILS),
    ({"op": "within", "rel": 0.2, "of": 0.3}, HOLDS),
    ({"op": "within", "rel": 0.1, "of": 0.3}, FAILS),
    ({"op": "<", "than": {"method": "m", "metric": "s", "stages": "first"}}, HOLDS),
])
def test_expectations(expect, verdict):
    """How each expectation compares; the images agree here, so the interval is the point (the interval's
    own role is tested in test_claims_are_judged_on_their_interval)."""
    claim = {"id": "x", "claim": "c", "experiment": "e", "measure": {"method": "m", "metric": "s", "stages": "last"},
             "expect": expect}
    oc = _outcome()
    t = oc.table.copy()
    t["value"] = t.groupby("stage")["value"].transform("mean")  # every image at its stage's mean
    v = evaluate_claim(claim, "p", Outcome(t, oc.scalars, oc.calibration))
    assert v.verdict == verdict
    assert math.isclose(v.measured, 0.25)


# -- running a config ------------------------------------------------------------------------------

def test_run_config_writes_results_claims_and_report(tiny_run):
    out = tiny_run.out
    claims = tiny_run.claims.set_index("id")
    assert claims.loc["t1", "verdict"] in (HOLDS, FAILS) and claims.loc["t1", "measured"] == claims.loc["t1",
                                                                                                       "measured"]
    assert claims.loc["t2", "verdict"] == FAILS            # R^2 can never exceed 2: a finding, reported
    assert claims.loc["t3", "verdict"] == NOT_RUN and "quick profile" in claims.loc["t3", "why"]
    assert claims.loc["t4", "verdict"] == NOT_RUN and "no rows" in claims.loc["t4", "why"]
    for f in ("claims.csv", "claims.json", "study.json", "report.html", "cascading/results.parquet",
              "cascading/done.json", "cascading/report.html", "complete/done.json"):
        assert (out / f).is_file(), f
    t = pd.read_parquet(out / "cascading" / "results.parquet")
    assert set(t["metric"]) == {"spearman_abs", "ssim", "nonzero_fraction"}
    html = (out / "report.html").read_text()
    assert "Tiny test study" in html and html.count('<tr class="claim">') == 4
    assert "Verdict per method" in html and "judged at stage" in html and "mean_randomized" not in html


def test_reproduce_report_judges_methods_with_the_checks_own_verdicts(tmp_path):
    """Regression: the combined report had its own rule (mean over the randomized stages < 0.5 passes), which
    passed a method whose first randomized stage stays far above the ceiling while the check's verdicts()
    failed it. The table now comes from result.verdicts() (rebuilt from the stored tables)."""
    import numpy as np

    from sanitas.experiments.report import method_verdicts
    from sanitas.experiments.reproduce import PaperRun, StoredOutcome

    rng = np.random.default_rng(0)
    rows, refs = [], []
    for img in range(20):
        for stage, value in ((0, 1.0), (1, 0.97), (2, 0.1), (3, 0.1)):
            rows.append({"method": "guided_backprop", "stage": stage, "variant": f"s{stage}", "draw": 0,
                         "metric": "spearman_abs", "image": img, "value": value + rng.normal(0, 0.01)})
        refs.append({"reference": "ceiling", "method": "guided_backprop", "stage": 0, "metric": "spearman_abs",
                     "image": img, "draw": 0, "value": 0.6 + rng.normal(0, 0.01)})
    oc = StoredOutcome(pd.DataFrame(rows), references=pd.DataFrame(refs))
    run = PaperRun({"paper": "p", "experiments": {"mr": {"check": "model_randomization", "model": "cnn"}}}, tmp_path,
                   outcomes={"mr": oc})
    v = method_verdicts([run])
    assert v["verdict"].tolist() == ["fail"] and v["judged at stage"].tolist() == ["s1"]
    assert v["ci_low"].iloc[0] > 0.9 and "ceiling" in v["why"].iloc[0]


def test_finished_experiments_are_loaded_not_rerun(tiny_run, tiny_config, monkeypatch):
    calls = []
    monkeypatch.setitem(runners_mod.RUNNERS, "model_randomization", lambda *a: calls.append(a))
    monkeypatch.setitem(runners_mod.RUNNERS, "completeness", lambda *a: calls.append(a))
    again = run_config(tiny_config, tiny_run.out, quick=True, quiet=True)
    assert calls == []
    pd.testing.assert_frame_equal(again.claims, tiny_run.claims)


def test_changed_spec_reruns_the_experiment(tiny_run, tmp_path):
    cfg = yaml.safe_load(TINY)
    cfg["experiments"]["complete"]["methods"] = ["gradient"]
    from sanitas.experiments.reproduce import load_outcome

    spec = resolve(cfg, quick=True)["experiments"]["complete"]
    assert load_outcome(tiny_run.out / "complete", spec) is None
    assert load_outcome(tiny_run.out / "complete") is not None


class _Interrupt(BaseException):
    pass


def test_interrupted_run_resumes_without_recomputing(tiny_config, tiny_run, tmp_path, monkeypatch):
    """Kill the run inside the second stage; the re-run computes only what was missing and the
    final tables equal the uninterrupted run's."""
    from sanitas.explain.base import Explainer

    calls = {"n": 0, "limit": 5}
    original = Explainer.__call__

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > calls["limit"]:
            raise _Interrupt()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Explainer, "__call__", counting)
    with pytest.raises(_Interrupt):
        run_config(tiny_config, tmp_path / "killed", quick=True, quiet=True)
    assert not (tmp_path / "killed" / "cascading" / "done.json").exists()
    assert list((tmp_path / "killed" / "cascading").rglob("*.pt"))     # some cells were finished
    calls.update(n=0, limit=10**9)
    resumed = run_config(tiny_config, tmp_path / "killed", quick=True, quiet=True)
    n_resumed = calls["n"]
    calls.update(n=0)
    run_config(tiny_config, tmp_path / "fresh", quick=True, quiet=True)
    assert 0 < n_resumed < calls["n"]             # finished cells were not recomputed
    for name in ("cascading", "complete"):
        a = pd.read_parquet(tmp_path / "killed" / name / "results.parquet")
        b = pd.read_parquet(tiny_run.out / name / "results.parquet")
        pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(resumed.claims, tiny_run.claims)


def test_load_run_and_rebuild(tiny_run):
    from sanitas.experiments.rebuild import rebuild

    run = load_run(tiny_run.out)
    assert set(run.outcomes) == {"cascading", "complete"}
    path, claims = rebuild(tiny_run.out)
    pd.testing.assert_frame_equal(claims.reset_index(drop=True), tiny_run.claims.reset_index(drop=True),
                                  check_dtype=False)
    assert path.is_file()
    # a single check's directory rebuilds too
    path, claims = rebuild(tiny_run.out / "cascading")
    assert claims is None and path.name == "report.html"
    with pytest.raises(ConfigError, match="holds no sanitas results"):
        rebuild(tiny_run.out / "cascading" / "figures")


# -- CLI ----------------------------------------------------------------------------------------------

def test_cli_reproduce_list_and_show():
    r = CliRunner().invoke(main, ["reproduce", "--list"])
    assert r.exit_code == 0 and "sanity-checks" in r.output and "claims" in r.output
    r = CliRunner().invoke(main, ["reproduce", "--show", "sensitivity"])
    assert r.exit_code == 0 and yaml.safe_load(r.output) == load_config("sensitivity")
    r = CliRunner().invoke(main, ["reproduce", "--show", "nope"])
    assert r.exit_code == 1 and "unknown paper" in r.output
    r = CliRunner().invoke(main, ["reproduce", "sensitivity"])
    assert r.exit_code == 1 and "needs --out" in r.output


def test_cli_run_and_report(tiny_config, tiny_run):
    r = CliRunner().invoke(main, ["run", str(tiny_config), "--out", str(tiny_run.out), "--quick", "-q"])
    assert r.exit_code == 0, r.output
    assert "t2" in r.output and "does not hold" in r.output and "4 claims" in r.output
    (tiny_run.out / "claims.json").unlink()
    r = CliRunner().invoke(main, ["report", str(tiny_run.out)])
    assert r.exit_code == 0 and "report:" in r.output
    # re-judging writes both claims files (it used to rewrite claims.csv only, leaving claims.json stale)
    assert len(json.loads((tiny_run.out / "claims.json").read_text())) == len(pd.read_csv(tiny_run.out / "claims.csv"))
    r = CliRunner().invoke(main, ["run", "nowhere.yaml", "--out", str(tiny_run.out)])
    assert r.exit_code == 1 and "does not exist" in r.output
    # --only repeated or comma-separated: both names count (repeating used to keep only the last)
    for only in (["--only", "cascading", "--only", "complete"], ["--only", "cascading,complete"]):
        r = CliRunner().invoke(main, ["run", str(tiny_config), "--out", str(tiny_run.out), "--quick", "-q", *only])
        assert r.exit_code == 0, r.output
        study = json.loads((tiny_run.out / "study.json").read_text())
        assert set(study["not_run"]) == {"never"}, study["not_run"]


def test_reproduce_runs_papers_into_one_report(tmp_path, stand_in_runners):
    """reproduce = one run per paper + combined claims/report; here with a fast stand-in runner."""
    from sanitas.experiments import reproduce

    runs, claims, report = reproduce(["sensitivity", "competition"], tmp_path, quick=True, quiet=True)
    assert report.is_file() and (tmp_path / "claims.csv").is_file()
    assert set(claims["paper"]) == {"sensitivity", "competition"}
    assert len(claims) == sum(len(load_config(p)["claims"]) for p in ("sensitivity", "competition"))
    info = json.loads((tmp_path / "reproduce.json").read_text())
    assert info["papers"] == ["sensitivity", "competition"]


def test_quality_runners_report_scalars_for_the_claims(tmp_path):
    """The evaluate and biases runners on a tiny digits cnn: the scalars the quality claims read exist."""
    cfg = {"paper": "q", "dataset": "digits", "seed": 0, "images": 6, "experiments": {
        "ev": {"check": "evaluate", "model": "cnn", "layers": "all", "methods": ["gradient", "random"],
               "n_shuffles": 2, "test_method": "asymptotic"},
        "bi": {"check": "biases", "model": ["cnn"], "images": 8, "accuracy_images": 50}},
        "claims": [{"id": "q1", "claim": "c", "experiment": "ev", "measure": {"scalar": "n_layers"}, "expect": "> 0"},
                   {"id": "q2", "claim": "c", "experiment": "bi", "measure": {"scalar": "max_residual/cnn"},
                    "expect": "< 1e-4"}]}
    run = run_config(cfg, tmp_path, quiet=True)
    ev, bi = run.outcomes["ev"].scalars, run.outcomes["bi"].scalars
    assert ev["n_layers"] == 2 and 1 <= ev["best_aggregate_layers"] <= 3
    assert 0 <= ev["activity_vs_bias_p/delta_e_minus"] <= 1
    assert 0 <= ev["layers_activity_better/delta_e_minus"] <= 1
    assert "best_vs/random/p" in ev and "mean/delta_e_minus/gradient" in ev
    assert 0 <= bi["zero_bias_accuracy/cnn"] <= 1 and "r2/cnn" in bi and "accuracy_drop/cnn" in bi
    assert list(run.claims["verdict"]) == ["holds", "holds"]
    assert (tmp_path / "report.html").is_file() and (tmp_path / "ev" / "report.html").is_file()


def test_training_key_trains_the_studys_models_on_a_subset(tmp_path, monkeypatch):
    """``training: {train_size: N}`` reaches every experiment, which runs inside training_defaults: a model it
    trains sees N images (the quick profile's smaller models); per experiment it can be overridden."""
    import importlib

    from sanitas.experiments.config import resolve, validate
    from sanitas.experiments.runners import Outcome
    from sanitas.models import train

    reproduce_mod = importlib.import_module("sanitas.experiments.reproduce")
    seen = {}

    def runner(spec, out, quiet):
        seen[out.name] = train("linear", "digits", epochs=1, seed=3, cache=False).metrics["n_train"]
        return Outcome(pd.DataFrame({"method": ["x"], "variant": ["v"], "stage": [1], "metric": ["m"],
                                     "image": [0], "value": [0.0]}), {}, None, [], None, 0.0)

    monkeypatch.setattr(reproduce_mod, "runner_for", lambda kind: runner)
    exp = {"check": "model_randomization", "model": "linear", "methods": ["gradient"]}
    cfg = {"paper": "t", "dataset": "digits", "images": 2, "training": {"train_size": 300},
           "experiments": {"a": dict(exp), "b": {**exp, "training": {"train_size": 200}}}}
    run_config(cfg, tmp_path, quiet=True)
    assert seen == {"a": 300, "b": 200}
    assert train("linear", "digits", epochs=1, seed=3, cache=False).metrics["n_train"] > 300   # the scope ended
    with pytest.raises(ConfigError, match="training takes"):
        validate({**cfg, "training": {"epochs": 2}})
    # the shipped quick profiles train smaller models; the full profiles train on every image
    for paper in list_papers():
        quick, full = resolve(load_config(paper), quick=True), resolve(load_config(paper))
        assert all(e.get("training", {}).get("train_size") for e in quick["experiments"].values()), paper
        assert not any("training" in e for e in full["experiments"].values()), paper


def test_data_randomization_entry_takes_all_training_images():
    from sanitas.experiments.config import validate

    exp = {"check": "data_randomization", "model": "cnn", "methods": ["gradient"]}
    validate({"paper": "t", "experiments": {"d": {**exp, "train_size": "all"}}})
    validate({"paper": "t", "experiments": {"d": {**exp, "train_size": 500}}})
    with pytest.raises(ConfigError, match="a positive count, or all"):
        validate({"paper": "t", "experiments": {"d": {**exp, "train_size": "most"}}})


def test_a_randomization_entry_draws_its_report_once(tiny_config, tmp_path, monkeypatch):
    """The check drew its report, then the entry drew it again with what the run was about: once is enough."""
    import sanitas.report.html as report_html

    calls = []
    real = report_html.check_report
    monkeypatch.setattr(report_html, "check_report", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    run = run_config(tiny_config, tmp_path / "o", quick=True, quiet=True, only=["cascading"])
    assert len(calls) == 1 and "about" in run.outcomes["cascading"].result.meta
    assert "cnn" in (tmp_path / "o" / "cascading" / "report.html").read_text()
