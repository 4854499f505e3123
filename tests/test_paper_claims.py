"""The claim types added for issue 18 (signed views, drops at a stage, init schemes compared, the
shared-zero curve, edge detectors): each judged on synthetic tables with a clear pass, a clear fail
and an inconclusive case, and the experiments behind them run on tiny inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sanitas.errors import ConfigError
from sanitas.experiments import evaluate_claim, run_config
from sanitas.experiments.claims import FAILS, HOLDS, INCONCLUSIVE, NOT_RUN
from sanitas.experiments.config import validate
from sanitas.experiments.runners import Outcome

from conftest import tiny_study


def _claim(measure, expect):
    return {"id": "c", "claim": "c", "experiment": "e", "measure": measure, "expect": expect}


def _rows(values_by_key, n_images=40, n_draws=3, sd=0.05, seed=0, **extra):
    """Rows of a randomization table: ``values_by_key[(init, stage)] = mean``, noise ``sd`` per image and draw."""
    rng = np.random.default_rng(seed)
    rows = []
    for (init, stage), mean in values_by_key.items():
        for image in range(n_images):
            for draw in range(n_draws):
                row = {"method": "m", "variant": f"s{stage}", "stage": stage, "draw": draw, "metric": "spearman_abs",
                       "image": image, "value": mean + rng.normal(0, sd), **extra}
                if init is not None:
                    row["init"] = init
                rows.append(row)
    return pd.DataFrame(rows)


SAME_INIT = {"sub": [{"method": "m", "metric": "spearman_abs", "init": "uniform"},
                     {"method": "m", "metric": "spearman_abs", "init": "truncated_normal"}]}


@pytest.mark.parametrize("uniform, sd, verdict", [
    (0.41, 0.02, HOLDS),          # a difference of 0.01: the interval lies inside +-0.1
    (0.80, 0.02, FAILS),          # 0.4 apart: the whole interval outside
    (0.50, 0.30, INCONCLUSIVE),   # 0.1 apart with wide noise: the interval straddles the tolerance
])
def test_init_schemes_compared(uniform, sd, verdict):
    t = _rows({("truncated_normal", 1): 0.4, ("truncated_normal", 2): 0.4, ("uniform", 1): uniform,
               ("uniform", 2): uniform}, sd=sd)
    v = evaluate_claim(_claim(SAME_INIT, {"op": "within", "tol": 0.1, "of": 0}), "p", Outcome(t))
    assert v.verdict == verdict, v
    assert v.measured == pytest.approx(uniform - 0.4, abs=0.1)


def test_init_measure_needs_an_init_column():
    t = _rows({(None, 1): 0.4})
    v = evaluate_claim(_claim(SAME_INIT, {"op": "within", "tol": 0.1, "of": 0}), "p", Outcome(t))
    assert v.verdict == NOT_RUN and "one init scheme" in v.why
    t = _rows({("uniform", 1): 0.4})
    v = evaluate_claim(_claim(SAME_INIT, {"op": "within", "tol": 0.1, "of": 0}), "p", Outcome(t))
    assert v.verdict == NOT_RUN and "init 'truncated_normal'" in v.why


SIGN = {"method": "m", "metric": "spearman_abs", "stages": "first"}


@pytest.mark.parametrize("mean, sd, verdict", [(0.0, 0.05, HOLDS), (0.5, 0.05, FAILS), (0.1, 0.3, INCONCLUSIVE)])
def test_signed_correlation_goes_to_zero(mean, sd, verdict):
    t = _rows({(None, 1): mean, (None, 2): 0.0}, sd=sd)
    v = evaluate_claim(_claim(SIGN, {"op": "within", "tol": 0.1, "of": 0}), "p", Outcome(t))
    assert v.verdict == verdict
    # an interval that straddles the tolerance is never "holds"
    if v.ci_low < -0.1 or v.ci_high > 0.1:
        assert v.verdict != HOLDS


DROP = {"sub": [{"method": "m", "metric": "spearman_abs", "stages": "last"},
                {"method": "m", "metric": "spearman_abs", "stages": "all_but_last", "reduce": "min"}]}


@pytest.mark.parametrize("last, sd, verdict", [(0.5, 0.05, HOLDS), (0.95, 0.05, FAILS), (0.88, 0.4, INCONCLUSIVE)])
def test_drop_at_the_last_stage(last, sd, verdict):
    """Guided backprop's footnote 5: the last stage below the minimum over the stages before it."""
    t = _rows({(None, 1): 0.95, (None, 2): 0.9, (None, 3): last}, sd=sd)
    v = evaluate_claim(_claim(DROP, "< 0"), "p", Outcome(t))
    assert v.verdict == verdict


