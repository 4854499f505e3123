"""Calibration baselines: random masks and the input-dominance null of adebayo2018 section 5.2."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from sanitas.errors import ConfigError, InputError, UnknownNameError
from sanitas.similarity import BASELINES, calibrate, get_similarity, similarity_names
from sanitas.similarity.calibration import calibration_scores

COLUMNS = ["metric", "baseline", "mean", "ci_low", "ci_high", "n", "nan_count"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Tensors here are tiny: a second OpenMP thread only adds synchronisation, which on a
    # loaded shared 2-core machine costs 4-20x the work itself. Restored afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def digit_like(n: int = 24, size: int = 28, seed: int = 0) -> torch.Tensor:
    """MNIST-looking images: smooth strokes on an exactly-zero background (~75 % zeros)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 1, size // 4, size // 4, generator=g)
    smooth = F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)
    ink = (smooth - 0.7).clamp(min=0)
    return ink / ink.flatten(1).amax(1).clamp(min=1e-6).view(-1, 1, 1, 1)


def camera_crops(n: int = 16, size: int = 28, seed: int = 0) -> torch.Tensor:
    """Natural image patches (skimage's bundled camera picture), values in [0, 1], no zeros."""
    from skimage.data import camera

    img = torch.from_numpy(camera()).float().div(255)[None, None]
    small = F.interpolate(img, size=(128, 128), mode="area")[0, 0]
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(0, 128 - size, n), rng.integers(0, 128 - size, n)
    return torch.stack([small[r:r + size, c:c + size] for r, c in zip(rows, cols)])[:, None]


def test_table_is_tidy_with_every_baseline():
    x = digit_like(8)
    maps = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    df = calibrate(["spearman_abs", "ssim"], maps=maps, x=x, n_masks=2, n_boot=200, classes=10)
    assert list(df.columns) == COLUMNS
    assert len(df) == 2 * len(BASELINES)
    assert set(df["baseline"]) == set(BASELINES)
    assert list(df["metric"].unique()) == ["spearman_abs", "ssim"]
    assert (df["n"] + df["nan_count"] == 16).all()
    assert (df["ci_low"] <= df["mean"]).all() and (df["mean"] <= df["ci_high"]).all()
    assert df.attrs["seed"] == 0 and df.attrs["n_masks"] == 2 and df.attrs["n_images"] == 8


def test_baselines_depend_on_what_is_given():
    x = digit_like(4)
    only_x = calibrate("pearson", x=x, n_masks=1, n_boot=50)
    assert list(only_x["baseline"]) == ["uniform_vs_uniform", "gaussian_vs_gaussian", "input_x_uniform",
                                        "input_x_gaussian"]
    only_maps = calibrate("pearson", maps=torch.randn(4, 1, 28, 28), n_masks=1, n_boot=50,
                          distributions=("gaussian",))
    assert list(only_maps["baseline"]) == ["map_vs_gaussian", "gaussian_vs_gaussian"]


def test_reproducible_with_the_same_seed_and_global_rng_untouched():
    x = digit_like(6)
    maps = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    state = torch.get_rng_state().clone()
    first = calibrate(similarity_names(), maps=maps, x=x, n_masks=2, seed=7, n_boot=100)
    torch.manual_seed(123)  # the global RNG must not matter
    again = calibrate(similarity_names(), maps=maps, x=x, n_masks=2, seed=7, n_boot=100)
    pd.testing.assert_frame_equal(first, again)
    other = calibrate(similarity_names(), maps=maps, x=x, n_masks=2, seed=8, n_boot=100)
    assert not np.allclose(first["mean"], other["mean"])
    torch.set_rng_state(state)


def test_masks_do_not_depend_on_which_metrics_are_asked_for():
    x = digit_like(5)
    alone = calibration_scores("spearman", x=x, n_masks=2, seed=3)
    together = calibration_scores(["ssim", "spearman", "hog"], x=x, n_masks=2, seed=3)
    for key, val in alone.items():
        assert torch.equal(val, together[key])
        assert val.shape == (5, 2)


def test_random_masks_score_near_zero_and_topk_near_chance():
    x = digit_like(32)
    maps = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    df = calibrate(["spearman_abs", "spearman", "pearson", "topk_intersection"], maps=maps, x=x, n_masks=3,
                   n_boot=200).set_index(["metric", "baseline"])
    for metric in ("spearman_abs", "spearman", "pearson"):
        for base in ("map_vs_uniform", "map_vs_gaussian", "uniform_vs_uniform", "gaussian_vs_gaussian"):
            assert abs(df.loc[(metric, base), "mean"]) < 0.02, (metric, base)
    assert df.loc[("topk_intersection", "uniform_vs_uniform"), "mean"] == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize("images, margin", [("digit_like", 0.3), ("camera", 0.1)])
