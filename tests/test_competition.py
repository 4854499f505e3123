"""Competition for pixels: every branch of the rule, the batched path, chunking, sparsity ~ 1/K."""

import pytest
import torch
from torch import nn

from sanitas.errors import ConfigError
from sanitas.explain import Competitive, competition_mask, explain, get_explainer, nonzero_fraction
from sanitas.explain.base import Explainer
from sanitas.models import build_model


class FixedMaps(Explainer):
    """A fake method returning hand-made per-class maps (K, 1, 1, 1, P) whatever the input."""

    name = "fixed"
    defaults = {"maps": None}

    def attribute(self, model, x, G):
        per_class = self.maps  # (K, P)
        k, p = per_class.shape
        full = per_class.view(k, 1, 1, 1, p).expand(k, x.shape[0], 1, 1, p)
        return torch.einsum("bnk,kncdp->bncdp", G, full.contiguous())


class Dummy(nn.Module):
    def __init__(self, k=3):
        super().__init__()
        self.k = k
        self.lin = nn.Linear(1, k)

    def forward(self, x):
        return self.lin(x.flatten(1)[:, :1])


def test_rule_every_branch_on_three_classes():
    # pixels:           0     1     2     3     4     5     6     7
    maps = torch.tensor([
        [2.0, 1.0, -3.0, -1.0, 0.0, 2.0, -2.0, 1.0],  # class 0 (chosen)
        [1.0, 5.0, -1.0, -4.0, 3.0, 2.0, -2.0, -1.0],  # class 1
        [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 2.0],  # class 2
    ])
    out = Competitive(base=FixedMaps(maps=maps))(Dummy(), torch.zeros(1, 1, 1, 8), 0)[0, 0, 0]
    expected = torch.tensor([
        2.0,   # positive and the strict maximum: kept
        0.0,   # positive but class 1 is higher: zeroed (branch a)
        -3.0,  # negative and the minimum: kept
        0.0,   # negative but class 1 is lower: zeroed (branch b)
        0.0,   # zero stays zero
        2.0,   # positive and TIED for the maximum with class 1: kept
        -2.0,  # negative and tied for the minimum: kept
        0.0,   # positive but class 2 is higher
    ])
    assert torch.equal(out, expected)
    # a strict comparison against a max that includes the chosen label would zero everything:
    assert out.abs().sum() > 0


def test_rule_for_every_chosen_label_matches_all_target_path():
    torch.manual_seed(0)
    maps = torch.randn(3, 16)
    e = Competitive(base=FixedMaps(maps=maps))
    x = torch.zeros(2, 1, 1, 16)
    allc = e(Dummy(), x, "all")
    for c in range(3):
        assert torch.equal(allc[:, c], e(Dummy(), x, c))
    # each element survives for at most one label among the positives and one among the negatives
    kept = (allc[0, :, 0, 0] != 0).sum(0)
    assert kept.max() <= 2


def test_pixel_mode_decides_on_channel_sums():
    maps = torch.tensor([[[1.0, 1.0]], [[3.0, -2.5]]])  # K=2, channels=2 per pixel (via P axis trick)
    k = 2
    m = maps.view(k, 2)  # class 0: (1, 1), class 1: (3, -2.5): channel sums 2 vs 0.5

    class TwoChannel(FixedMaps):
        def attribute(self, model, x, G):
            full = self.maps.view(k, 1, 2, 1, 1).expand(k, x.shape[0], 2, 1, 1).contiguous()
            return torch.einsum("bnk,knchw->bnchw", G, full)

    x = torch.zeros(1, 2, 1, 1)
    per_elem = Competitive(base=TwoChannel(maps=m))(Dummy(2), x, 0)
    per_pixel = Competitive(base=TwoChannel(maps=m), channels="pixel")(Dummy(2), x, 0)
    assert per_elem.flatten().tolist() == [0.0, 1.0]  # channel 0 loses to 3.0; channel 1 wins (1 > -2.5)
    assert per_pixel.flatten().tolist() == [1.0, 1.0]  # the pixel wins on sums: both channels kept


def test_batched_all_class_equals_per_class_loop_on_cnn():
    torch.manual_seed(1)
    m = build_model("cnn")
    x = torch.rand(3, 1, 28, 28)
    for base in ["input_x_gradient", "lrp_epsilon", "integrated_gradients"]:
        opts = {"base_options": {"steps": 4}} if base == "integrated_gradients" else {}
        e = get_explainer(f"competitive({base})", **opts)
        allc = e(m, x, "all")
        inner_all = explain(m, x, "all", method=base, **(opts.get("base_options") or {}))
        for c in range(10):
            s = inner_all[:, c]
            mask = competition_mask(s, inner_all.max(1).values, inner_all.min(1).values)
            assert torch.allclose(allc[:, c], s * mask, atol=1e-6)
            assert torch.allclose(e(m, x, c), allc[:, c], atol=1e-6)


def test_class_chunks_and_top_classes():
    torch.manual_seed(2)
    m = build_model("cnn")
    x = torch.rand(2, 1, 28, 28)
    y = torch.tensor([1, 4])
    exact = explain(m, x, y, method="competitive(input_x_gradient)")
    chunked = explain(m, x, y, method="competitive(input_x_gradient)", class_chunk=3)
    full_top = explain(m, x, y, method="competitive(input_x_gradient)", top_classes=10)
    for other in (chunked, full_top):
        # batched VJPs of different widths round differently: near-ties may flip, nothing else
        differ = ((other != 0) != (exact != 0)).float().mean()
        assert differ < 2e-3
        both = (other != 0) & (exact != 0)
        assert torch.allclose(other[both], exact[both], atol=1e-6)
    approx = explain(m, x, y, method="competitive(input_x_gradient)", top_classes=2)
    # fewer competitors can only keep more elements
    assert ((approx != 0) | (exact == 0)).all()
    with pytest.raises(ConfigError):
        get_explainer("competitive(sobel)")
    with pytest.raises(ConfigError):
        get_explainer("competitive", channels="rgb")


def test_sparsity_on_random_network_near_one_over_k():
    torch.manual_seed(3)
    m = build_model("cnn")
    with torch.no_grad():  # make the head random and balanced: no class dominates the votes
        m.output.weight.normal_(0, 0.01)
        m.output.bias.zero_()
    x = torch.rand(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(0))
    cgi = explain(m, x, y, method="competitive(input_x_gradient)")
    # With votes ~ exchangeable across labels, the chosen label holds the largest vote of a pixel with
    # probability 1/K, and the smallest with probability 1/K: 1/K of the elements survive as positive
    # scores, 1/K as negative ones (gupta2019 section 4 counts one sign: "zero with probability 1 - 1/k").
    pos = (cgi > 0).float().mean().item()
    neg = (cgi < 0).float().mean().item()
    assert abs(pos - 0.1) < 0.05 and abs(neg - 0.1) < 0.05, (pos, neg)
    assert abs(nonzero_fraction(cgi).mean().item() - 0.2) < 0.1
