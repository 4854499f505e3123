"""gupta2019's figures 1, 2 and 4 and the random-net sparsity (experiments/competition_maps.py and
competition_quality.py): closed forms on linear models and random votes, and the paper's claims judged."""

from __future__ import annotations

import copy
import math
from itertools import combinations

import numpy as np
import pytest
import torch
import yaml
from scipy.stats import spearmanr

from sanitas.errors import ConfigError
from sanitas.experiments import run_config
from sanitas.experiments.claims import FAILS, HOLDS, INCONCLUSIVE
from sanitas.experiments.competition_maps import between_class_similarity, compete_all, mixture_stats
from sanitas.experiments.competition_quality import random_vote_survivors, surviving_fraction
from sanitas.experiments.config import load_config, validate


def _linear(k=4, side=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(side * side, k, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, side * side, generator=g))
    model = torch.nn.Sequential(torch.nn.Flatten(), lin).eval()
    x = torch.rand(3, 1, side, side, generator=g) + 0.1
    return model, x, lin.weight.detach()


def test_all_logit_similarity_of_a_linear_model_by_hand():
    """x * grad of a linear model is x * W_c per class: the similarity of two classes' maps is spearman(|x W_c|,
    |x W_d|), averaged over the pairs; competition keeps x_i W_ci where it is the positive max / negative min."""
    from sanitas.checks.model_randomization import resolve_metrics
    from sanitas.explain import get_explainer

    model, x, w = _linear()
    maps = get_explainer("input_x_gradient")(model, x, "all")
    flat = x.flatten(1).numpy()
    assert torch.allclose(maps.flatten(2), (x.flatten(1)[:, None] * w[None]), atol=1e-6)
    sims = between_class_similarity(maps, x, resolve_metrics(["spearman_abs", "spearman"]))
    k = w.shape[0]
    for i in range(len(x)):
        votes = flat[i][None] * w.numpy()                           # (K, D)
        expect_abs = np.mean([spearmanr(np.abs(votes[c]), np.abs(votes[d]))[0] for c, d in combinations(range(k), 2)])
        expect = np.mean([spearmanr(votes[c], votes[d])[0] for c, d in combinations(range(k), 2)])
        assert sims["spearman_abs"][i].item() == pytest.approx(expect_abs, abs=1e-6)
        assert sims["spearman"][i].item() == pytest.approx(expect, abs=1e-6)
        keep = ((votes > 0) & (votes == votes.max(0))) | ((votes < 0) & (votes == votes.min(0)))
        np.testing.assert_allclose(compete_all(maps)[i].flatten(1).numpy(), votes * keep, atol=1e-6)


def test_compete_all_is_the_competitive_method():
    """The competitive maps of every class from one set of all-class maps equal competitive(m) per class."""
    from sanitas.explain import get_explainer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 36, 5)).eval()
    x = torch.rand(4, 1, 6, 6)
    allc = compete_all(get_explainer("input_x_gradient")(model, x, "all"))
    comp = get_explainer("competitive(input_x_gradient)")
    for c in range(5):
        torch.testing.assert_close(allc[:, c], comp(model, x, torch.full((4,), c)))


def test_a_class_winning_no_pixel_is_left_out_of_the_pairs():
    """A constant map (a class that wins no pixel) has no ranking: its pairs are skipped, not scored NaN."""
    from sanitas.checks.model_randomization import resolve_metrics

    maps = torch.zeros(1, 3, 1, 4, 4)
    maps[0, 0] = torch.arange(16.0).view(1, 4, 4)
    maps[0, 1] = torch.arange(16.0).view(1, 4, 4) ** 2            # same ranking as class 0
    sims = between_class_similarity(maps, torch.ones(1, 1, 4, 4), resolve_metrics(["spearman"]))
    assert sims["spearman"].item() == pytest.approx(1.0)
    sims = between_class_similarity(torch.zeros(1, 3, 1, 4, 4), torch.ones(1, 1, 4, 4), resolve_metrics(["spearman"]))
    assert math.isnan(sims["spearman"].item())


@pytest.mark.parametrize("k", [2, 3, 10])
def test_surviving_fraction_of_random_votes(k):
    """I.i.d. symmetric votes: the chosen label keeps a pixel with probability 2/K (1 - 2^-K); pixels where
    every vote is 0 (a black input pixel) are not counted."""
    g = torch.Generator().manual_seed(k)
    votes = torch.randn(8, k, 1, 64, 64, generator=g)
    votes[..., :16, :] = 0                                          # a quarter of the pixels get no vote
    frac = surviving_fraction(votes, k, torch.arange(8))
    assert frac.mean().item() == pytest.approx(random_vote_survivors(k), abs=0.01)
    assert random_vote_survivors(2) == 0.75 and random_vote_survivors(10) == pytest.approx(0.2 * (1 - 2 ** -10))
    # the first K' labels compete: the same law with K'
    wide = torch.randn(8, 10, 1, 64, 64, generator=g)
    assert surviving_fraction(wide, k, torch.arange(8)).mean().item() == pytest.approx(random_vote_survivors(k),
                                                                                       abs=0.01)