def test_init_list_is_checked():
    cfg = {"paper": "p", "dataset": "digits", "experiments": {
        "e": {"check": "model_randomization", "model": "cnn", "methods": ["gradient"], "init": ["uniform", "bogus"]}}}
    with pytest.raises(ConfigError, match="unknown init scheme 'bogus'"):
        validate(cfg)
    cfg["experiments"]["e"]["init"] = ["uniform", "uniform"]
    with pytest.raises(ConfigError, match="twice"):
        validate(cfg)
    cfg["experiments"]["e"]["init"] = []
    with pytest.raises(ConfigError, match="init scheme"):
        validate(cfg)


def test_randomization_with_two_init_schemes(tmp_path):
    """init: [truncated_normal, uniform] runs the test per scheme; the claims compare them and a re-run loads it."""
    cfg = tiny_study("""
experiments:
  inits:
    check: model_randomization
    model: cnn
    init: [truncated_normal, uniform]
    methods: [gradient]
    metrics: [spearman_abs]
claims:
  - {id: u1, claim: c, experiment: inits, measure: {method: gradient, metric: spearman_abs, stages: first, init: uniform},
     expect: "< 0.99"}
  - {id: u2, claim: c, experiment: inits, measure: {sub: [{method: gradient, metric: spearman_abs, init: uniform},
     {method: gradient, metric: spearman_abs, init: truncated_normal}]}, expect: {op: within, tol: 1.5, of: 0}}
""")
    run = run_config(cfg, tmp_path, quiet=True)
    t = run.outcomes["inits"].table
    assert set(t["init"]) == {"truncated_normal", "uniform"}
    for init in ("truncated_normal", "uniform"):
        assert (tmp_path / "inits" / init / "results.parquet").is_file()
        assert (tmp_path / "inits" / init / "report.html").is_file()
    assert (tmp_path / "inits" / "report.html").is_file()
    # the schemes draw different weights: the randomized stages differ, the original stage does not
    a = t[(t["init"] == "uniform") & (t["stage"] > 0)]["value"].to_numpy()
    b = t[(t["init"] == "truncated_normal") & (t["stage"] > 0)]["value"].to_numpy()
    assert not np.allclose(a, b)
    assert list(run.claims["verdict"]) == [HOLDS, HOLDS]
    again = run_config(cfg, tmp_path, quiet=True)
    pd.testing.assert_frame_equal(again.claims, run.claims)
    pd.testing.assert_frame_equal(again.outcomes["inits"].table, t)


# -- sundararajan2019 figure 1: Spearman's rho and shared zeros ------------------------------------------

@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 0.8])
def test_shared_zero_spearman_follows_its_closed_form(p):
    """rho of two positive random vectors with a fraction p of shared zeros tends to 3p / (1 + p + p^2)."""
    import torch

    from sanitas.experiments.shared_zeros import shared_zero_spearman

    n = 2000
    rho = shared_zero_spearman(n, int(p * n), 200, torch.Generator().manual_seed(0))
    assert rho.shape == (200,)
    assert float(rho.mean()) == pytest.approx(3 * p / (1 + p + p * p), abs=0.01)


def test_shared_zero_curve_claims_on_synthetic_tables():
    from sanitas.experiments.shared_zeros import curve_rows

    rise = {"sub": [{"method": "random_positive", "metric": "spearman", "stages": "last"},
                    {"method": "random_positive", "metric": "spearman", "stages": "first"}]}
    curve = curve_rows(784, [0.0, 0.5, 0.95], 50, seed=0)
    assert list(dict.fromkeys(curve["variant"])) == ["shared 0.00", "shared 0.50", "shared 0.95"]
    assert evaluate_claim(_claim(rise, "> 0.5"), "p", Outcome(curve)).verdict == HOLDS
    # a curve that does not rise (no shared zeros anywhere) fails it
    flat = curve_rows(784, [0.0, 0.0, 0.0], 50, seed=0)
    assert evaluate_claim(_claim(rise, "> 0.5"), "p", Outcome(flat)).verdict == FAILS
    # a few pairs of short vectors at 50%: a wide interval, which straddles the curve's own value
    small = curve_rows(12, [0.0, 0.5], 6, seed=0)
    half = {"method": "random_positive", "metric": "spearman", "stages": "shared 0.50"}
    v = evaluate_claim(_claim(half, "> 0"), "p", Outcome(small))
    assert v.verdict == HOLDS and v.ci_high - v.ci_low > 0.01
    assert evaluate_claim(_claim(half, f"> {v.measured:.4f}"), "p", Outcome(small)).verdict == INCONCLUSIVE


