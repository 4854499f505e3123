"""Claims that read a model randomization's floor and ceiling (references.parquet): the measure on
synthetic tables, and a real run that stores the references, loads them back checked on resume,
gathers them per init scheme, and does not keep an earlier run's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sanitas.errors import ConfigError
from sanitas.experiments import evaluate_claim, run_config
from sanitas.experiments.claims import FAILS, HOLDS, NOT_RUN, measure
from sanitas.experiments.config import validate
from sanitas.experiments.reproduce import REFERENCES, StoredOutcome, damage
from sanitas.experiments.runners import Outcome

from conftest import study_config


def _frame(kind, stage_means, n_images=30, n_draws=1, sd=0.02, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for stage, mean in stage_means.items():
        for image in range(n_images):
            for draw in range(1, n_draws + 1) if kind == "floor" else range(n_draws):
                row = {"method": "gradient", "variant": f"layer{stage}", "stage": stage, "draw": draw,
                       "metric": "spearman_abs", "image": image, "value": mean + rng.normal(0, sd),
                       "constant_map": False, "degenerate_map": False}
                if kind is not None:
                    row = {"reference": kind, **row}
                rows.append(row)
    return pd.DataFrame(rows)


def _outcome(stages=None, floors=None, ceiling=None):
    table = _frame(None, {0: 1.0, **(stages or {1: 0.2, 2: 0.1})})
    refs = [_frame("floor", floors, seed=1)] if floors else []
    if ceiling is not None:
        refs.append(_frame("ceiling", {1: ceiling}, seed=2).assign(model_seed=1))
    return StoredOutcome(table, references=pd.concat(refs, ignore_index=True) if refs else None)


def _claim(m, expect):
    return {"id": "c", "claim": "c", "experiment": "e", "measure": m, "expect": expect}


FLOOR = {"method": "gradient", "metric": "spearman_abs", "reference": "floor"}
CEILING = {"method": "gradient", "metric": "spearman_abs", "reference": "ceiling"}


def test_floor_and_ceiling_measures_read_the_reference_rows():
    oc = _outcome(floors={1: 0.46, 2: 0.05}, ceiling=0.6)
    refs = oc.references
    by_hand = refs[(refs["reference"] == "floor") & (refs["stage"] == 1)]["value"].mean()
    assert measure({**FLOOR, "stages": "first"}, oc).estimate == pytest.approx(by_hand)
    assert measure({**FLOOR, "stages": "last"}, oc).estimate == pytest.approx(
        refs[(refs["reference"] == "floor") & (refs["stage"] == 2)]["value"].mean())
    assert measure({**FLOOR, "stages": "all", "reduce": "max"}, oc).estimate == pytest.approx(by_hand)
    assert measure(CEILING, oc).estimate == pytest.approx(refs[refs["reference"] == "ceiling"]["value"].mean())
    # the method's own rows are not the floor's
    assert measure({"method": "gradient", "metric": "spearman_abs", "stages": "first"}, oc).estimate == \
        pytest.approx(0.2, abs=0.02)


@pytest.mark.parametrize("stage1, ceiling, verdict", [
    (0.2, 0.6, HOLDS),    # the randomized maps are less alike the original than a second trained model's
    (0.8, 0.6, FAILS),    # more alike than two trained models: insensitive
])
def test_stage_against_the_ceiling(stage1, ceiling, verdict):
    oc = _outcome(stages={1: stage1, 2: 0.1}, floors={1: 0.3, 2: 0.05}, ceiling=ceiling)
    v = evaluate_claim(_claim({"method": "gradient", "metric": "spearman_abs", "stages": "first"},
                              {"op": "<", "than": CEILING}), "p", oc)
    assert v.verdict == verdict, v
    assert "ceiling (a second trained model)" in v.expected


@pytest.mark.parametrize("floor, verdict", [(0.46, HOLDS), (0.1, FAILS)])
def test_floor_threshold(floor, verdict):
    v = evaluate_claim(_claim({**FLOOR, "stages": "first"}, "> 0.3"), "p", _outcome(floors={1: floor, 2: 0.05}))
    assert v.verdict == verdict and v.measured == pytest.approx(floor, abs=0.02)
    assert "floor (two random draws) at the first stage" in v.expected


def test_missing_references_are_not_run_and_say_what_they_need():
    v = evaluate_claim(_claim({**FLOOR, "stages": "first"}, "> 0.3"), "p", _outcome(ceiling=0.6))
    assert v.verdict == NOT_RUN and "draws: 2" in v.why
    v = evaluate_claim(_claim(CEILING, "> 0.3"), "p", _outcome(floors={1: 0.4}))
    assert v.verdict == NOT_RUN and "model_seeds: 2" in v.why
    # a plain Outcome (a runner that stores no references) reads the same
    v = evaluate_claim(_claim(CEILING, "> 0.3"), "p", Outcome(_frame(None, {0: 1.0, 1: 0.3})))
    assert v.verdict == NOT_RUN and "ceiling" in v.why
    v = evaluate_claim(_claim({**FLOOR, "method": "other"}, "> 0.3"), "p", _outcome(floors={1: 0.4}))
    assert v.verdict == NOT_RUN and "no floor rows for method 'other'" in v.why


@pytest.mark.parametrize("m, message", [
    ({**FLOOR, "reference": "roof"}, "floor or ceiling"),
    ({**CEILING, "stages": "first"}, "leave out stages"),
])
def test_bad_reference_measures_are_config_errors(m, message):
    cfg = {"paper": "p", "experiments": {"e": {"check": "input_noise"}}, "claims": [_claim(m, "> 0")]}
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_a_run_stores_its_references_and_claims_read_them_back(tmp_path):
    """digits cnn, two draws per stage and a second trained model; two init schemes, so the references
    are gathered from each scheme's folder with an init column."""
    exp = {"check": "model_randomization", "model": "cnn", "methods": ["gradient"], "metrics": ["spearman_abs"],
           "init": ["truncated_normal", "uniform"], "draws": 2, "model_seeds": 2}
    claims = [_claim({**FLOOR, "stages": "first", "init": "uniform"}, "> -2"),
              _claim({"method": "gradient", "metric": "spearman_abs", "stages": "first", "init": "uniform"},
                     {"op": "<", "than": {**CEILING, "init": "uniform"}})]
    for c, name in zip(claims, ("floor", "ceiling")):
        c.update(id=name, experiment="one")
    import yaml

    config = study_config(tmp_path / "refs.yaml", exp)
    cfg = yaml.safe_load(config.read_text())
    cfg["claims"] = claims
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = tmp_path / "out"
    first = run_config(config, out, quiet=True, report=False)
    stored = pd.read_parquet(out / "one" / REFERENCES)
    assert set(stored["init"]) == {"truncated_normal", "uniform"} and set(stored["reference"]) == {"floor", "ceiling"}
    floor = stored[(stored["reference"] == "floor") & (stored["init"] == "uniform") & (stored["stage"] == 1)]
    got = first.claims.set_index("id")
    assert got.loc["floor", "verdict"] == HOLDS
    assert got.loc["floor", "measured"] == pytest.approx(floor["value"].mean())
    assert got.loc["ceiling", "verdict"] != NOT_RUN
    assert REFERENCES in __import__("json").loads((out / "one" / "done.json").read_text())["tables"]
    # loaded on resume, not recomputed, same verdicts
    again = run_config(config, out, quiet=True, report=False)
    assert again.outcomes["one"].references is not None
    pd.testing.assert_frame_equal(again.claims, first.claims)
    # a damaged references table is noticed like any stored table, and the run recomputes it
    pd.DataFrame({"reference": ["floor"]}).to_parquet(out / "one" / REFERENCES)
    assert "references.parquet" in damage(out / "one")
    fixed = run_config(config, out, quiet=True, report=False)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "one" / REFERENCES), stored)
    pd.testing.assert_frame_equal(fixed.claims, first.claims)
    # one draw and one model: no references, and the earlier run's are not read as this run's
    cfg["experiments"]["one"].update(draws=1, model_seeds=1)
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    plain = run_config(config, out, quiet=True, report=False)
    assert not (out / "one" / REFERENCES).exists()
    assert set(plain.claims["verdict"]) == {NOT_RUN}


