"""Paired statistics and box plots for per-image perturbation scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from sanitas.errors import ConfigError, InputError
from sanitas.evaluate import holm, pairwise_wilcoxon, rank_biserial, summarize, wilcoxon_pair


def scores(n=40, methods=("a", "b", "c"), metrics=("delta_e_minus", "e_plus"), seed=0, shift=None):
    rng = np.random.default_rng(seed)
    shift = shift or {"a": 0.0, "b": 0.2, "c": 0.05}
    base = rng.normal(size=n)  # per-image difficulty, shared by methods (why the tests are paired)
    rows = []
    for metric in metrics:
        for m in methods:
            v = base + shift[m] + 0.3 * rng.normal(size=n)
            rows.append(pd.DataFrame({"method": m, "image": np.arange(n), "metric": metric, "value": v}))
    return pd.concat(rows, ignore_index=True)


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
@pytest.mark.parametrize("zero_method", ["wilcox", "pratt", "zsplit"])
def test_p_values_equal_scipy(alternative, zero_method):
    df = scores()
    df.loc[(df.method == "c") & (df.image < 5), "value"] = df.loc[(df.method == "a") & (df.image < 5), "value"].values
    df.loc[(df.method == "b") & (df.image == 7), "value"] = np.nan  # dropped pairwise
    table = pairwise_wilcoxon(df, alternative=alternative, zero_method=zero_method)
    assert len(table) == 2 * 3
    for _, r in table.iterrows():
        sub = df[df.metric == r.metric]
        a = sub[sub.method == r.method_a].sort_values("image").value.to_numpy()
        b = sub[sub.method == r.method_b].sort_values("image").value.to_numpy()
        ok = np.isfinite(a) & np.isfinite(b)
        ref = sps.wilcoxon(a[ok], b[ok], zero_method=zero_method, alternative=alternative)
        assert r.p_value == ref.pvalue
        assert r.statistic == ref.statistic
        assert r.n == ok.sum()
        assert r.median_difference == pytest.approx(np.median(a[ok] - b[ok]))
    assert (table.p_adjusted >= table.p_value).all()


def test_pairs_are_matched_by_image_not_by_row_order():
    df = scores(n=30)
    shuffled = df.sample(frac=1.0, random_state=3)
    keys = ["metric", "method_a", "method_b"]
    t1 = pairwise_wilcoxon(df, methods=["a", "b", "c"]).sort_values(keys).reset_index(drop=True)
    t2 = pairwise_wilcoxon(shuffled, methods=["a", "b", "c"]).sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(t1, t2)


def test_rank_biserial_by_hand():
    # |d| ranks 1, 2, 3, 4; R+ = 1 + 3 + 4 = 8, R- = 2
    assert rank_biserial([1.0, -2.0, 3.0, 4.0]) == pytest.approx(0.6)
    assert rank_biserial([1.0, 2.0, 3.0]) == 1.0
    assert rank_biserial([-1.0, -2.0]) == -1.0
    assert rank_biserial([0.0, 0.0]) == 0.0
    # zeros: wilcox drops them; pratt ranks them (rank 1) but counts them on neither side:
    # ranks of |[0, 1, -2, 3]| = 1, 2, 3, 4 -> R+ = 6, R- = 3; zsplit adds 0.5 to each
    d = [0.0, 1.0, -2.0, 3.0]
    assert rank_biserial(d, "wilcox") == pytest.approx((4 - 2) / 6)
    assert rank_biserial(d, "pratt") == pytest.approx((6 - 3) / 9)
    assert rank_biserial(d, "zsplit") == pytest.approx((6.5 - 3.5) / 10)
    # relation to the Wilcoxon statistic: r = (T+ - T-) / (T+ + T-)
    rng = np.random.default_rng(1)
    d = rng.normal(0.3, 1, size=25)
    t_plus = sps.wilcoxon(d, alternative="greater").statistic  # sum of positive ranks
    total = 25 * 26 / 2
    assert rank_biserial(d) == pytest.approx((2 * t_plus - total) / total)


def test_holm_by_hand():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])
    out = holm([0.01, np.nan, 0.02])
    assert np.isnan(out[1]) and out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.02)


def test_holm_family_per_group_or_whole_table():
    df = scores()
    t = pairwise_wilcoxon(df)
    for metric, g in t.groupby("metric"):
        np.testing.assert_allclose(g.p_adjusted, holm(g.p_value))
    t_all = pairwise_wilcoxon(df, family="all")
    np.testing.assert_allclose(t_all.p_adjusted, holm(t_all.p_value))
    assert "p_adjusted" not in pairwise_wilcoxon(df, correction=None).columns


def test_effect_direction_and_favoured_method():
    df = scores(n=60, shift={"a": 0.0, "b": 1.0, "c": 0.0})
    t = pairwise_wilcoxon(df, reference="b")
    assert set(t.method_b) == {"b"} and set(t.method_a) == {"a", "c"}
    assert (t.median_difference < 0).all() and (t.rank_biserial < -0.8).all()
    assert (t.p_value < 1e-6).all()
    # b has the larger values: better for delta_e_minus, worse for e_plus (lower is better)
    assert set(t[t.metric == "delta_e_minus"].favours) == {"b"}
    assert set(t[t.metric == "e_plus"].favours) == {"a", "c"}


def test_grouping_columns_and_metric_filter():
    df = scores()
    df = pd.concat([df.assign(layer=1), df.assign(layer=2, value=df.value * 2)], ignore_index=True)
    t = pairwise_wilcoxon(df, metric="delta_e_minus", methods=["a", "b"])
    assert len(t) == 2 and set(t.layer) == {1, 2} and set(t.metric) == {"delta_e_minus"}
    assert {"metric", "layer", "method_a", "method_b", "n", "statistic", "p_value", "p_adjusted", "rank_biserial",
            "median_difference"} <= set(t.columns)


def test_wilcoxon_pair_degenerate():
    r = wilcoxon_pair([1.0, 2.0], [1.0, 2.0])
    assert r["n"] == 2 and r["n_nonzero"] == 0 and r["p_value"] == 1.0 and r["rank_biserial"] == 0.0
    r = wilcoxon_pair([np.nan], [1.0])
    assert r["n"] == 0 and np.isnan(r["p_value"])


def test_bad_tables():
    df = scores()
    with pytest.raises(InputError, match="'method'"):
        pairwise_wilcoxon(df.drop(columns="method"))
    with pytest.raises(InputError, match="at least two methods"):
        pairwise_wilcoxon(df[df.method == "a"])
    with pytest.raises(InputError, match="not in the table"):
        pairwise_wilcoxon(df, metric="e_nonsense")
    with pytest.raises(InputError, match="not in the table"):
        pairwise_wilcoxon(df, reference="z")
    with pytest.raises(InputError, match="more than one value"):
        pairwise_wilcoxon(pd.concat([df, df]))
    with pytest.raises(ConfigError, match="correction"):
        pairwise_wilcoxon(df, correction="bonferroni")
    with pytest.raises(ConfigError, match="zero_method"):
        pairwise_wilcoxon(df, zero_method="drop")
    with pytest.raises(InputError, match="DataFrame"):
        pairwise_wilcoxon([1, 2, 3])


def test_summarize():
    df = scores(n=21)
    s = summarize(df)
    assert len(s) == 6 and (s.n == 21).all()
    row = s[(s.method == "b") & (s.metric == "e_plus")].iloc[0]
    v = df[(df.method == "b") & (df.metric == "e_plus")].value
    assert row["median"] == pytest.approx(v.median()) and row.q25 == pytest.approx(v.quantile(0.25))


def test_boxplots_write_png_without_touching_the_backend(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    from sanitas.evaluate.plots import boxplot_metrics, boxplot_scores

    df = scores()
    fig = boxplot_scores(df, "e_plus", path=tmp_path / "sub" / "e_plus.png", reference="a")
    data = (tmp_path / "sub" / "e_plus.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    ax = fig.axes[0]
    assert ax.yaxis_inverted()  # lower is better for e_plus: reversed as in grabska2020 fig. 14
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert sum(t.get_text().startswith("p") for t in ax.texts) == 2  # b and c against a (Holm-adjusted)
    assert not boxplot_scores(df, "delta_e_minus").axes[0].yaxis_inverted()
    fig = boxplot_metrics(df, ["delta_e_minus", "e_plus"], path=tmp_path / "grid.png")
    assert len(fig.axes) == 2 and (tmp_path / "grid.png").stat().st_size > 2000
    assert matplotlib.get_backend() == backend
    with pytest.raises(InputError, match="no rows"):
        boxplot_scores(df, "e_delta")