def test_shared_zeros_experiment_on_digits(tmp_path):
    cfg = tiny_study("""
experiments:
  zeros:
    check: shared_zeros
    model: cnn
    methods: [integrated_gradients]
    fractions: [0.0, 0.3, 0.6, 0.9]
    samples: 20
claims:
  - {id: z1, claim: rises, experiment: zeros, measure: {sub: [{method: random_positive, metric: spearman, stages: last},
     {method: random_positive, metric: spearman, stages: first}]}, expect: "> 0.5"}
  - {id: z2, claim: on the curve, experiment: zeros, measure: {method: integrated_gradients, metric: spearman_abs,
     stages: last}, expect: {op: within, tol: 1.0, of: {method: integrated_gradients, metric: shared_zero_null,
     stages: original}}}
""")
    run = run_config(cfg, tmp_path, quiet=True)
    oc = run.outcomes["zeros"]
    t = oc.table
    from sanitas.data import load_dataset

    x = load_dataset("digits", "test").sample(6, seed=0).x
    frac = t[t["metric"] == "shared_zero_fraction"].sort_values("image")["value"].to_numpy()
    np.testing.assert_allclose(frac, (x == 0).reshape(6, -1).float().mean(1).numpy())
    null = t[t["metric"] == "shared_zero_null"]["value"].to_numpy()
    assert np.all((null > 0) & (null < 1))
    assert 0 < oc.scalars["mean_shared_zero_fraction"] < 1
    assert list(run.claims["verdict"]) == [HOLDS, HOLDS]
    assert (tmp_path / "zeros" / "figures" / "shared_zeros.png").is_file()
    assert (tmp_path / "zeros" / "maps" / "report.html").is_file()
    assert (tmp_path / "zeros" / "report.html").is_file()


def test_shared_zeros_config_is_checked():
    cfg = {"paper": "p", "dataset": "digits", "experiments": {
        "z": {"check": "shared_zeros", "model": "cnn", "fractions": [0.0, 1.0]}}}
    with pytest.raises(ConfigError, match="below 1"):
        validate(cfg)
    cfg["experiments"]["z"]["fractions"] = [0.5]
    cfg["experiments"]["z"]["samples"] = 1
    with pytest.raises(ConfigError, match="samples"):
        validate(cfg)


def test_rows_without_map_flags_are_not_excluded():
    """A combined table (random curves beside a check's rows) has NaN map flags on the rows that are no
    maps; they count (NaN read as True used to exclude them all and leave the claim 'not run')."""
    t = _rows({(None, 1): 0.5}, n_draws=1)
    t["constant_map"] = pd.array([None] * 20 + [True] * 5 + [False] * 15, dtype="boolean")
    v = evaluate_claim(_claim({"method": "m", "metric": "spearman_abs"}, "> 0.2"), "p", Outcome(t))
    assert v.verdict == HOLDS and v.n == 35 and v.excluded == 5


# -- adebayo2018 figure 19: x * u vs x * v as the noise grows --------------------------------------------

def test_input_noise_table_on_tiny_inputs():
    import torch

    from sanitas.checks.model_randomization import resolve_metrics
    from sanitas.experiments.input_noise import input_noise_table

    x = torch.zeros(5, 1, 6, 6)
    x[:, :, 1:5, 1:5] = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(0)) + 0.5
    t = input_noise_table(x, resolve_metrics(["spearman_abs"]), noise=[2.0, 0.01, 100.0], samples=3, seed=0)
    assert set(t["method"]) == {"input_x_gaussian", "gaussian", "input_x_uniform", "uniform"}
    assert list(dict.fromkeys(t["variant"])) == ["noise 0.01", "noise 2", "noise 100"]   # sorted: first = least noise
    assert len(t) == 4 * 3 * 3 * 5
    m = t.groupby(["method", "stage"])["value"].mean()
    assert m[("gaussian", 1)] > 0.99 and abs(m[("gaussian", 3)]) < 0.3           # u vs v: same, then independent
    # the 20 shared zeros of x keep x * u vs x * v high however far u and v drift apart
    assert m[("input_x_gaussian", 3)] > 0.5 and m[("input_x_gaussian", 3)] > m[("gaussian", 3)] + 0.3


@pytest.mark.parametrize("prod_last, raw_last, verdict", [
    (0.85, 0.0, HOLDS),     # the product keeps its similarity, the noise loses it: input dominance persists
    (0.0, 0.85, FAILS),
    (0.5, 0.5, INCONCLUSIVE),
])
def test_input_dominance_persists(prod_last, raw_last, verdict):
    first = lambda m: {"method": m, "metric": "spearman_abs", "stages": "first"}  # noqa: E731
    last = lambda m: {"method": m, "metric": "spearman_abs", "stages": "last"}    # noqa: E731
    t = pd.concat([_rows({(None, 1): 1.0, (None, 2): prod_last}, sd=0.05, seed=1).assign(method="input_x_gaussian"),
                   _rows({(None, 1): 1.0, (None, 2): raw_last}, sd=0.05, seed=2).assign(method="gaussian")])
    claim = _claim({"sub": [{"sub": [first("input_x_gaussian"), last("input_x_gaussian")]},
                            {"sub": [first("gaussian"), last("gaussian")]}]}, "< 0")
    assert evaluate_claim(claim, "p", Outcome(t)).verdict == verdict


