"""The 1-layer sum-pooling convolution of adebayo2018 (section 5.3, figure 7): its gradient against a hand
computation and the closed form, the linear twin's image-independent gradient, the experiment's table on
tiny images, and the shipped claims judged on a run."""

from __future__ import annotations

import pytest
import torch

from sanitas.experiments.sum_pool import closed_form_gradient, sum_pool_conv, sum_pool_table

W = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0], [7.0, -8.0, 9.0]])


def _autograd(model, x):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).sum(), x)
    return g


def _model_with(weight, relu=True):
    f, c, k, _ = weight.shape
    model = sum_pool_conv(channels=c, filters=f, kernel=k, relu=relu)
    with torch.no_grad():
        model.conv.weight.copy_(weight)
    return model


def test_hand_computation_of_an_isolated_dot():
    """One bright pixel in the middle of a 3x3 image: unit (p, q) sees w[2-p, 2-q] (the flipped filter), so
    it is active where that weight is positive. At the dot the gradient sums the filter's positive weights
    (1+3+5+7+9 = 25); at the corner (0, 0) it sums a[p,q] w[1-p, 1-q] over p, q in {0, 1}:
    1{w22>0} w11 + 1{w21>0} w10 + 1{w12>0} w01 + 1{w11>0} w00 = 5 + 0 + 0 + 1 = 6. Linear: every unit active,
    25 -> sum(w) = 5 and 6 -> w11 + w10 + w01 + w00 = 0."""
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 1, 1] = 1.0
    w = W.reshape(1, 1, 3, 3)
    for relu, centre, corner in ((True, 25.0, 6.0), (False, 5.0, 0.0)):
        for g in (closed_form_gradient(x, w, relu=relu), _autograd(_model_with(w, relu), x)):
            assert g[0, 0, 1, 1].item() == pytest.approx(centre)
            assert g[0, 0, 0, 0].item() == pytest.approx(corner)


def _loops(x, w, relu):
    """The gradient by definition, one unit at a time: an active unit (f, p, q) adds w[f] on the pixels it reads."""
    n, c, h, wd = x.shape
    f, _, k, _ = w.shape
    r = k // 2
    xp = torch.nn.functional.pad(x, (r, r, r, r))
    g = torch.zeros(n, c, h + 2 * r, wd + 2 * r, dtype=torch.float64)
    for i in range(n):
        for fi in range(f):
            for p in range(h):
                for q in range(wd):
                    z = float((xp[i, :, p:p + k, q:q + k] * w[fi]).sum())
                    if not relu or z > 0:
                        g[i, :, p:p + k, q:q + k] += w[fi]
    return g[:, :, r:r + h, r:r + wd]


