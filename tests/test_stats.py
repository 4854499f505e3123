"""sanitas.utils.stats: NaN-aware means, bootstrap intervals and counts."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from sanitas.errors import ConfigError, InputError, SanitasError
from sanitas.utils.stats import bootstrap_ci, summarize


def test_summarize_excludes_and_counts_nan():
    s = summarize([1.0, 2.0, math.nan, 3.0, math.nan])
    assert s["mean"] == pytest.approx(2.0)
    assert s["n"] == 3
    assert s["nan_count"] == 2
    assert s["ci_low"] <= 2.0 <= s["ci_high"]
    assert set(s) == {"mean", "ci_low", "ci_high", "n", "nan_count"}


def test_summarize_accepts_tensors_and_arrays_alike():
    vals = [0.1, 0.5, 0.2, 0.9, math.nan]
    a = summarize(vals, seed=3)
    b = summarize(np.array(vals), seed=3)
    c = summarize(torch.tensor(vals, dtype=torch.float64), seed=3)
    assert a == b == c


def test_all_nan_gives_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = summarize([math.nan] * 4)
        empty = summarize([])
    assert math.isnan(s["mean"]) and math.isnan(s["ci_low"]) and math.isnan(s["ci_high"])
    assert s["n"] == 0 and s["nan_count"] == 4
    assert empty["n"] == 0 and empty["nan_count"] == 0 and math.isnan(empty["mean"])


def test_single_value_has_degenerate_interval():
    assert bootstrap_ci([0.7, math.nan]) == (0.7, 0.7)


def test_bootstrap_reproducible_and_seed_dependent():
    vals = np.random.default_rng(0).normal(size=200)
    assert bootstrap_ci(vals, seed=5) == bootstrap_ci(vals, seed=5)
    assert bootstrap_ci(vals, seed=5) != bootstrap_ci(vals, seed=6)


def test_bootstrap_width_matches_normal_theory():
    vals = np.random.default_rng(1).normal(size=2000)
    lo, hi = bootstrap_ci(vals, n_boot=2000, level=0.95)
    half = 1.96 * vals.std(ddof=1) / math.sqrt(vals.size)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
    assert lo < vals.mean() < hi
    lo90, hi90 = bootstrap_ci(vals, n_boot=2000, level=0.90)
    assert lo <= lo90 and hi90 <= hi


def test_bootstrap_does_not_touch_global_rngs():
    torch_state = torch.get_rng_state().clone()
    np_state = np.random.get_state()
    bootstrap_ci(np.arange(50.0), n_boot=200, seed=1)
    summarize(np.arange(50.0), n_boot=200, seed=1)
    assert torch.equal(torch_state, torch.get_rng_state())
    after = np.random.get_state()
    assert np.array_equal(np_state[1], after[1]) and np_state[2] == after[2]


def test_two_dimensional_values_resample_whole_rows():
    # Rows are units (images), columns draws. Within-row copies add no information, so the
    # interval must match the 1-D interval of the row means (equal counts per row).
    rows = np.random.default_rng(2).normal(size=(40, 1))
    tiled = np.repeat(rows, 5, axis=1)
    assert bootstrap_ci(tiled, seed=0) == pytest.approx(bootstrap_ci(rows[:, 0], seed=0))
    s = summarize(tiled)
    assert s["n"] == 200 and s["nan_count"] == 0
    # An iid bootstrap over the 200 copies would be about sqrt(5) times too narrow.
    lo_iid, hi_iid = bootstrap_ci(tiled.ravel(), seed=0)
    assert (hi_iid - lo_iid) < 0.6 * (s["ci_high"] - s["ci_low"])


def test_two_dimensional_nan_rows_are_dropped_and_counted():
    vals = np.array([[1.0, math.nan], [math.nan, math.nan], [3.0, 5.0]])
    s = summarize(vals)
    assert s["mean"] == pytest.approx(3.0)
    assert s["n"] == 3 and s["nan_count"] == 3


@pytest.mark.parametrize("kwargs", [{"level": 1.0}, {"level": 0}, {"level": "0.9"}, {"n_boot": 0},
                                    {"n_boot": 2.5}])
def test_bad_options_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        bootstrap_ci([1.0, 2.0], **kwargs)


def test_bad_values_raise_input_error():
    with pytest.raises(InputError, match="inf"):
        summarize([1.0, math.inf])
    with pytest.raises(InputError, match="1-D"):
        summarize(np.zeros((2, 2, 2)))
    with pytest.raises(SanitasError):
        summarize(["a", "b"])