def test_surviving_fraction_of_a_dominant_label():
    """A label whose vote is the largest positive one everywhere keeps every pixel; the others keep none
    (all votes positive: no negative minimum)."""
    votes = torch.rand(2, 4, 1, 8, 8) + 0.1
    votes[:, 2] += 10
    assert surviving_fraction(votes, 4, torch.tensor([2, 2])).tolist() == [1.0, 1.0]
    assert surviving_fraction(votes, 4, torch.tensor([0, 1])).tolist() == [0.0, 0.0]


def test_mixture_of_two_gaussians_is_found():
    rng = np.random.default_rng(0)
    noise, signal = rng.normal(0, 0.3, 3000), rng.normal(2.5, 1.0, 1500)
    scores = np.concatenate([noise, signal])
    kept = np.concatenate([np.zeros(3000, bool), rng.random(1500) < 0.6])   # competition kept 60% of the signal
    st = mixture_stats(scores, kept)
    sd = scores.std()
    assert st["bic_gain"] > 0.1
    assert st["zero_component_mean"] == pytest.approx(0.0, abs=0.05)
    assert st["signal_component_mean"] == pytest.approx(2.5 / sd, rel=0.05)
    assert st["signal_weight"] == pytest.approx(1 / 3, abs=0.03)
    assert st["kept_signal"] == pytest.approx(0.6, abs=0.05) and st["kept_zero"] < 0.03
    one = mixture_stats(rng.normal(0, 1, 4000), np.zeros(4000, bool))
    assert one["bic_gain"] < 0.01                                  # one Gaussian: the mixture buys nothing


def test_two_gaussians_agrees_with_sklearn():
    """Our EM reaches the likelihood of sklearn's GaussianMixture (an independent implementation)."""
    from sklearn.mixture import GaussianMixture

    from sanitas.experiments.competition_maps import two_gaussians

    rng = np.random.default_rng(1)
    s = np.concatenate([rng.standard_t(3, 800) * 0.4, rng.normal(1.0, 1.5, 300)])
    w, mu, var, ll = two_gaussians(s)
    ref = GaussianMixture(2, random_state=0, n_init=5, tol=1e-8, max_iter=2000).fit(s.reshape(-1, 1))
    assert ll / len(s) == pytest.approx(ref.score(s.reshape(-1, 1)), abs=1e-4)
    order = np.argsort(mu)
    np.testing.assert_allclose(mu[order], np.sort(ref.means_.ravel()), atol=0.02)
    assert w.sum() == pytest.approx(1.0)


OURS = ("all-logits-cnn", "scores-cnn", "quality-cnn", "random-net-cnn")


def test_the_papers_claims_are_judged_on_digits(tmp_path):
    """The four experiments as competition.yaml defines them, on the 8x8 digits and a small cnn: every one of
    their claims gets a verdict (none 'not run'), and the figures are written."""
    cfg = load_config("competition")
    experiments = {}
    for name in OURS:
        exp = copy.deepcopy(cfg["experiments"][name])
        if "integrated_gradients" in exp.get("methods", []):
            exp["methods"] = ["input_x_gradient", {"integrated_gradients": {"steps": 4}}]
        exp.pop("n_shuffles", None)
        experiments[name] = exp
    claims = [c for c in cfg["claims"] if c["experiment"] in OURS]
    assert len(claims) == 15
    tiny = {"paper": "tiny", "dataset": "digits", "seed": 0, "images": 12, "experiments": experiments,
            "claims": claims}
    experiments["quality-cnn"]["n_shuffles"] = 3
    validate(tiny)
    run = run_config(yaml.safe_load(yaml.safe_dump(tiny)), tmp_path, quiet=True)
    verdicts = dict(zip(run.claims["id"], run.claims["verdict"]))
    assert set(verdicts.values()) <= {HOLDS, FAILS, INCONCLUSIVE}, run.claims[["id", "verdict", "why"]]
    # closed forms that hold on any network: 2 competing random logits keep ~3/4 of the pixels, and the
    # maps of a plain method share the input's shape across classes more than its competitive version
    r = run.claims.set_index("id")
    assert r.loc["C26-random-net-depends-on-k", "measured"] == pytest.approx(0.75, abs=0.1)
    assert r.loc["C24-random-net-survivors-k10", "measured"] == pytest.approx(0.2, abs=0.1)
    assert r.loc["C15-fig1-cgi-all-logits-differ", "measured"] < 1
    for path in ("all-logits-cnn/figures/all_logits.png", "scores-cnn/figures/scores_histogram.png",
                 "quality-cnn/figures/quality.png", "random-net-cnn/figures/random_net_survivors.png"):
        assert (tmp_path / path).is_file(), path


def test_configs_of_the_competition_experiments_are_checked():
    base = {"paper": "p", "dataset": "digits", "experiments": {}}
    bad = [({"check": "competition_random_net", "model": "cnn", "classes_compared": [1, 3]}, "classes_compared"),
           ({"check": "competition_quality", "model": "cnn", "n_shuffles": 0}, "n_shuffles"),
           ({"check": "competition_scores", "model": "cnn", "noise": 1}, "unknown key")]
    for exp, match in bad:
        with pytest.raises(ConfigError, match=match):
            validate({**base, "experiments": {"e": exp}})


def test_competitive_methods_are_refused_as_base_methods(tmp_path):
    from sanitas.experiments.competition_maps import base_methods

    with pytest.raises(ConfigError, match="competitive versions itself"):
        base_methods({"methods": ["competitive(input_x_gradient)"]}, None)
    assert list(base_methods({}, ["input_x_gradient"])) == ["input_x_gradient"]