def test_input_noise_runs_without_a_model(tmp_path):
    cfg = tiny_study(images=5, body="""
experiments:
  noise:
    check: input_noise
    noise: [0.1, 10]
    samples: 2
    metrics: [spearman_abs]
claims:
  - {id: n1, claim: c, experiment: noise, measure: {method: input_x_gaussian, metric: spearman_abs, stages: last},
     expect: "> 0.3"}
""")
    run = run_config(cfg, tmp_path, quiet=True)
    assert run.claims.iloc[0]["verdict"] == HOLDS and run.claims.iloc[0]["n"] == 5 * 2
    assert (tmp_path / "noise" / "figures" / "input_noise.png").is_file()
    cfg["experiments"]["noise"]["noise"] = [0.1, 0]
    with pytest.raises(ConfigError, match="noise"):
        validate(cfg)


# -- adebayo2018 figure 1 / 5.4: edge detectors -------------------------------------------------------------

def test_edge_comparison_scores_methods_against_detectors():
    """A model-free 'method' that is the Sobel map itself scores 1 against Sobel; the input x Sobel stage
    compares a method's map of x with its map of x * edges."""
    import torch

    from sanitas.checks.model_randomization import resolve_metrics
    from sanitas.experiments.edges import edge_comparison
    from sanitas.explain import get_explainer

    x = torch.zeros(4, 1, 12, 12)
    x[:, :, 3:9, 3:9] = 1.0
    x[1, :, 5:7, :] = 0.5
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 3))
    y = torch.tensor([0, 1, 2, 0])
    methods = {"sobel": get_explainer("sobel"), "gradient": get_explainer("gradient")}
    t, shown = edge_comparison(model, x, y, methods, resolve_metrics(["spearman_abs"]), ["sobel", "canny"])
    assert list(dict.fromkeys(t["variant"])) == ["vs sobel", "vs canny", "input x sobel"]
    m = t.groupby(["method", "variant"])["value"].mean()
    assert m[("sobel", "vs sobel")] == pytest.approx(1.0)
    # a linear model's gradient does not depend on the input: its maps of x and of x * edges are the same
    assert m[("gradient", "input x sobel")] == pytest.approx(1.0)
    assert {"sobel", "canny", "input x sobel", "gradient"} <= set(shown)


def test_edge_detectors_experiment_on_digits(tmp_path):
    cfg = tiny_study("""
experiments:
  edges:
    check: edge_detectors
    model: cnn
    detectors: [sobel]
    methods: [gradient, guided_backprop]
    metrics: [spearman_abs]
claims:
  - {id: e1, claim: c, experiment: edges, measure: {method: guided_backprop, metric: spearman_abs,
     stages: "input x sobel"}, expect: "> -1"}
  - {id: e2, claim: c, experiment: edges, measure: {method: gradient, metric: spearman_abs, stages: "vs canny"},
     expect: "> -1"}
""")
    run = run_config(cfg, tmp_path, quiet=True)
    assert list(run.claims["verdict"]) == [HOLDS, NOT_RUN]     # no canny in this run: the claim says why
    assert "matched no stage" in run.claims.iloc[1]["why"]
    assert (tmp_path / "edges" / "figures" / "edges.png").is_file()
    cfg["experiments"]["edges"]["detectors"] = ["prewitt"]
    with pytest.raises(ConfigError, match="edge detectors"):
        validate(cfg)


def test_data_randomization_runner_reports_memorization_and_chance(tmp_path):
    cfg = tiny_study("""
experiments:
  data:
    check: data_randomization
    model: mlp
    train_size: 100
    epochs: 3
    ceiling: false
    methods: [gradient]
    metrics: [spearman_abs]
claims:
  - {id: d1, claim: c, experiment: data, measure: {scalar: permuted_test_accuracy},
     expect: {op: within, tol: 1.0, of: {scalar: chance_accuracy}}}
""")
    run = run_config(cfg, tmp_path, quiet=True)
    s = run.outcomes["data"].scalars
    assert s["chance_accuracy"] == pytest.approx(0.1) and s["permuted_train_size"] == 100
    assert 0 <= s["permuted_train_accuracy"] <= 1
    assert run.claims.iloc[0]["verdict"] == HOLDS