def test_input_dominance_null_is_far_above_two_random_masks_for_spearman_abs(images, margin):
    # Sparse inputs (shared zeros) dominate most; natural patches less, but still clearly.
    x = digit_like(24) if images == "digit_like" else camera_crops(16)
    df = calibrate("spearman_abs", x=x, n_masks=3, n_boot=200).set_index("baseline")
    for dist in ("uniform", "gaussian"):
        null = df.loc[f"input_x_{dist}"]
        chance = df.loc[f"{dist}_vs_{dist}"]
        assert null["ci_low"] > chance["ci_high"] + margin, (dist, null["mean"], chance["mean"])
    # The signed metric is blind to it: x * u and x * v have independent signs.
    signed = calibrate("spearman", x=x, n_masks=3, n_boot=200).set_index("baseline")
    assert abs(signed.loc["input_x_uniform", "mean"]) < 0.05


def test_spearman_nz_null_is_lower_than_spearman_abs_on_sparse_inputs():
    # Seed 003: shared zeros push spearman_abs up; spearman_nz leaves the zero pixels out.
    x = digit_like(24)
    df = calibrate(["spearman_abs", "spearman_nz"], x=x, n_masks=3, n_boot=200).set_index(["metric", "baseline"])
    nz = df.loc[("spearman_nz", "input_x_uniform"), "mean"]
    ab = df.loc[("spearman_abs", "input_x_uniform"), "mean"]
    assert 0.1 < nz < ab - 0.2


def test_nan_scores_are_counted_not_averaged():
    x = digit_like(6)
    x[2] = 0.0  # an empty image: x * u is constant, so every metric gives NaN for it
    df = calibrate(["spearman_abs", "ssim"], x=x, n_masks=2, n_boot=100).set_index(["metric", "baseline"])
    row = df.loc[("spearman_abs", "input_x_uniform")]
    assert row["nan_count"] == 2 and row["n"] == 10 and np.isfinite(row["mean"])
    assert df.loc[("spearman_abs", "uniform_vs_uniform"), "nan_count"] == 0


def test_user_metric_objects_and_functions_are_accepted():
    x = digit_like(4)

    def neg_mse(a, b, x):
        return -(a - b).square().flatten(1).mean(1)

    df = calibrate([get_similarity("ssim", window=3), neg_mse], x=x, n_masks=1, n_boot=50)
    assert set(df["metric"]) == {"ssim", "neg_mse"}


def test_bad_calibration_arguments():
    x = digit_like(3)
    with pytest.raises(ConfigError, match="maps .* x"):
        calibrate("spearman")
    with pytest.raises(ConfigError, match="spearman_nz"):
        calibrate("spearman_nz", maps=torch.randn(3, 1, 28, 28))
    with pytest.raises(ConfigError, match="n_masks"):
        calibrate("spearman", x=x, n_masks=0)
    with pytest.raises(ConfigError, match="distributions"):
        calibrate("spearman", x=x, distributions=("laplace",))
    with pytest.raises(UnknownNameError, match="Did you mean 'pearson'"):
        calibrate("pearsn", x=x)
    with pytest.raises(InputError, match="NaN"):
        calibrate("spearman", x=x.masked_fill(x > 0.5, float("nan")))
    with pytest.raises(InputError, match="same N, H, W"):
        calibrate("spearman", maps=torch.randn(2, 1, 28, 28), x=x)


def test_competitive_null_keeps_the_fraction_of_the_rule_and_is_sparse():
    """CGI of random votes: the rule keeps 2/K (1 - 2^-K) of the pixels (positive maximum or negative minimum
    among K symmetric votes), and two such maps of one image share its zero background."""
    from sanitas.similarity.calibration import competitive_random_votes

    g = torch.Generator().manual_seed(0)
    ones = torch.ones(4, 1, 64, 64)
    for k in (2, 3, 10):
        kept = (competitive_random_votes(ones, k, "gaussian", g) != 0).double().mean()
        assert abs(float(kept) - 2 / k * (1 - 2.0 ** -k)) < 0.01, k
    x = digit_like(8)
    df = calibrate(["spearman_abs"], x=x, n_masks=3, classes=10)
    null = df.set_index("baseline")["mean"]
    assert null["uniform_vs_uniform"] < 0.05 < null["competitive_input_x_uniform"] < null["input_x_uniform"]
    assert "competitive_input_x_uniform" not in set(calibrate(["spearman_abs"], x=x, n_masks=1)["baseline"])
