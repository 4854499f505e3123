"""evaluate_methods: grabska2020's evaluation of several methods (tables, statistics, resume, layers, CLI)."""

from collections import OrderedDict

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from sanitas import SanitasError
from sanitas.errors import ConfigError
from sanitas.evaluate import FLIP_METRICS, layer_methods, spatial_layers
from sanitas.evaluate import evaluate_quality as evaluate_methods
from sanitas.explain import get_explainer
from sanitas.explain.registry import parse_method


def tiny_net(seed=3, size=8):
    """conv(with bias) -> ReLU -> maxpool -> conv(no bias) -> BN -> ReLU -> linear."""
    torch.manual_seed(seed)
    net = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 4, 3, padding=1)), ("relu1", nn.ReLU()), ("pool", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(4, 6, 3, padding=1, bias=False)), ("bn2", nn.BatchNorm2d(6)), ("relu2", nn.ReLU()),
        ("flat", nn.Flatten()), ("fc", nn.Linear(6 * (size // 2) ** 2, 3))]))
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the BN layer has a bias map
        net.bn2.running_mean.uniform_(-0.5, 0.5)
        net.bn2.running_var.uniform_(0.5, 2.0)
        net.bn2.bias.uniform_(-0.5, 0.5)
        net.fc.bias.zero_()
    return net.eval()


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(3)
    return tiny_net(), torch.randn(6, 1, 8, 8, generator=g)


def test_method_names_carry_options():
    assert parse_method("activity(layers=[a.b, c], aggregate=top-2)") == (
        "activity", None, {"layers": ["a.b", "c"], "aggregate": "top-2"})
    assert parse_method("smoothgrad(competitive(gradient), samples=3, seed=none)") == (
        "smoothgrad", "competitive(gradient)", {"samples": 3, "seed": None})
    e = get_explainer("activity(layer=conv1, include_input=true, interpolation='nearest')")
    assert (e.layer, e.include_input, e.interpolation) == ("conv1", True, "nearest")
    assert repr(get_explainer("competitive(input_x_gradient)")) == "competitive(input_x_gradient)"
    with pytest.raises(ConfigError, match="does not wrap"):
        get_explainer("activity(gradient)")
    with pytest.raises(ConfigError, match="both in the method name"):
        get_explainer("activity(layer=conv1)", layer="conv2")
    with pytest.raises(ConfigError, match="unbalanced"):
        get_explainer("activity(layers=[a, b)")


def test_table_summary_and_wilcoxon(data):
    net, x = data
    res = evaluate_methods(net, x, methods=["gradient", "input_x_gradient", "random"], n_shuffles=2, quiet=True,
                           test_method="asymptotic")
    t = res.table
    assert {"method", "variant", "stage", "metric", "image", "value", "target", "family"} <= set(t.columns)
    assert len(t) == 3 * len(x) * len(FLIP_METRICS)
    assert t.groupby(["method", "metric"]).size().eq(len(x)).all()
    s = res.summary()
    assert {"mean", "ci_low", "ci_high", "median", "n"} <= set(s.columns)
    assert (s.n == len(x)).all()
    w = res.wilcoxon
    assert {"method_a", "method_b", "p_value", "p_adjusted", "rank_biserial", "favours"} <= set(w.columns)
    assert len(w) == 3 * 4  # 3 pairs x 4 default stats metrics
    assert w.p_value.between(0, 1).all()
    # the e-metrics are fractions of signal; delta = e - e_xi exactly
    piv = t.pivot_table(index=["method", "image"], columns="metric", values="value")
    assert torch.allclose(torch.tensor((piv.e_minus - piv.e_minus_xi).values), torch.tensor(piv.delta_e_minus.values))


def test_resume_without_recompute(data, tmp_path):
    net, x = data
    calls = {"a": 0, "b": 0}
    fail = {"b": True}

    def a(model, x, target):
        calls["a"] += 1
        return x * 2.0

    def b(model, x, target):
        calls["b"] += 1
        if fail["b"]:
            raise RuntimeError("killed")
        return -x

    out = tmp_path / "run"
    kw = dict(methods={"a": a, "b": b}, n_shuffles=2, out=out, quiet=True, figures=False, test_method="asymptotic")
    with pytest.raises(RuntimeError, match="killed"):
        evaluate_methods(net, x, **kw)
    assert calls == {"a": 1, "b": 1}
    fail["b"] = False
    first = evaluate_methods(net, x, **kw)
    assert calls == {"a": 1, "b": 2}  # a was not recomputed
    again = evaluate_methods(net, x, **kw)
    assert calls == {"a": 1, "b": 2}
    assert again.meta["cells"]["a"]["resumed"] and again.meta["cells"]["b"]["resumed"]
    assert again.table.equals(first.table)
    evaluate_methods(net, x, **{**kw, "n_shuffles": 3})  # a changed setting starts afresh
    assert calls == {"a": 2, "b": 3}
    for f in ("results.parquet", "results.csv", "meta.json", "report.html", "wilcoxon.csv"):
        assert (out / f).exists(), f


def test_layer_expansion_and_layer_ranking(data, tmp_path):
    net, x = data
    assert spatial_layers(net, x) == ["conv1", "bn2"]  # conv2 has no bias: represented by its BatchNorm
    specs = layer_methods(net, x)
    assert [s.label for s in specs] == ["activity[1]", "bias[1]", "activity[2]", "bias[2]", "top-2", "all+input"]
    assert specs[0].method == "activity(layers=[conv1])" and specs[3].method == "bias(layers=[bn2])"
    assert [s.label for s in layer_methods(net, x, ["bn2"], aggregates=False)] == ["activity[1]", "bias[1]"]
    with pytest.raises(ConfigError, match="conv2"):
        layer_methods(net, x, ["conv2"])
    res = evaluate_methods(net, x, methods=["gradient", "random"], layers="all", n_shuffles=2, quiet=True,
                           test_method="asymptotic")
    assert res.methods[:6] == [s.label for s in specs] and res.methods[6:] == ["gradient", "random"]
    lt = res.layer_table()
    assert list(lt[lt.metric == "delta_e_minus"].layer) == ["conv1", "bn2"]
    assert {"p_value", "p_holm", "rank_biserial", "winner"} <= set(lt.columns)
    assert res.best_aggregate in ("activity[2]", "top-2", "all+input")
    assert set(res.comparison().other) >= {"gradient", "random"}


def test_bad_target_is_a_clear_error(data):
    net, x = data
    kw = dict(methods=["random"], n_shuffles=1, quiet=True, figures=False)
    with pytest.raises(SanitasError, match="unknown target 'all'"):
        evaluate_methods(net, x, target="all", **kw)
    with pytest.raises(SanitasError, match="needs the labels y"):
        evaluate_methods(net, x, target="label", **kw)
    with pytest.raises(SanitasError, match="entries for"):
        evaluate_methods(net, x, target=torch.tensor([0, 1]), **kw)
    with pytest.raises(SanitasError, match="out of range"):
        evaluate_methods(net, x, target=99, **kw)
    with pytest.raises(SanitasError, match="out of range"):
        evaluate_methods(net, x, y=torch.full((len(x),), 99), target="label", **kw)


def test_bad_method_name_is_a_clear_error(data):
    net, x = data
    with pytest.raises(SanitasError, match="Did you mean 'gradient'"):
        evaluate_methods(net, x, methods=["gradient", "gradiant"], n_shuffles=1, quiet=True)
    with pytest.raises(SanitasError, match="no option"):
        evaluate_methods(net, x, methods=["activity(levels=3)"], n_shuffles=1, quiet=True)
    with pytest.raises(SanitasError, match="listed twice"):
        evaluate_methods(net, x, methods=["gradient", "gradient"], n_shuffles=1, quiet=True)


def test_evaluate_command(tmp_path):
    from sanitas.cli import main

    model = tmp_path / "net.pt"
    torch.save(tiny_net(), model)
    out = tmp_path / "ev"
    args = ["evaluate", str(model), "--dataset", "digits", "--methods", "gradient",
            "--layers", "bn2", "--images", "6", "--shuffles", "2", "--out", str(out), "--quiet"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "activity vs bias per layer" in r.output and "best aggregate by mean delta_e_minus: activity[1]" in r.output
    assert "report:" in r.output and (out / "report.html").exists() and (out / "results.csv").exists()
    assert {p.name for p in (out / "figures").glob("*.png")} == {"delta_metrics.png", "e_metrics.png", "xi_metrics.png",
                                                                 "layers.png", "aggregates.png"}
    assert "Best aggregate: activity[1]" in (out / "report.html").read_text()
    r = CliRunner().invoke(main, args[:5] + ["gradient,gradiant", "--out", str(out), "--quiet"])
    assert r.exit_code == 1 and "Did you mean" in r.output and "Traceback" not in r.output


def test_quality_verdicts_judge_each_method_against_its_shuffled_maps(data):
    """result.verdicts() of the quality check, from the same judge as every verdict: a map that ranks pixels by
    the model's own evidence passes against its maps of other images; a constant map cannot beat them."""
    net, x = data
    res = evaluate_methods(net, x, methods=["gradient", "random"], n_shuffles=2, quiet=True, figures=False,
                           test_method="asymptotic")
    v = res.verdicts().set_index("method")
    assert list(v.index) == ["gradient", "random"]
    assert set(v["verdict"]) <= {"pass", "fail", "inconclusive"}
    assert (v["ci_low"] <= v["estimate"]).all() and (v["estimate"] <= v["ci_high"]).all()
    assert (v["n"] == len(x)).all()
    t = res.table[res.table.metric == "delta_e_minus"]
    assert v.loc["gradient", "estimate"] == pytest.approx(t[t.method == "gradient"]["value"].mean())
    with pytest.raises(ValueError, match="delta_"):
        res.verdicts("e_minus")