def test_the_shipped_reference_claims_are_judged():
    """sanity-checks' floor and ceiling claims, judged on a synthetic randomization of their methods."""
    from sanitas.experiments import load_config

    cfg = load_config("sanity-checks")
    uses = [c for c in cfg["claims"] if "'reference'" in repr(c)]
    assert {c["experiment"] for c in uses} >= {"cascading-cnn", "independent-mlp"} and len(uses) >= 4
    for c in uses:
        method = c["measure"]["method"]
        table = _frame(None, {0: 1.0, 1: 0.4, 2: 0.2}).assign(method=method)
        refs = pd.concat([_frame("floor", {1: 0.42, 2: 0.1}, seed=1), _frame("ceiling", {1: 0.7}, seed=2)],
                         ignore_index=True).assign(method=method)
        v = evaluate_claim(c, "sanity-checks", StoredOutcome(table, references=refs))
        assert v.verdict != NOT_RUN, v
        v = evaluate_claim(c, "sanity-checks", StoredOutcome(table))
        assert v.verdict == NOT_RUN and ("draws: 2" in v.why or "model_seeds: 2" in v.why)


def test_a_stage_whose_maps_all_collapsed_is_not_run_with_its_name_not_a_nan():
    """alexnet1 under truncated-normal cascading: the lower stages' maps are all degenerate; a claim over
    every stage says which stages have nothing left and why, instead of "the measure is NaN"."""
    oc = _outcome(stages={1: 0.8, 2: 0.7, 3: 0.6})
    oc.table.loc[oc.table["stage"] >= 2, "degenerate_map"] = True
    claim = _claim({"method": "gradient", "metric": "spearman_abs", "stages": "all", "reduce": "min"}, "> 0.5")
    v = evaluate_claim(claim, "p", oc)
    assert v.verdict == NOT_RUN
    assert "layer2, layer3" in v.why and "60 degenerate (the signal vanished)" in v.why
    assert "init: default" in v.why
    # the stages that kept their signal are still judged
    v1 = evaluate_claim({**claim, "measure": {**claim["measure"], "stages": "first"}}, "p", oc)
    assert v1.verdict == HOLDS
