"""Similarity metrics: agreement with scipy / scikit-image, NaN policy, symmetry, bad inputs."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import pearsonr, rankdata, spearmanr
from skimage.feature import hog as sk_hog
from skimage.metrics import structural_similarity as sk_ssim

from sanitas.errors import ConfigError, InputError, SanitasError, UnknownNameError
from sanitas.similarity import (SIMILARITIES, Similarity, average_ranks, get_similarity, hog_features,
                                similarity_names, ssim)

ALL = ["spearman_abs", "spearman", "spearman_nz", "pearson", "ssim", "hog", "topk_intersection"]
TOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Tensors here are tiny: a second OpenMP thread only adds synchronisation, which on a
    # loaded shared 2-core machine costs 4-20x the work itself. Restored afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def score(name: str, a, b, x=None, **options) -> torch.Tensor:
    metric = get_similarity(name, **options)
    if metric.needs_input and x is None:
        x = torch.ones(a.shape[0], 1, *a.shape[-2:])
    return metric(a, b, x)


def per_image(fn, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return np.array([fn(a[i].flatten().double().numpy(), b[i].flatten().double().numpy()) for i in range(len(a))])


def minmax(m: np.ndarray) -> np.ndarray:
    return (m - m.min()) / (m.max() - m.min())


# ---------------------------------------------------------------------------------- registry


def test_every_metric_is_registered_with_its_description():
    assert set(ALL) <= set(similarity_names())
    for name in ALL:
        m = get_similarity(name)
        assert isinstance(m, Similarity) and m.name == name
        assert m.description and "\n" not in m.description
        assert m.higher_is_more_similar is True
        assert isinstance(m.options, dict)
        assert SIMILARITIES.get(name) is type(m)


def test_options_are_recorded_and_copied():
    m = get_similarity("ssim", window=7, gaussian=True)
    assert m.options["window"] == 7 and m.options["gaussian"] is True
    m2 = get_similarity(m, window=3)
    assert m2.options["window"] == 3 and m.options["window"] == 7
    assert get_similarity(m) is m
    assert get_similarity("SSIM", window=7, gaussian=True) == m
    assert "window=7" in repr(m)


def test_metrics_with_tensor_options_compare_and_hash():
    base = torch.zeros(1, 3, 3)
    m1 = get_similarity("spearman_nz", baseline=base)
    assert m1 == get_similarity("spearman_nz", baseline=base.clone())
    assert m1 != get_similarity("spearman_nz")
    assert len({m1, get_similarity("spearman_nz")}) == 2


def test_unknown_metric_name_suggests_the_closest():
    with pytest.raises(UnknownNameError, match="Did you mean 'spearman_abs'") as err:
        get_similarity("spearman_ab")
    assert isinstance(err.value, SanitasError)
    assert "topk_intersection" in str(err.value)  # the valid names are listed


def test_unknown_option_suggests_the_closest():
    with pytest.raises(ConfigError, match="Did you mean 'window'"):
        get_similarity("ssim", windw=5)


@pytest.mark.parametrize("name, options", [
    ("ssim", {"window": 4}), ("ssim", {"window": 0}), ("ssim", {"rescale": "none"}), ("ssim", {"reduce": "max"}),
    ("ssim", {"data_range": -1.0}), ("ssim", {"sigma": 0.0}), ("ssim", {"window": None}),
    ("hog", {"pixels_per_cell": 0}), ("hog", {"block_norm": "L3"}), ("hog", {"cells_per_block": (1, 2, 3)}),
    ("topk_intersection", {"k": 0}), ("topk_intersection", {"k": 1.5}), ("topk_intersection", {"k": True}),
    ("spearman", {"absolute": "yes"}), ("spearman_nz", {"atol": -1.0}),
])
def test_bad_option_values_raise_config_error(name, options):
    with pytest.raises(ConfigError):
        get_similarity(name, **options)


def test_user_function_is_wrapped():
    def my_metric(a, b, x):
        return (a * b).flatten(1).sum(1)

    m = get_similarity(my_metric)
    a = torch.ones(3, 1, 4, 4)
    assert torch.equal(m(a, a), torch.full((3,), 16.0, dtype=torch.float64))
    assert m.name == "my_metric"
    with pytest.raises(InputError, match="one score per image"):
        get_similarity(lambda a, b, x: a.sum())(a, a)
    with pytest.raises(ConfigError):
        get_similarity(my_metric, window=3)


# ------------------------------------------------------------------------------------ ranks


@settings(max_examples=60, deadline=None)
@given(arrays(np.int64, st.tuples(st.integers(1, 4), st.integers(1, 25)), elements=st.integers(-3, 3)))
def test_average_ranks_match_scipy_with_heavy_ties(values):
    ours = average_ranks(torch.from_numpy(values))
    expected = np.stack([rankdata(row) for row in values])
    np.testing.assert_array_equal(ours.numpy(), expected)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.integers(1, 40), elements=st.floats(-1e6, 1e6, width=32)))
def test_average_ranks_of_floats_sum_to_triangle_number(values):
    ours = average_ranks(torch.from_numpy(values)[None])[0].numpy()
    np.testing.assert_array_equal(ours, rankdata(values))
    assert ours.sum() == values.size * (values.size + 1) / 2


@settings(max_examples=40, deadline=None)
@given(arrays(np.int64, st.tuples(st.integers(1, 3), st.integers(2, 20)), elements=st.integers(0, 4)),
       st.integers(0, 2**31 - 1))
def test_masked_ranks_rank_only_the_selected(values, seed):
    mask = np.random.default_rng(seed).random(values.shape) < 0.6
    ours = average_ranks(torch.from_numpy(values), mask=torch.from_numpy(mask)).numpy()
    for row, m, r in zip(values, mask, ours):
        np.testing.assert_array_equal(r[m], rankdata(row[m]))
        assert np.isnan(r[~m]).all()


def test_torch_sort_path_gives_the_same_ranks():
    # CPU tensors are sorted with numpy; tensors needing grad (and GPU tensors) use torch.sort.
    v = torch.randint(0, 5, (4, 30), generator=gen()).double()
    mask = torch.rand(4, 30, generator=gen(1)) < 0.7
    for m in (None, mask):
        np.testing.assert_array_equal(average_ranks(v.clone().requires_grad_(), mask=m).detach().numpy(),
                                      average_ranks(v, mask=m).numpy())


def test_average_ranks_along_another_dim():
    v = torch.randint(0, 3, (5, 4), generator=gen())
    np.testing.assert_array_equal(average_ranks(v, dim=0).numpy(), rankdata(v.numpy(), axis=0))


@settings(max_examples=30, deadline=None)
@given(arrays(np.float64, st.integers(3, 30), elements=st.integers(-5, 5).map(float)),
       arrays(np.float64, st.integers(3, 30), elements=st.floats(-5, 5, allow_subnormal=False)))
def test_spearman_is_invariant_to_monotone_maps(u, v):
    # exp on small integers and scaling by 4 are strictly increasing in floating point too
    n = min(u.size, v.size)
    a = torch.from_numpy(u[:n]).view(1, 1, 1, n)
    b = torch.from_numpy(v[:n]).view(1, 1, 1, n)
    base = score("spearman", a, b)
    moved = score("spearman", torch.exp(a), b * 4)
    np.testing.assert_array_equal(np.isnan(base.numpy()), np.isnan(moved.numpy()))
    np.testing.assert_allclose(base.numpy(), moved.numpy(), atol=1e-12)


# ------------------------------------------------------------------- spearman / pearson vs scipy


def _spearman(u, v):
    return spearmanr(u, v).statistic


def _pearson(u, v):
    return pearsonr(u, v).statistic


@pytest.mark.parametrize("kind", ["continuous", "heavy_ties", "integer_dtype", "three_dims"])
def test_spearman_and_pearson_match_scipy(kind):
    g = gen(1)
    if kind == "continuous":
        a, b = torch.randn(6, 3, 8, 8, generator=g), torch.randn(6, 3, 8, 8, generator=g)
        b = b + a  # correlated, so the values are not all near 0
    elif kind == "heavy_ties":
        a = torch.randint(-2, 3, (6, 2, 7, 7), generator=g).float()
        b = (a + torch.randint(-1, 2, a.shape, generator=g)).float()
    elif kind == "integer_dtype":
        a = torch.randint(0, 4, (6, 1, 9, 9), generator=g)
        b = torch.randint(0, 4, (6, 1, 9, 9), generator=g)
    else:
        a, b = torch.rand(6, 10, 10, generator=g), torch.rand(6, 10, 10, generator=g)
    np.testing.assert_allclose(score("spearman", a, b).numpy(), per_image(_spearman, a, b), atol=TOL)
    np.testing.assert_allclose(score("spearman_abs", a, b).numpy(), per_image(_spearman, a.abs(), b.abs()), atol=TOL)
    np.testing.assert_allclose(score("pearson", a, b).numpy(), per_image(_pearson, a, b), atol=TOL)


def test_spearman_abs_differs_from_signed():
    g = gen(2)
    a = torch.randn(8, 1, 6, 6, generator=g)
    b = a * torch.where(torch.rand(a.shape, generator=g) < 0.5, -1.0, 1.0)  # random sign flips
    assert torch.allclose(score("spearman_abs", a, b), torch.ones(8, dtype=torch.float64))
    assert score("spearman", a, b).abs().max() < 0.9


def test_batch_of_one_and_identity():
    a = torch.rand(1, 1, 6, 6, generator=gen(3)) + 0.1
    for name in ALL:
        out = score(name, a, a)
        assert out.shape == (1,) and out.dtype == torch.float64
        assert out.item() == pytest.approx(1.0, abs=1e-9), name


# ---------------------------------------------------------------------------------- spearman_nz


def _nz_reference(a, b, x, baseline=0.0):
    out = []
    for i in range(len(a)):
        keep = (x[i] != baseline).any(dim=0).expand_as(a[i])
        out.append(spearmanr(a[i][keep].abs().double().numpy(), b[i][keep].abs().double().numpy()).statistic)
    return np.array(out)


def test_spearman_nz_matches_scipy_on_the_selected_pixels():
    g = gen(4)
    x = torch.rand(5, 1, 12, 12, generator=g) * (torch.rand(5, 1, 12, 12, generator=g) < 0.3)
    a, b = torch.randn(5, 1, 12, 12, generator=g), torch.randn(5, 1, 12, 12, generator=g)
    np.testing.assert_allclose(score("spearman_nz", a, b, x).numpy(), _nz_reference(a, b, x), atol=TOL)
    # and with signed values
    signed = get_similarity("spearman_nz", absolute=False)(a, b, x)
    keep = (x != 0)
    ref = [spearmanr(a[i][keep[i]].numpy(), b[i][keep[i]].numpy()).statistic for i in range(5)]
    np.testing.assert_allclose(signed.numpy(), ref, atol=TOL)


def test_spearman_nz_ignores_baseline_positions():
    g = gen(5)
    x = torch.rand(4, 1, 10, 10, generator=g) * (torch.rand(4, 1, 10, 10, generator=g) < 0.4)
    a, b = torch.randn(4, 1, 10, 10, generator=g), torch.randn(4, 1, 10, 10, generator=g)
    base = score("spearman_nz", a, b, x)
    at_baseline = (x == 0)
    a2 = torch.where(at_baseline, torch.randn(a.shape, generator=g) * 100, a)
    b2 = torch.where(at_baseline, torch.zeros_like(b), b)  # IG-like zeros where x == baseline
    assert torch.equal(score("spearman_nz", a2, b2, x), base)
    # shared zeros at baseline pixels inflate spearman_abs, not spearman_nz
    a3 = torch.where(at_baseline, torch.zeros_like(a), a)
    assert (score("spearman_abs", a3, b2) > base + 0.2).all()


def test_spearman_nz_is_per_pixel_across_channels_and_takes_a_baseline():
    g = gen(6)
    x = torch.full((3, 3, 8, 8), 0.5)
    x[:, 1, :4] = torch.rand(3, 4, 8, generator=g)  # only channel 1 differs, top half of the image
    a, b = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 3, 8, 8, generator=g)
    expected = _nz_reference(a, b, x, baseline=0.5)  # all 3 channels of the top-half pixels
    np.testing.assert_allclose(get_similarity("spearman_nz", baseline=0.5)(a, b, x).numpy(), expected, atol=TOL)
    np.testing.assert_allclose(get_similarity("spearman_nz")(a, b, x, baseline=0.5).numpy(), expected, atol=TOL)
    tensor_base = torch.full((3, 1, 1), 0.5)  # per channel, broadcast over the batch
    np.testing.assert_allclose(get_similarity("spearman_nz")(a, b, x, baseline=tensor_base).numpy(), expected,
                               atol=TOL)
    # maps with one channel against three-channel inputs
    a1, b1 = a[:, :1], b[:, :1]
    np.testing.assert_allclose(get_similarity("spearman_nz", baseline=0.5)(a1, b1, x).numpy(),
                               _nz_reference(a1, b1, x, baseline=0.5), atol=TOL)


def test_spearman_nz_needs_x_and_a_broadcastable_baseline():
    a = torch.rand(2, 1, 5, 5)
    with pytest.raises(InputError, match="needs the input images"):
        get_similarity("spearman_nz")(a, a)
    with pytest.raises(InputError, match="baseline"):
        get_similarity("spearman_nz")(a, a, torch.rand(2, 1, 5, 5), baseline=torch.zeros(3, 7))


def test_spearman_nz_with_too_few_pixels_is_nan():
    a, b = torch.rand(2, 1, 5, 5), torch.rand(2, 1, 5, 5)
    x = torch.zeros(2, 1, 5, 5)
    x[1, 0, 0, 0] = 1.0  # one pixel: no correlation
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.isnan(score("spearman_nz", a, b, x)).all()


# ------------------------------------------------------------------------------------- SSIM


@pytest.mark.parametrize("ours, theirs", [
    ({"window": 5}, {"win_size": 5}),
    ({"window": 3}, {"win_size": 3}),
    ({"window": 7, "sample_covariance": False}, {"win_size": 7, "use_sample_covariance": False}),
    ({"window": 11, "gaussian": True, "sigma": 1.5}, {"gaussian_weights": True, "sigma": 1.5}),
    ({"window": None, "gaussian": True, "sigma": 1.5, "sample_covariance": False},
     {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}),
    ({"window": 5, "gaussian": True, "sigma": 0.5}, {"gaussian_weights": True, "sigma": 0.5, "win_size": 5}),
    ({"window": 5, "k1": 0.05, "k2": 0.1}, {"win_size": 5, "K1": 0.05, "K2": 0.1}),
])
def test_ssim_matches_skimage(ours, theirs):
    g = gen(7)
    a = torch.randn(4, 3, 16, 19, generator=g)
    b = a + torch.randn(4, 3, 16, 19, generator=g)
    got = get_similarity("ssim", **ours)(a, b).numpy()
    expected = []
    for i in range(4):
        pa, pb = minmax(a[i].sum(0).double().numpy()), minmax(b[i].sum(0).double().numpy())
        expected.append(sk_ssim(pa, pb, data_range=1.0, **theirs))
    np.testing.assert_allclose(got, expected, atol=TOL)


def test_ssim_preprocessing_options_match_skimage():
    g = gen(8)
    a, b = torch.randn(3, 3, 12, 12, generator=g), torch.randn(3, 3, 12, 12, generator=g)
    # absolute value, channel mean, [-1, 1] min-max: data range 2
    got = get_similarity("ssim", absolute=True, reduce="mean", rescale="symmetric")(a, b).numpy()
    exp = [sk_ssim(2 * minmax(a[i].abs().mean(0).double().numpy()) - 1,
                   2 * minmax(b[i].abs().mean(0).double().numpy()) - 1, win_size=5, data_range=2.0) for i in range(3)]
    np.testing.assert_allclose(got, exp, atol=TOL)
    # no rescaling, explicit data range, channels kept: skimage's channel_axis average
    got = get_similarity("ssim", reduce="none", rescale="none", data_range=6.0)(a, b).numpy()
    exp = [sk_ssim(a[i].double().numpy(), b[i].double().numpy(), win_size=5, data_range=6.0, channel_axis=0)
           for i in range(3)]
    np.testing.assert_allclose(got, exp, atol=TOL)


def test_ssim_function_on_raw_images():
    g = gen(9)
    x = torch.rand(2, 9, 9, generator=g, dtype=torch.float64)
    y = torch.rand(2, 9, 9, generator=g, dtype=torch.float64)
    exp = [sk_ssim(x[i].numpy(), y[i].numpy(), win_size=5, data_range=1.0) for i in range(2)]
    np.testing.assert_allclose(ssim(x, y, data_range=1.0).numpy(), exp, atol=1e-12)


def test_ssim_is_two_dimensional_not_flattened():
    # Transposing both maps keeps 2-D SSIM but would change an SSIM computed on raster lines.
    g = gen(10)
    a, b = torch.rand(3, 1, 10, 14, generator=g), torch.rand(3, 1, 10, 14, generator=g)
    at, bt = a.transpose(-1, -2), b.transpose(-1, -2)
    assert torch.allclose(score("ssim", a, b), score("ssim", at, bt), atol=1e-12)


def test_ssim_window_larger_than_map_is_an_input_error():
    with pytest.raises(InputError, match="window"):
        get_similarity("ssim", window=7)(torch.rand(2, 1, 5, 5), torch.rand(2, 1, 5, 5))


# -------------------------------------------------------------------------------------- HOG


@pytest.mark.parametrize("options", [
    {"pixels_per_cell": 2, "cells_per_block": 3},
    {"pixels_per_cell": 4, "cells_per_block": 2, "orientations": 8, "block_norm": "L2"},
    {"pixels_per_cell": (3, 5), "cells_per_block": (2, 1), "orientations": 6, "block_norm": "L1"},
    {"pixels_per_cell": 5, "cells_per_block": 1, "orientations": 12, "block_norm": "L1-sqrt"},
])
def test_hog_features_match_skimage(options):
    g = gen(11)
    imgs = torch.rand(3, 26, 29, generator=g, dtype=torch.float64) * 2 - 1
    imgs[0] = torch.randint(0, 3, (26, 29), generator=g).double()  # gradients on the bin edges
    sk_opts = {k: (v if not isinstance(v, int) or k == "orientations" else (v, v)) for k, v in options.items()}
    expected = np.stack([sk_hog(imgs[i].numpy(), **sk_opts) for i in range(3)])
    ours = hog_features(imgs, **options).numpy()
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, atol=TOL)


def test_hog_features_multichannel_match_skimage():
    imgs = torch.rand(2, 3, 20, 20, generator=gen(12), dtype=torch.float64)
    expected = np.stack([sk_hog(imgs[i].numpy(), pixels_per_cell=(4, 4), channel_axis=0) for i in range(2)])
    np.testing.assert_allclose(hog_features(imgs, pixels_per_cell=4).numpy(), expected, atol=TOL)


def test_hog_metric_is_pearson_of_skimage_features_with_scaled_cells():
    g = gen(13)
    a = torch.randn(4, 3, 28, 28, generator=g)
    b = a + 2 * torch.randn(4, 3, 28, 28, generator=g)
    m = get_similarity("hog")
    assert m.cell_size(28, 28) == (2, 2) and m.cell_size(299, 299) == (16, 16) and m.cell_size(224, 224) == (12, 12)
    expected = []
    for i in range(4):
        fa = sk_hog(2 * minmax(a[i].sum(0).double().numpy()) - 1, pixels_per_cell=(2, 2))
        fb = sk_hog(2 * minmax(b[i].sum(0).double().numpy()) - 1, pixels_per_cell=(2, 2))
        expected.append(pearsonr(fa, fb).statistic)
    np.testing.assert_allclose(m(a, b).numpy(), expected, atol=TOL)
    # channels kept: skimage's multichannel HOG
    got = get_similarity("hog", reduce="none", rescale="none", pixels_per_cell=7)(a, b).numpy()
    exp = [pearsonr(sk_hog(a[i].double().numpy(), pixels_per_cell=(7, 7), channel_axis=0),
                    sk_hog(b[i].double().numpy(), pixels_per_cell=(7, 7), channel_axis=0)).statistic for i in range(4)]
    np.testing.assert_allclose(got, exp, atol=TOL)


def test_hog_too_small_is_an_input_error():
    with pytest.raises(InputError, match="too small"):
        get_similarity("hog", pixels_per_cell=4)(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8))


# --------------------------------------------------------------------------------- top-k


def _topk_reference(a: np.ndarray, b: np.ndarray, k: int) -> float:
    ia = set(np.argsort(-np.abs(a), kind="stable")[:k])
    ib = set(np.argsort(-np.abs(b), kind="stable")[:k])
    return len(ia & ib) / k


def test_topk_matches_reference_and_counts():
    g = gen(14)
    a = torch.randn(5, 2, 10, 10, generator=g)
    b = a + torch.randn(5, 2, 10, 10, generator=g)
    got = score("topk_intersection", a, b).numpy()
    exp = per_image(lambda u, v: _topk_reference(u, v, 20), a, b)  # 10 % of 200
    np.testing.assert_allclose(got, exp, atol=1e-12)
    got = score("topk_intersection", a, b, k=7).numpy()
    np.testing.assert_allclose(got, per_image(lambda u, v: _topk_reference(u, v, 7), a, b), atol=1e-12)
    # per-pixel after summing |map| over channels
    got = score("topk_intersection", a, b, k=0.25, reduce="sum").numpy()
    exp = [_topk_reference(a[i].abs().sum(0).flatten().numpy(), b[i].abs().sum(0).flatten().numpy(), 25)
           for i in range(5)]
    np.testing.assert_allclose(got, exp, atol=1e-12)


def test_topk_chance_level_is_k():
    g = gen(15)
    a, b = torch.randn(200, 1, 10, 10, generator=g), torch.randn(200, 1, 10, 10, generator=g)
    assert score("topk_intersection", a, b, k=0.2).mean().item() == pytest.approx(0.2, abs=0.02)


# --------------------------------------------------------------------- shared contract


def _maps(seed: int = 16, shape=(6, 3, 14, 14)):
    g = gen(seed)
    a = torch.randn(*shape, generator=g)
    b = 0.5 * a + torch.randn(*shape, generator=g)
    x = torch.rand(*shape, generator=g) * (torch.rand(*shape, generator=g) < 0.5)
    return a, b, x


@pytest.mark.parametrize("name", ALL)
def test_symmetric_metrics_are_symmetric(name):
    a, b, x = _maps()
    m = get_similarity(name)
    assert m.symmetric
    torch.testing.assert_close(m(a, b, x), m(b, a, x), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_batched_equals_one_image_at_a_time(name):
    a, b, x = _maps(17)
    m = get_similarity(name)
    whole = m(a, b, x)
    single = torch.cat([m(a[i:i + 1], b[i:i + 1], x[i:i + 1]) for i in range(len(a))])
    torch.testing.assert_close(whole, single, atol=1e-12, rtol=0)
    assert whole.shape == (len(a),) and whole.dtype == torch.float64 and whole.device == a.device


@pytest.mark.parametrize("name", ALL)
def test_constant_map_gives_nan_counted_by_summarize(name):
    a, b, x = _maps(18)
    a[1] = 0.0
    b[3] = 2.5
    m = get_similarity(name)
    a_before = a.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = m(a, b, x)
        summary = m.summarize(out)
    assert torch.equal(a, a_before)  # inputs are not modified
    assert torch.isnan(out[[1, 3]]).all()
    assert not torch.isnan(out[[0, 2, 4, 5]]).any()
    assert summary["nan_count"] == 2 and summary["n"] == 4
    assert summary["mean"] == pytest.approx(out[[0, 2, 4, 5]].mean().item())


@pytest.mark.parametrize("name", ALL)
def test_bad_maps_raise_input_errors(name):
    m = get_similarity(name)
    a, b, x = _maps(19)
    with pytest.raises(InputError, match="same shape"):
        m(a, b[:, :2], x)
    nan_a = a.clone()
    nan_a[2, 0, 3, 3] = math.nan
    with pytest.raises(InputError, match=r"NaN or infinite values \(images 2\)"):
        m(nan_a, b, x)
    inf_b = b.clone()
    inf_b[4, 1, 0, 0] = math.inf
    with pytest.raises(InputError, match="b .*images 4"):
        m(a, inf_b, x)
    with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
        m(a[0, 0, 0], b[0, 0, 0], x)
    with pytest.raises(InputError, match="x must hold"):
        m(a, b, x[:3])
    with pytest.raises(InputError, match="torch.Tensor"):
        m([[1.0]], b, x)


def test_numpy_maps_are_accepted():
    a, b, _ = _maps(20)
    torch.testing.assert_close(score("spearman", a.numpy(), b.numpy()), score("spearman", a, b))


def test_topk_ties_at_the_kth_place_go_to_the_earlier_position():
    g = gen(21)
    a = torch.randint(0, 3, (8, 1, 9, 9), generator=g).float()  # about a third of the pixels tie at the top
    b = torch.randint(0, 3, (8, 1, 9, 9), generator=g).float()
    for k in (5, 0.3):
        m = get_similarity("topk_intersection", k=k)
        count = k if isinstance(k, int) else round(0.3 * 81)
        np.testing.assert_allclose(m(a, b).numpy(), per_image(lambda u, v: _topk_reference(u, v, count), a, b))
        torch.testing.assert_close(m(a, b), m(b, a))