@pytest.mark.parametrize("filters, kernel, channels", [(1, 3, 1), (2, 3, 1), (1, 5, 2)])
@pytest.mark.parametrize("relu", [True, False])
def test_closed_form_matches_autograd_and_the_definition(filters, kernel, channels, relu):
    g = torch.Generator().manual_seed(filters * 10 + kernel)
    x = torch.rand(3, channels, 7, 6, generator=g, dtype=torch.float64) - 0.3
    model = sum_pool_conv(channels, filters, kernel, relu, seed=kernel).double()
    w = model.conv.weight.detach()
    hand = closed_form_gradient(x, w, relu=relu)
    torch.testing.assert_close(hand, _loops(x, w, relu))
    torch.testing.assert_close(hand, _autograd(model, x))
    # the same as the activation pattern correlated with the flipped filters (summed over filters)
    a = (torch.nn.functional.conv2d(x, w, padding=kernel // 2) > 0).double() if relu else \
        torch.ones(3, filters, 7, 6, dtype=torch.float64)
    flipped = sum(torch.nn.functional.conv2d(a[:, f:f + 1], w[f:f + 1].flip(-1, -2).transpose(0, 1),
                                             padding=kernel // 2) for f in range(filters))
    torch.testing.assert_close(hand, flipped)
    # the closed form is not the gradient of another filter
    assert not torch.allclose(closed_form_gradient(x, w.flip(-1, -2), relu=relu), hand)


def test_linear_gradient_is_the_same_for_every_image():
    model = sum_pool_conv(1, 1, 3, relu=False, seed=3)
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    g = _autograd(model, x)
    torch.testing.assert_close(g, g[:1].expand_as(g))
    w = model.conv.weight.detach()
    assert g[0, 0, 2:-2, 2:-2].unique().numel() == 1                        # the interior: every tap reads it
    assert g[0, 0, 4, 4].item() == pytest.approx(w.sum().item(), rel=1e-5)
    relu = _autograd(sum_pool_conv(1, 1, 3, relu=True, seed=3), x)
    assert not torch.allclose(relu, relu[:1].expand_as(relu))              # the ReLU's pattern follows the image


def _shapes(n=6, size=12):
    """Images with structure: a bright rectangle per image at a different place, on black."""
    x = torch.zeros(n, 1, size, size)
    for i in range(n):
        x[i, 0, 2 + i % 3:7 + i % 4, 1 + i % 5:8 + i % 3] = 0.5 + 0.08 * i
    return x


def test_the_experiments_table():
    from sanitas.checks.model_randomization import resolve_metrics
    from sanitas.experiments.runner_base import build_methods

    x = _shapes()
    methods = build_methods(["gradient", "input_x_gradient", "integrated_gradients", "guided_backprop"])
    table, scalars, shown = sum_pool_table(x, methods, resolve_metrics(["spearman_abs"]), seed=0)
    assert scalars["closed_form_error"] < 1e-5
    assert scalars["gradient_spread/linear"] == 0.0 and scalars["gradient_spread/relu"] > 0.01
    assert set(table["stage"]) == {1, 2, 3, 4}
    assert set(table["method"]) == {m + s for m in methods for s in ("", " (linear)")}
    assert len(table) == 8 * 4 * len(x)
    by = table.set_index(["method", "stage", "image"])["value"]
    # one ReLU with a positive upstream gradient: guided backprop is the gradient; a bias-free ReLU network is
    # positively homogeneous, so integrated gradients from black is gradient x input
    torch.testing.assert_close(torch.tensor(by["guided_backprop"].values), torch.tensor(by["gradient"].values))
    torch.testing.assert_close(torch.tensor(by["integrated_gradients"].values),
                               torch.tensor(by["input_x_gradient"].values), atol=1e-4, rtol=1e-4)
    # the linear gradient's map of one image is the map of the next
    assert (by["gradient (linear)"].loc[4] > 1 - 1e-6).all()
    assert shown["gradient"].shape == x[:1].shape
    with pytest.raises(ValueError, match="2 images"):
        sum_pool_table(x[:1], methods, resolve_metrics(["spearman_abs"]))
    with pytest.raises(ValueError, match="odd"):
        sum_pool_conv(kernel=4)


def test_shipped_claims_are_judged(tmp_path):
    """The sanity-checks config's sum-pool experiment and its claims, on digits (no Fashion-MNIST needed)."""
    from sanitas.experiments import load_config, run_config
    from sanitas.experiments.claims import NOT_RUN

    cfg = load_config("sanity-checks")
    name = "sum-pool-conv"
    claims = [c for c in cfg["claims"] if c["experiment"] == name]
    assert len(claims) >= 5
    cfg = {"paper": "sum-pool", "dataset": "digits", "images": 8, "experiments": {name: cfg["experiments"][name]},
           "claims": claims}
    run = run_config(cfg, tmp_path, quiet=True, report=False)
    assert not run.failed
    verdicts = run.claims.set_index("id")
    assert NOT_RUN not in set(verdicts["verdict"]), verdicts[["verdict", "why"]]
    assert (tmp_path / name / "figures" / "sum_pool.png").is_file()
