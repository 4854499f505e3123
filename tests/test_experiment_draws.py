"""Randomization draws and model seeds in experiment configs: schema, defaults of the profiles, runner."""

from __future__ import annotations

import pandas as pd
import pytest

from sanitas.errors import ConfigError
from sanitas.experiments import load_config, resolve, run_config
from sanitas.experiments.config import validate

from conftest import tiny_study

BODY = """
experiments:
  cascading:
    check: model_randomization
    model: cnn
    methods: [gradient]
    metrics: [spearman_abs]
  complete:
    check: completeness
    model: cnn
    methods: [gradient]
claims:
  - {id: t1, claim: the gradient changes, experiment: cascading,
     measure: {method: gradient, metric: spearman_abs, stages: first}, expect: "< 0.99"}
"""


def _cfg(**top):
    cfg = tiny_study(BODY)
    cfg.update(top)
    return cfg


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.update(draws=0), "draws"),
    (lambda c: c.update(draws="five"), "draws"),
    (lambda c: c.update(model_seeds=0), "model_seeds"),
    (lambda c: c.update(model_seeds=1.5), "model_seeds"),
    (lambda c: c["experiments"]["cascading"].update(draws=-1), "draws"),
    (lambda c: c["experiments"]["cascading"].update(model_seeds=True), "model_seeds"),
    (lambda c: c["experiments"]["cascading"].update(draws=3, mode="efficient"), "draws applies to the cascading"),
    (lambda c: c["experiments"]["complete"].update(draws=2), "unknown key 'draws'"),
    (lambda c: c["experiments"]["cascading"].update(drwas=2), "did you mean 'draws'"),
    (lambda c: c.update(quick={"draws": 0}), "draws"),
])
def test_bad_draws_and_model_seeds_are_config_errors(mutate, message):
    cfg = _cfg()
    mutate(cfg)
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_draws_and_model_seeds_are_defaults_for_the_experiments_that_take_them():
    cfg = _cfg(draws=5, model_seeds=2, quick={"draws": 1, "model_seeds": 1})
    cfg["experiments"]["eff"] = {"check": "model_randomization", "model": "cnn", "mode": "efficient",
                                 "methods": ["gradient"]}
    cfg["experiments"]["own"] = {"check": "model_randomization", "model": "cnn", "draws": 3, "methods": ["gradient"]}
    validate(cfg)
    full, quick = resolve(cfg), resolve(cfg, quick=True)
    assert (full["experiments"]["cascading"]["draws"], full["experiments"]["cascading"]["model_seeds"]) == (5, 2)
    assert (quick["experiments"]["cascading"]["draws"], quick["experiments"]["cascading"]["model_seeds"]) == (1, 1)
    assert "draws" not in full["experiments"]["eff"]          # eMPRT compares one full randomization
    assert full["experiments"]["own"]["draws"] == 3 and quick["experiments"]["own"]["draws"] == 3
    assert "draws" not in full["experiments"]["complete"] and "model_seeds" not in full["experiments"]["complete"]
    plain = resolve(_cfg())                                   # a user's config without them: one draw, no ceiling
    assert (plain["experiments"]["cascading"]["draws"], plain["experiments"]["cascading"]["model_seeds"]) == (1, 1)


@pytest.mark.parametrize("paper", ["sanity-checks", "competition", "sensitivity"])
def test_shipped_profiles_draw_five_times_in_full_and_once_quick(paper):
    cfg = load_config(paper)
    for quick, draws, seeds in ((False, 5, 2), (True, 1, 1)):
        exps = resolve(cfg, quick=quick)["experiments"]
        mr = [e for e in exps.values() if e["check"] == "model_randomization"]
        assert mr and all(e["draws"] == draws and e["model_seeds"] == seeds for e in mr), paper


def test_runner_draws_stages_and_trains_the_ceiling(tmp_path):
    run = run_config(_cfg(draws=2, model_seeds=2), tmp_path, quiet=True, only=["cascading"])
    oc = run.outcomes["cascading"]
    t = oc.table
    assert sorted(t.loc[t["stage"] > 0, "draw"].unique()) == [0, 1]
    refs = pd.read_parquet(tmp_path / "cascading" / "references.parquet")
    assert {"floor", "ceiling"} <= set(refs["reference"])     # two draws give a floor, the second seed a ceiling
    claim = run.claims.iloc[0]
    # the interval resamples images and draws: n counts both
    assert claim["n"] == 2 * 6 and claim["ci_low"] <= claim["measured"] <= claim["ci_high"]
