"""The decision-flip perturbation metric (grabska2020 Eqs. 17-20): exactness, conventions, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sanitas.errors import ConfigError, InputError, ModelError, SanitasError
from sanitas.evaluate import (HIGHER_IS_BETTER, FLIP_METRICS, decision_flip, delta_e, find_flips, gaussian_blur,
                              perturbation_scores, removal_order, removal_reference, shuffle_pool)



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run faster on one thread, and much faster on a loaded shared machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ---------------------------------------------------------------------------------------------
# hand-built models


class WeightedSum(nn.Module):
    """Class 0 while sum_p w_p * (sum over channels of x_p) > theta, else class 1."""

    def __init__(self, w: torch.Tensor, theta: float):
        super().__init__()
        self.register_buffer("w", w.double())
        self.theta = theta

    def forward(self, x):
        score = (x.double().sum(1) * self.w).flatten(1).sum(1) - self.theta
        return torch.stack([score, torch.zeros_like(score)], 1)


class CountPredicate(nn.Module):
    """Decision as an arbitrary function of the number k of removed (all-zero) pixels.

    Images must have no zero pixel; with zero removal, level k has exactly k zero pixels. The
    model answers class ``int(F[k])`` and records every k it is asked about.
    """

    def __init__(self, flips):
        super().__init__()
        self.register_buffer("F", torch.as_tensor(flips, dtype=torch.bool))
        self.queries: list[int] = []

    def forward(self, x):
        k = (x.abs().sum(1) == 0).flatten(1).sum(1)
        self.queries += k.tolist()
        f = self.F[k].double()
        return torch.stack([1 - f, f], 1)


def tiny_cnn(seed: int, c: int = 1, size: int = 8, classes: int = 4, zero_bias: bool = False) -> nn.Module:
    torch.manual_seed(seed)  # test-only; the library never touches the global RNG
    model = nn.Sequential(nn.Conv2d(c, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(6 * (size // 2) ** 2, classes)).double().eval()
    if zero_bias:  # decisions then depend on the image, not on the biases: many more flips
        with torch.no_grad():
            model[0].bias.zero_()
            model[4].bias.zero_()
    return model


def ones(n=1, c=1, h=4, w=4):
    return torch.ones(n, c, h, w, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# independent brute force: one image, one level per forward, built here from scratch


def brute_force_flips(model, x, s, order, ref):
    """For one image: the list F[k] (k = 0..P) of "level k changes the class", exhaustively.

    Built here from scratch (pure-Python stable sort, pixel-by-pixel copies); every level is
    evaluated (stacked into one forward pass for speed, which does not change the answer).
    """
    c, h, w = x.shape
    flat = s.reshape(-1).tolist()
    idx = list(range(h * w))
    idx.sort(key=lambda p: (flat[p] if order == "-s" else -flat[p], p))  # ties: raster index
    ref = ref.expand(c, h, w)
    levels = [x.clone()]
    for p in idx:
        cur = levels[-1].clone()
        i, j = divmod(p, w)
        cur[:, i, j] = ref[:, i, j]
        levels.append(cur)
    with torch.no_grad():
        cls = model(torch.stack(levels)).argmax(1).tolist()
    return [k != cls[0] for k in cls], idx


def first_round_grid(P, L):
    return {(j * P) // (L + 1) for j in range(1, L + 1)} | {P} if P - 1 > L else set(range(1, P + 1))


def check_against_brute_force(result_level, result_flipped, F, L):
    """The documented guarantee of the multilevel search, given the full flip sequence F."""
    P = len(F) - 1
    first = next((k for k in range(1, P + 1) if F[k]), None)
    if first is None:
        assert not result_flipped and result_level == P
        return "never"
    run = set()
    k = first
    while k <= P and F[k]:
        run.add(k)
        k += 1
    monotone = all(F[first:])
    if monotone or run & first_round_grid(P, L):
        assert result_flipped and result_level == first, (result_level, first)
        return "first"
    # otherwise: still a genuine transition, at or after the first flip (found by luck or not)
    if result_flipped:
        assert F[result_level] and not F[result_level - 1] and result_level >= first
    else:
        assert not F[P]
    return "later"


# ---------------------------------------------------------------------------------------------
# known flip points


def test_analytic_flip_point_weighted_sum():
    # 4x4 image of ones, pixel weights 1..16 used as the saliency map, theta = 100.5.
    w = torch.arange(1, 17, dtype=torch.float64).view(4, 4)
    model = WeightedSum(w, 100.5)
    x, s = ones(), w.view(1, 1, 4, 4)
    # -s removes weights 1, 2, 3, ...: remaining 136 - k(k+1)/2 < 100.5  <=>  k >= 8
    r = find_flips(model, x, s, "-s")
    assert r.level.tolist() == [8] and r.flipped.tolist() == [True]
    assert r.e.item() == pytest.approx(1 - math.sqrt(8 / 16), abs=1e-12)
    assert r.original_class.tolist() == [0] and r.flip_class.tolist() == [1]
    # +s removes 16, 15, 14: 16 + 15 = 31 < 35.5 <= 45  =>  k = 3
    r = find_flips(model, x, s, "+s")
    assert r.level.tolist() == [3]
    assert r.e.item() == pytest.approx(1 - math.sqrt(13 / 16), abs=1e-12)
    assert decision_flip(model, x, s, "+s").item() == pytest.approx(1 - math.sqrt(13 / 16))


@pytest.mark.parametrize("levels_per_round", [1, 2, 3, 7, 15, 100])
def test_analytic_flip_point_every_level_and_fanout(levels_per_round):
    # every possible flip level k* in 1..P of a monotone decision is found exactly
    P = 36
    x = ones(h=6, w=6)
    s = torch.arange(P, dtype=torch.float64).view(1, 6, 6)
    for k_star in range(1, P + 1):
        model = CountPredicate([k >= k_star for k in range(P + 1)])
        r = find_flips(model, x, s, "-s", levels_per_round=levels_per_round)
        assert r.level.item() == k_star and r.flipped.item()
        assert r.e.item() == pytest.approx(1 - math.sqrt((P - k_star) / P))


def test_multichannel_pixels_removed_across_channels_and_channel_sum():
    w = torch.arange(1, 17, dtype=torch.float64).view(4, 4)
    model = WeightedSum(w, 3 * 100.5)
    x = ones(c=3)
    # per-channel map parts that sum to w: the channel-summed ordering is the weights' ordering
    parts = torch.stack([w * 0.2, w * 0.5, w * 0.3])[None]
    r = find_flips(model, x, parts, "-s")
    assert r.level.item() == 8
    # a pixel is removed in all channels at once: ||x_s||^2 = 3 * (16 - 8)
    assert r.e.item() == pytest.approx(1 - math.sqrt(3 * 8 / (3 * 16)))
    # same result from a one-channel map and an (N, H, W) map
    assert find_flips(model, x, w[None, None], "-s").level.item() == 8
    assert find_flips(model, x, w[None], "-s").level.item() == 8
    # abs_sum differs from sum when channels disagree in sign
    signed = torch.stack([w, -2 * w, torch.zeros_like(w)])[None]  # sum = -w, abs_sum = 3w
    assert find_flips(model, x, signed, "+s").level.item() == 8   # most salient of -w = smallest w
    assert find_flips(model, x, signed, "+s", channel_reduce="abs_sum").level.item() == 3


def test_never_flip_definition():
    model = WeightedSum(torch.ones(4, 4), -1.0)  # score stays > 0 whatever is removed
    x = ones(n=2)
    s = torch.rand(2, 4, 4, dtype=torch.float64)
    for search in ("multilevel", "scan"):
        r = find_flips(model, x, s, "-s", search=search)
        assert r.flipped.tolist() == [False, False]
        assert r.level.tolist() == [16, 16]
        assert r.e.tolist() == [1.0, 1.0]  # zero removal: all the signal goes
        assert (r.flip_class == r.original_class).all()
    assert torch.isnan(decision_flip(model, x, s, no_flip="nan")).all()
    # mean removal of a constant image removes nothing: e at full removal is 0
    assert decision_flip(model, x, s, removal="mean").tolist() == [0.0, 0.0]
    # a constant reference 0.5: e = 1 - 0.5
    assert decision_flip(model, x, s, removal=0.5).tolist() == pytest.approx([0.5, 0.5])


def test_ties_are_removed_in_raster_order_in_both_orders():
    s = torch.tensor([[[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]])
    assert removal_order(s, "-s").tolist() == [[0, 3, 1, 4, 2, 5]]
    assert removal_order(s, "+s").tolist() == [[3, 0, 4, 1, 5, 2]]
    const = torch.zeros(1, 2, 3)
    assert removal_order(const, "-s").tolist() == removal_order(const, "+s").tolist() == [[0, 1, 2, 3, 4, 5]]
    # end to end: a constant map flips at the same level for both orders
    model = WeightedSum(torch.arange(1, 7, dtype=torch.float64).view(2, 3), 15.5)  # remove 1, 2, 3 -> 15 < 15.5
    x = ones(h=2, w=3)
    assert find_flips(model, x, const, "-s").level.item() == find_flips(model, x, const, "+s").level.item() == 3


# ---------------------------------------------------------------------------------------------
# non-monotone decisions: which flip the multilevel search finds


def test_non_monotone_short_first_flip_is_skipped_as_documented():
    P, L = 64, 3
    x = ones(h=8, w=8)
    s = torch.arange(P, dtype=torch.float64).view(1, 8, 8)
    F = [k in (5, 6) or k >= 40 for k in range(P + 1)]
    model = CountPredicate(F)
    # grid 16, 32, 48 (+P): 48 flips -> (32, 48]; 36, 40, 44: 40 first -> (36, 40]; 37-39 don't -> 40
    r = find_flips(model, x, s, levels_per_round=L)
    assert r.level.item() == 40 and r.flipped.item()
    assert not r.nonmonotone.item()  # the evaluated levels never showed a flip back
    scan = find_flips(model, x, s, search="scan")
    assert scan.level.item() == 5 and scan.nonmonotone.item()  # the scan's block saw 5, 6 flip and 7 not
    # the search's evaluated levels below its answer never flip
    model.queries.clear()
    find_flips(model, x, s, levels_per_round=L)
    assert all(not F[k] for k in model.queries if 0 < k < 40)
    # a first run that contains a grid level (16) is found exactly
    F2 = [10 <= k <= 20 or k >= 40 for k in range(P + 1)]
    assert find_flips(CountPredicate(F2), x, s, levels_per_round=L).level.item() == 10
    # a finer first round (levels_per_round=63 evaluates every level) finds the short run too
    assert find_flips(model, x, s, levels_per_round=63).level.item() == 5


def test_non_monotone_flip_and_back_with_unflipped_full_removal():
    # the class flips for k in 10..30 and comes back; with everything removed it does not flip
    P, L = 64, 3
    F = [10 <= k <= 30 for k in range(P + 1)]
    x = ones(h=8, w=8)
    s = torch.arange(P, dtype=torch.float64).view(1, 8, 8)
    r = find_flips(CountPredicate(F), x, s, levels_per_round=L)  # grid 16 is inside the run
    assert r.level.item() == 10 and r.flipped.item()
    assert r.nonmonotone.item()  # 16 flips but 32, 48 and 64 do not: seen by the first round
    F3 = [k in (20, 21) for k in range(P + 1)]  # missed by the grid: reported as no flip
    r = find_flips(CountPredicate(F3), x, s, levels_per_round=L)
    assert not r.flipped.item() and r.level.item() == P


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=36, max_size=36), st.integers(1, 12))
def test_search_guarantee_on_arbitrary_decision_sequences(bits, levels_per_round):
    P = 36
    F = [False] + bits
    model = CountPredicate(F)
    x = ones(h=6, w=6)
    s = torch.arange(P, dtype=torch.float64).view(1, 6, 6)
    r = find_flips(model, x, s, levels_per_round=levels_per_round)
    check_against_brute_force(r.level.item(), r.flipped.item(), F, levels_per_round)
    # the evaluated levels below the answer do not flip
    assert all(not F[k] for k in model.queries if 0 < k < r.level.item())
    # the non-monotone flag is sound: raised only if some flipped level has an unflipped one above
    truly_nonmonotone = any(F[i] and not F[j] for i in range(P + 1) for j in range(i + 1, P + 1))
    assert truly_nonmonotone or not r.nonmonotone.item()
    # the scan is exact for every block size
    first = next((k for k in range(1, P + 1) if F[k]), P)
    for block in (1, levels_per_round, 64):
        scan = find_flips(CountPredicate(F), x, s, search="scan", levels_per_round=block)
        assert scan.level.item() == first and scan.flipped.item() == any(F)
        assert truly_nonmonotone or not scan.nonmonotone.item()


# ---------------------------------------------------------------------------------------------
# fast search == brute force on real (random) networks


@pytest.mark.parametrize("removal", ["zero", "mean", "blur"])
@pytest.mark.parametrize("order", ["-s", "+s"])
def test_fast_search_matches_brute_force_scan(removal, order):
    outcomes = []
    for seed in range(3):
        model = tiny_cnn(seed, c=2, zero_bias=True)
        g = torch.Generator().manual_seed(100 + seed)
        x = torch.rand(10, 2, 8, 8, generator=g, dtype=torch.float64) + 0.05
        x = x * 2 * torch.rand(1, 2, 8, 8, generator=g, dtype=torch.float64)  # a shared contrast pattern
        s = torch.randn(10, 2, 8, 8, generator=g, dtype=torch.float64)
        s[0] = s[0].round()  # many ties
        L = 7
        fast = find_flips(model, x, s, order, removal, levels_per_round=L, batch_size=32, blur_sigma=2.0)
        scan = find_flips(model, x, s, order, removal, search="scan", batch_size=32, blur_sigma=2.0)
        ref = removal_reference(x, removal, blur_sigma=2.0)
        ref = ref.expand_as(x)
        for i in range(len(x)):
            F, idx = brute_force_flips(model, x[i], s[i].sum(0), order, ref[i])
            first = next((k for k in range(1, 65) if F[k]), None)
            # the library's scan is the exact first flip
            assert scan.level[i].item() == (first if first is not None else 64)
            assert scan.flipped[i].item() == (first is not None)
            outcomes.append(check_against_brute_force(fast.level[i].item(), fast.flipped[i].item(), F, L))
            # e from an image rebuilt here at the found level
            k = fast.level[i].item()
            xs = x[i].clone()
            for p in idx[:k]:
                xs[:, p // 8, p % 8] = ref[i][:, p // 8, p % 8]
            assert fast.e[i].item() == pytest.approx(1 - (xs.norm() / x[i].norm()).item(), abs=1e-12)
    # not vacuous: many cases flip and take the strict "equals the first flip" branch (the others
    # are non-monotone sequences, checked against the weaker guarantee above)
    assert outcomes.count("first") >= 6, outcomes


def test_search_uses_far_fewer_forward_passes_than_scan():
    P = 784
    F = [k >= 700 for k in range(P + 1)]
    x = ones(n=4, h=28, w=28)
    s = torch.rand(4, 28, 28, dtype=torch.float64)
    fast = find_flips(CountPredicate(F), x, s, levels_per_round=15)
    scan = find_flips(CountPredicate(F), x, s, search="scan", levels_per_round=1)
    assert fast.level.tolist() == scan.level.tolist() == [700] * 4
    # 3 rounds of <= 15 levels per image, plus the shared original and full-removal passes
    assert fast.n_evaluated <= 4 * 45 + 8
    assert scan.n_evaluated == 4 * 700 + 8  # levels 1..700, the last one flips


def test_search_evaluates_the_documented_levels():
    # P = 784, L = 15, first flip 734 (monotone). Round 1: 49, 98, ..., 735 -> 735 flips first: (686, 735].
    # Round 2: 686 + floor(j * 49 / 16) = 689, ..., 731: none flips -> (731, 735]. Round 3: 732, 733, 734.
    P = 784
    model = CountPredicate([k >= 734 for k in range(P + 1)])
    x = ones(n=2, h=28, w=28)
    r = find_flips(model, x, torch.rand(2, 28, 28, dtype=torch.float64), levels_per_round=15)
    assert r.level.tolist() == [734, 734]
    expected = sorted([49 * j for j in range(1, 16)] + [686 + (j * 49) // 16 for j in range(1, 16)] + [732, 733, 734])
    asked = sorted(k for k in model.queries if k not in (0, P))
    assert asked == sorted((expected + [734]) * 2)  # + x_s once more, for FlipResult.flip_class
    assert r.n_evaluated == 2 * 33 + 2 * 2  # plus the shared original and fully removed images


# ---------------------------------------------------------------------------------------------
# removal operators


def test_blur_matches_scipy_gaussian_filter():
    from scipy import ndimage

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 20, generator=g, dtype=torch.float64)
    for sigma in (1.0, 2.0, 1.3):
        ours = gaussian_blur(x, sigma).numpy()
        ref = np.stack([np.stack([ndimage.gaussian_filter(x[n, c].numpy(), sigma, mode="mirror", truncate=3.0)
                                  for c in range(3)]) for n in range(2)])
        if math.ceil(3 * sigma) == int(3 * sigma + 0.5):  # same kernel radius as scipy's
            np.testing.assert_allclose(ours, ref, atol=1e-12)
    # default sigma = min(H, W) / 14, and a blurred constant stays constant
    c = torch.full((1, 1, 28, 28), 0.3, dtype=torch.float64)
    torch.testing.assert_close(removal_reference(c, "blur"), c)
    torch.testing.assert_close(removal_reference(x, "blur"), gaussian_blur(x, 16 / 14))


def test_mean_reference_is_per_image_per_channel():
    x = torch.rand(3, 2, 5, 5, dtype=torch.float64)
    ref = removal_reference(x, "mean")
    torch.testing.assert_close(ref.expand_as(x)[1, 0], x[1, 0].mean().expand(5, 5))


# ---------------------------------------------------------------------------------------------
# shuffled maps (Eq. 18-20)


@pytest.mark.parametrize("n,r,seed", [(2, 1, 0), (5, 4, 1), (50, 10, 2), (257, 12, 3)])
def test_shuffle_pool_never_uses_the_images_own_map(n, r, seed):
    xi = shuffle_pool(n, r, seed)
    assert xi.shape == (n, r)
    own = torch.arange(n).view(-1, 1)
    assert not (xi == own).any()
    for i in range(n):
        assert len(set(xi[i].tolist())) == r  # distinct xi per image
    for col in xi.T:  # each shuffle round uses every map exactly once (same marginal statistics)
        assert sorted(col.tolist()) == list(range(n))
    assert torch.equal(xi, shuffle_pool(n, r, seed))  # seeded
    state = torch.random.get_rng_state()
    shuffle_pool(n, r, seed + 1)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched


def test_perturbation_scores_uses_other_images_maps_and_matches_direct_computation():
    model = tiny_cnn(7)
    g = torch.Generator().manual_seed(7)
    x = torch.rand(6, 1, 8, 8, generator=g, dtype=torch.float64) + 0.05
    maps = {"a": torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64),
            "b": torch.rand(6, 8, 8, generator=g, dtype=torch.float64)}
    df = perturbation_scores(model, x, maps, n_shuffles=3, seed=11, levels_per_round=5)
    meta = df.attrs["sanitas"]
    xi = torch.tensor(meta["xi_index"])
    assert not (xi == torch.arange(6).view(-1, 1)).any()
    assert set(df.columns) == {"method", "image", "metric", "value"}
    assert set(df.metric) == set(FLIP_METRICS)
    assert len(df) == 2 * 6 * len(FLIP_METRICS)
    for m, s in maps.items():
        v = {k: torch.tensor(df[(df.method == m) & (df.metric == k)].sort_values("image").value.to_numpy())
             for k in FLIP_METRICS}
        for order, name in (("-s", "minus"), ("+s", "plus")):
            e_s = decision_flip(model, x, s, order, levels_per_round=5)
            e_xi = torch.stack([decision_flip(model, x, s[xi[:, r]], order, levels_per_round=5)
                                for r in range(3)], 1)
            torch.testing.assert_close(v[f"e_{name}"], e_s)
            torch.testing.assert_close(v[f"e_{name}_xi"], e_xi.mean(1))
            torch.testing.assert_close(v[f"delta_e_{name}"], e_s - e_xi.mean(1))
        torch.testing.assert_close(v["e_delta"], v["e_minus"] - v["e_plus"])  # Eq. sign: e_- - e_+
        torch.testing.assert_close(v["delta_e_delta"], v["delta_e_minus"] - v["delta_e_plus"])
    # one tensor: no method column; delta_e agrees
    df1 = perturbation_scores(model, x, maps["a"], n_shuffles=3, seed=11, orders=("-s",), levels_per_round=5)
    assert "method" not in df1.columns and set(df1.metric) == {"e_minus", "e_minus_xi", "delta_e_minus"}
    de = delta_e(model, x, maps["a"], "-s", n_shuffles=3, seed=11, levels_per_round=5)
    np.testing.assert_allclose(de.numpy(), df1[df1.metric == "delta_e_minus"].sort_values("image").value)


def test_two_images_borrow_each_others_map():
    # image 0's own map gives a different e than image 1's map: delta must use the other one
    w = torch.arange(1, 17, dtype=torch.float64).view(4, 4)
    model = WeightedSum(w, 100.5)
    x = ones(n=2)
    maps = torch.stack([w, w.flip(0).flip(1)])  # second map is the reverse ordering
    df = perturbation_scores(model, x, maps, n_shuffles=1, orders=("-s",))
    e = {k: df[df.metric == k].sort_values("image").value.to_numpy() for k in set(df.metric)}
    own0, other0 = decision_flip(model, x[:1], maps[:1]), decision_flip(model, x[:1], maps[1:])
    assert own0.item() != other0.item()
    assert e["e_minus_xi"][0] == pytest.approx(other0.item())
    assert e["delta_e_minus"][0] == pytest.approx(own0.item() - other0.item())


def test_shared_forward_passes_are_computed_once():
    P = 36
    model = CountPredicate([k >= 20 for k in range(P + 1)])
    x = ones(n=5, h=6, w=6)
    maps = {m: torch.rand(5, 6, 6, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
            for i, m in enumerate("abc")}
    df = perturbation_scores(model, x, maps, n_shuffles=4, levels_per_round=5)
    assert model.queries.count(0) == 5  # the originals, once for 3 methods x 2 orders x 5 maps
    assert model.queries.count(P) == 5  # the fully removed images, likewise
    assert df.attrs["sanitas"]["n_evaluated"] == len(model.queries)
    assert (df[df.metric == "e_minus"].value == 1 - math.sqrt(16 / 36)).all()


def test_metric_direction_table_follows_the_paper():
    assert HIGHER_IS_BETTER["e_minus"] and HIGHER_IS_BETTER["delta_e_minus"] and HIGHER_IS_BETTER["delta_e_delta"]
    assert HIGHER_IS_BETTER["e_plus"] is False and HIGHER_IS_BETTER["delta_e_plus"] is False


# ---------------------------------------------------------------------------------------------
# the model is never modified


def test_model_untouched_state_and_training_flags():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                          nn.Flatten(), nn.Linear(4 * 36, 3))
    model.train()
    model[3].eval()  # a submodule with its own flag
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    x = torch.rand(4, 1, 6, 6)
    s = torch.rand(4, 1, 6, 6)
    r1 = find_flips(model, x, s)
    r2 = find_flips(model, x, s)
    perturbation_scores(model, x, {"m": s}, n_shuffles=2)
    assert torch.equal(r1.e, r2.e)  # eval mode: dropout off, batch-norm running stats used
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert [m.training for m in model.modules()] == flags
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# bad inputs


@pytest.fixture
def small():
    return tiny_cnn(0), torch.rand(3, 1, 8, 8, dtype=torch.float64), torch.rand(3, 1, 8, 8, dtype=torch.float64)


@pytest.mark.parametrize("bad_maps,match", [
    (torch.rand(2, 1, 8, 8), "does not match"),
    (torch.rand(3, 1, 7, 8), "does not match"),
    (torch.rand(3, 2, 8, 8), "channels"),
    (torch.rand(3, 64), "shaped"),
    ([[0.0]], "torch.Tensor"),
])
def test_bad_map_shapes(small, bad_maps, match):
    model, x, _ = small
    with pytest.raises(InputError, match=match):
        decision_flip(model, x, bad_maps)


def test_nan_maps_and_images(small):
    model, x, s = small
    s = s.clone()
    s[1, 0, 2, 3] = float("nan")
    with pytest.raises(InputError, match=r"NaN.*first in map 1"):
        decision_flip(model, x, s)
    with pytest.raises(InputError, match="NaN"):
        perturbation_scores(model, x, {"m": s}, n_shuffles=1)
    x = x.clone()
    x[0, 0, 0, 0] = float("inf")
    with pytest.raises(InputError, match="infinite"):
        decision_flip(model, x, torch.rand(3, 1, 8, 8))


def test_empty_and_degenerate_batches(small):
    model, x, s = small
    with pytest.raises(InputError, match="empty batch"):
        decision_flip(model, x[:0], s[:0])
    with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
        decision_flip(model, x[0], s[0])
    with pytest.raises(InputError, match="at least 2 images"):
        perturbation_scores(model, x[:1], s[:1], n_shuffles=1)
    with pytest.raises(ConfigError, match="n_shuffles"):
        perturbation_scores(model, x, s, n_shuffles=3)
    z = x.clone()
    z[1] = 0
    with pytest.raises(InputError, match="all zeros"):
        decision_flip(model, z, s)


def test_bad_options(small):
    model, x, s = small
    for kwargs, match in [({"order": "s"}, "order"), ({"removal": "noise"}, "removal"),
                          ({"search": "binary"}, "search"), ({"levels_per_round": 0}, "levels_per_round"),
                          ({"batch_size": 0}, "batch_size"), ({"no_flip": "zero"}, "no_flip"),
                          ({"channel_reduce": "median"}, "channel_reduce"), ({"blur_sigma": -1.0, "removal": "blur"},
                                                                             "blur_sigma")]:
        with pytest.raises(ConfigError, match=match):
            decision_flip(model, x, s, **kwargs)
    with pytest.raises(InputError, match="broadcast"):
        decision_flip(model, x, s, removal=torch.zeros(2, 1, 8, 8))
    with pytest.raises(InputError, match="empty dict"):
        perturbation_scores(model, x, {})


def test_bad_model_output(small):
    _, x, s = small
    with pytest.raises(ModelError, match="logits"):
        decision_flip(nn.Identity(), x, s)
    with pytest.raises(SanitasError):
        decision_flip(nn.Sequential(nn.Flatten(), nn.Linear(64, 1)).double(), x, s)
