"""Layer discovery, init schemes and the cascading / independent randomization variants."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from sanitas.errors import ConfigError, ModelError, UnknownNameError, UnsupportedLayerError
from sanitas.models import build_model
from sanitas.randomize import (INIT_SCHEMES, TruncatedNormal, Uniform, cascading, count_stages, discover_layers,
                               format_layers, group_layers, independent, layer_seed, randomize, randomize_module)
from sanitas.utils.hashing import model_fingerprint

X = torch.zeros(1, 1, 28, 28)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is as fast and leaves the shared cores to others."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name)


def _trained_bn(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters (as if trained)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.num_batches_tracked.fill_(100)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
    return model


def _layer_state(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    m = model.get_submodule(name)
    out = dict(m.named_parameters(recurse=False))
    out.update({k: b for k, b in m.named_buffers(recurse=False) if b is not None})
    return out


def _changed(original: nn.Module, model: nn.Module, names) -> set[str]:
    changed = set()
    for n in names:
        a, b = _layer_state(original, n), _layer_state(model, n)
        if any(not torch.equal(a[k], b[k]) for k in a):
            changed.add(n)
    return changed


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------------
# discovery
# ------------------------------------------------------------------------------------------------

class Scrambled(nn.Module):
    """Registers its layers in a different order from the one forward runs them in."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.mid = nn.Linear(4, 8)
        self.stem = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        x = self.bn(self.stem(x))
        return self.head(torch.relu(self.mid(x.mean(dim=(2, 3)))))


class Reused(nn.Module):
    """``shared`` runs before and after ``mid``: first-call and last-call order differ."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 4)
        self.mid = nn.Linear(4, 4)
        self.shared = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.shared(torch.relu(self.mid(self.shared(self.inp(x))))))


class Functional(nn.Module):
    """A parent that uses its own parameter after its children and a child's weight functionally."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.first = nn.Linear(4, 4)
        self.side = nn.Linear(4, 4)  # never called as a module: its weight is used via F.linear

    def forward(self, x):
        h = self.first(x)
        h = nn.functional.linear(h, self.side.weight, self.side.bias)
        return h * self.scale


def test_forward_order_not_registration_order():
    model = Scrambled()
    registration = [n for n, m in model.named_modules() if list(m.parameters(recurse=False))]
    assert registration == ["head", "mid", "stem", "bn"]
    layers = discover_layers(model, torch.zeros(1, 1, 6, 6))
    assert [l.name for l in layers] == ["stem", "bn", "mid", "head"]
    assert [l.index for l in layers] == [0, 1, 2, 3]
    assert [l.type for l in layers] == ["Conv2d", "BatchNorm2d", "Linear", "Linear"]
    assert layers[0].n_params == 4 * 9 + 4 and layers[0].output_shape == (1, 4, 4, 4)
    assert layers[3].output_shape == (1, 3)


def test_reference_models_in_forward_order():
    assert [l.name for l in discover_layers(_model("cnn"), X)] == ["features.conv1", "features.conv2", "fc1",
                                                                    "output"]
    names = [l.name for l in discover_layers(_model("resnet-small"), X)]
    assert names[:2] == ["stem.conv", "stem.bn"] and names[-1] == "output"
    # the shortcut runs after the main branch of its block
    i = names.index("stages.stage2.block1.bn2")
    assert names[i + 1:i + 3] == ["stages.stage2.block1.shortcut.conv", "stages.stage2.block1.shortcut.bn"]


def test_reused_module_listed_once_at_first_call():
    layers = discover_layers(Reused(), torch.zeros(2, 4))
    assert [l.name for l in layers] == ["inp", "shared", "mid", "out"]


def test_parameters_used_functionally_and_parent_parameters():
    layers = discover_layers(Functional(), torch.zeros(2, 4))
    assert [l.name for l in layers] == ["first", "side", ""]
    assert layers[1].output_shape is None  # its module was never called
    assert layers[2].param_names == ("scale",) and layers[2].n_params == 4  # direct parameters only


def test_tied_parameter_belongs_to_first_user():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(4, 4, bias=False)
            self.dec = nn.Linear(4, 4)
            self.dec.weight = self.enc.weight

        def forward(self, x):
            return self.dec(self.enc(x))

    model = Tied()
    layers = discover_layers(model, torch.zeros(1, 4))
    assert [(l.name, l.param_names) for l in layers] == [("enc", ("weight",)), ("dec", ("bias",))]
    stages = list(s.randomized_layers for s in cascading(model, torch.zeros(1, 4)))
    assert stages == [(), ("dec",), ("enc", "dec")]


def test_unused_layers_are_left_out_with_a_warning():
    class Aux(nn.Module):
        def __init__(self):
            super().__init__()
            self.main = nn.Linear(4, 2)
            self.aux = nn.Linear(4, 2)

        def forward(self, x):
            return self.main(x)

    with pytest.warns(UserWarning, match="aux"):
        layers = discover_layers(Aux(), torch.zeros(1, 4))
    assert [l.name for l in layers] == ["main"]


def test_discovery_leaves_model_untouched():
    model = _trained_bn(_model("resnet-small")).train()
    model.stages.stage2.eval()  # a mixed train/eval state must come back exactly
    before = model_fingerprint(model)
    discover_layers(model, torch.randn(2, 1, 28, 28))
    assert model_fingerprint(model) == before
    assert model.training and not model.stages.stage2.training and model.stages.stage3.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch.is_grad_enabled()


def test_multiple_and_keyword_inputs():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 2)
            self.b = nn.Linear(5, 2)

        def forward(self, u, v):
            return self.b(v) + self.a(u)

    assert [l.name for l in discover_layers(Two(), (torch.zeros(1, 3), torch.zeros(1, 5)))] == ["b", "a"]
    assert [l.name for l in discover_layers(Two(), {"u": torch.zeros(1, 3), "v": torch.zeros(1, 5)})] == ["b", "a"]


def test_format_layers_table():
    text = format_layers(_model("resnet-small"), X, blocks="prefix:2")
    lines = text.splitlines()
    assert lines[0].split() == ["#", "name", "type", "params", "output", "shape", "block"]
    row = next(l for l in lines if "stages.stage2.block1.conv1" in l)
    assert row.split()[:4] == ["6", "stages.stage2.block1.conv1", "Conv2d", "4,608"]
    assert row.rstrip().endswith("stages.stage2") and "(1, 32, 14, 14)" in row
    assert "19 layers, 6 blocks, 77,754 parameters" in lines[-1]


# ------------------------------------------------------------------------------------------------
# blocks
# ------------------------------------------------------------------------------------------------

def test_blocks_by_prefix_on_resnet():
    layers = discover_layers(_model("resnet-small"), X)
    blocks = group_layers(layers, "prefix:2")
    assert [b.name for b in blocks] == ["stem.conv", "stem.bn", "stages.stage1", "stages.stage2", "stages.stage3",
                                        "output"]
    s2 = blocks[3].layer_names
    assert len(s2) == 6 and all(n.startswith("stages.stage2.") for n in s2)
    assert list(s2) == sorted(s2, key=[l.name for l in layers].index)  # forward order inside the block
    assert [b.name for b in group_layers(layers, "prefix:1")] == ["stem", "stages", "output"]
    assert [b.layer_names for b in group_layers(layers)] == [(l.name,) for l in layers]


def test_blocks_explicit_lists():
    layers = discover_layers(_model("resnet-small"), X)
    blocks = group_layers(layers, ["stages.stage3", "stem"])
    names = [b.name for b in blocks]
    # unselected layers stay blocks of their own; blocks are in forward order
    assert names[0] == "stem" and names[-2:] == ["stages.stage3", "output"]
    assert blocks[0].layer_names == ("stem.conv", "stem.bn")
    nested = group_layers(layers, [["output", "stages.stage3.block1.shortcut"]])
    assert ("stages.stage3.block1.shortcut.conv", "stages.stage3.block1.shortcut.bn", "output") in \
        [b.layer_names for b in nested]
    named = group_layers(layers, {"top": ["output", "stages.stage3"]})
    assert named[-1].name == "top" and len(named[-1].layer_names) == 7


def test_block_errors():
    layers = discover_layers(_model("resnet-small"), X)
    with pytest.raises(UnknownNameError, match=r"'stages\.stage4'.*Did you mean.*stages\.stage"):
        group_layers(layers, ["stages.stage4"])
    with pytest.raises(UnknownNameError, match="stem.conv"):  # lists the valid layers
        group_layers(layers, [["output", "nope"]])
    with pytest.raises(ConfigError, match="two blocks"):
        group_layers(layers, ["stages", "stages.stage1"])
    for bad in ("prefix:0", "prefix:x", 3.5):
        with pytest.raises(ConfigError):
            group_layers(layers, bad)
    with pytest.raises(UnknownNameError):  # a string that is not 'prefix:N' is a list of prefixes
        group_layers(layers, "by-name")
    with pytest.raises(UnknownNameError):
        cascading(_model("cnn"), X, blocks=["fc9"])


# ------------------------------------------------------------------------------------------------
# init schemes
# ------------------------------------------------------------------------------------------------

def test_truncated_normal_statistics():
    layer = nn.Linear(1000, 1000)
    randomize_module(layer, "big", init="truncated_normal", seed=3)
    w = layer.weight.detach().double()
    assert w.abs().max() <= 0.02
    expected_std = 0.01 * math.sqrt(1 - 2 * 2 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(2 / math.sqrt(2)))
    assert abs(expected_std - 0.0088) < 1e-4
    assert abs(w.std().item() - expected_std) < 5e-5
    assert abs(w.mean().item()) < 5e-5
    assert (w.abs() > 0.019).any()  # it really reaches the cut, not a narrower distribution
    assert layer.bias.abs().max() <= 0.02 and layer.bias.std() > 0.005  # biases too


def test_uniform_range_and_custom_constants():
    layer = nn.Linear(300, 300)
    randomize_module(layer, "l", init="uniform", seed=0)
    w = layer.weight.detach()
    assert w.min() >= -0.02 and w.max() <= 0.02 and w.min() < -0.019 and w.max() > 0.019
    randomize_module(layer, "l", init=Uniform(0.5, 1.0), seed=0)
    assert layer.weight.min() >= 0.5
    randomize_module(layer, "l", init=TruncatedNormal(mean=1.0, std=0.1), seed=0)
    assert (layer.weight - 1.0).abs().max() <= 0.2 + 1e-6
    with pytest.raises(ConfigError):
        Uniform(1.0, 0.0)


def test_permute_keeps_the_multiset_of_weights():
    layer = nn.Conv2d(3, 8, 3)
    before = {k: v.detach().clone() for k, v in layer.named_parameters()}
    randomize_module(layer, "conv", init="permute", seed=1)
    for k, v in layer.named_parameters():
        assert torch.equal(torch.sort(v.detach().flatten()).values, torch.sort(before[k].flatten()).values)
        assert not torch.equal(v.detach(), before[k])


def test_default_scheme_is_reset_parameters_under_a_private_seed():
    a, b = nn.Linear(20, 10), nn.Linear(20, 10)
    randomize_module(a, "fc", init="default", seed=5)
    randomize_module(b, "fc", init="default", seed=5)
    assert torch.equal(a.weight, b.weight)
    bound = 1 / math.sqrt(20)  # kaiming_uniform(a=sqrt(5)) bound for fan_in 20
    assert a.weight.abs().max() <= bound and a.weight.std() > bound / 4

    class NoReset(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

    with pytest.raises(UnsupportedLayerError, match="reset_parameters"):
        randomize_module(NoReset(), "x", init="default")


def test_unknown_init_scheme_suggests_the_closest():
    with pytest.raises(UnknownNameError, match=r"Did you mean 'truncated_normal'\?.*uniform"):
        cascading(_model("cnn"), X, init="truncated_normall")
    assert set(INIT_SCHEMES.names()) == {"truncated_normal", "uniform", "default", "permute"}


def test_layer_seed_is_stable():
    assert layer_seed(0, "fc1") == layer_seed(0, "fc1")
    assert layer_seed(0, "fc1") != layer_seed(1, "fc1") != layer_seed(0, "fc2")
    assert 0 <= layer_seed(2**40, "a.b.c") < 2**63
    # pinned: a change here silently invalidates every resumed run
    assert layer_seed(0, "fc1") == 322111331930209005


@pytest.mark.parametrize("policy", ["keep", "reset"])
@pytest.mark.parametrize("init", ["truncated_normal", "default", "permute"])
def test_batchnorm_running_statistics_policy(policy, init):
    bn = _trained_bn(nn.Sequential(nn.BatchNorm2d(16)))[0]
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    weight = bn.weight.detach().clone()
    randomize_module(bn, "bn", init=init, seed=0, bn_stats=policy)
    assert not torch.equal(bn.weight, weight)  # affine parameters always change
    if policy == "keep":
        assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
        assert bn.num_batches_tracked.item() == 100
    else:
        assert torch.equal(bn.running_mean, torch.zeros(16)) and torch.equal(bn.running_var, torch.ones(16))
        assert bn.num_batches_tracked.item() == 0


def test_batchnorm_auto_policy_follows_the_scheme():
    for init, reset in (("default", True), ("truncated_normal", False), ("uniform", False), ("permute", False)):
        bn = _trained_bn(nn.Sequential(nn.BatchNorm2d(4)))[0]
        randomize_module(bn, "bn", init=init, seed=0)
        assert torch.equal(bn.running_mean, torch.zeros(4)) is reset, init
    with pytest.raises(ConfigError, match="bn_stats"):
        cascading(_model("cnn"), X, bn_stats="drop")


# ------------------------------------------------------------------------------------------------
# variants
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["top_down", "bottom_up"])
def test_cascading_changes_exactly_the_top_k_layers(order):
    original = _model("cnn")
    names = [l.name for l in discover_layers(original, X)]
    seq = cascading(original, X, order=order, seed=0)
    assert len(seq) == 5 and count_stages(original, X) == 5
    expected_order = names[::-1] if order == "top_down" else names
    assert seq.stage_names == ["original", *expected_order]
    for stage in seq:
        k = stage.index
        assert stage.name == ("original" if k == 0 else expected_order[k - 1])
        assert set(stage.randomized_layers) == set(expected_order[:k])
        assert _changed(original, stage.model, names) == set(expected_order[:k])
        assert not stage.model.training


def test_independent_changes_exactly_one_layer_and_matches_cascading():
    original = _trained_bn(_model("resnet-small"))
    names = [l.name for l in discover_layers(original, X)]
    casc = {s.name: {n: {k: v.clone() for k, v in _layer_state(s.model, n).items()} for n in s.randomized_layers}
            for s in cascading(original, X, seed=4)}
    seen = []
    for stage in independent(original, X, seed=4):
        seen.append(stage.name)
        if stage.index == 0:
            assert _changed(original, stage.model, names) == set()
            continue
        assert stage.randomized_layers == (stage.name,)
        assert _changed(original, stage.model, names) == {stage.name}
        # same (seed, layer) -> same weights as in the cascade
        for k, v in _layer_state(stage.model, stage.name).items():
            assert torch.equal(v, casc[stage.name][stage.name][k])
    assert seen == ["original", *names[::-1]]


def test_user_model_is_never_touched():
    model = _trained_bn(_model("resnet-small")).train()
    before = model_fingerprint(model)
    for variant in (cascading, independent):
        for init in ("truncated_normal", "default", "permute"):
            for stage in variant(model, X, init=init, blocks="prefix:2", bn_stats="reset"):
                stage.model(X)
                assert stage.model is not model
    randomize(model, X)
    assert model_fingerprint(model) == before and model.training


def test_global_rng_untouched():
    model = _model("resnet-small")
    state = torch.random.get_rng_state()
    for init in ("truncated_normal", "uniform", "default", "permute"):
        for stage in cascading(model, X, init=init, seed=11):
            pass
        list(independent(model, X, init=init, seed=11))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_reproducible_and_seed_dependent():
    model = _model("cnn")

    def last(seed, init="truncated_normal"):
        return _weights(cascading(model, X, seed=seed, init=init).stage(-1).model)

    a, b, c = last(0), last(0), last(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(not torch.equal(a[k], c[k]) for k in a)
    d, e = last(0, "default"), last(0, "default")
    assert all(torch.equal(d[k], e[k]) for k in d)
    # iterating the same sequence twice gives identical models
    seq = independent(model, X, seed=2)
    first = [_weights(s.model) for s in seq]
    second = [_weights(s.model) for s in seq]
    assert all(torch.equal(x[k], y[k]) for x, y in zip(first, second) for k in x)


def test_copy_semantics_and_resume():
    model = _model("cnn")
    kept = [s.model for s in cascading(model, X, copy=True)]
    assert len({id(m) for m in kept}) == 5
    names = [l.name for l in discover_layers(model, X)]
    assert [len(_changed(model, m, names)) for m in kept] == [0, 1, 2, 3, 4]
    shared = [s.model for s in cascading(model, X)]
    assert len({id(m) for m in shared}) == 1  # one working copy, documented
    # resuming from stage 3 gives the same models as a full pass
    seq = cascading(model, X, seed=9)
    full = {s.index: _weights(s.model) for s in seq}
    resumed = {s.index: _weights(s.model) for s in seq.iterate(start=3)}
    assert sorted(resumed) == [3, 4]
    assert all(torch.equal(full[i][k], resumed[i][k]) for i in resumed for k in full[i])
    alone = seq.stage(2)
    assert all(torch.equal(full[2][k], v) for k, v in _weights(alone.model).items())


def test_independent_restores_between_stages():
    model = _model("cnn")
    it = iter(independent(model, X, seed=0))
    first = next(it).model
    next(it)  # randomizes "output"
    names = [l.name for l in discover_layers(model, X)]
    assert _changed(model, first, names) == {"output"}  # the same working copy
    next(it)  # restores "output", randomizes "fc1"
    assert _changed(model, first, names) == {"fc1"}


def test_randomize_helper_matches_stages():
    model = _model("cnn")
    full = randomize(model, X, seed=3)
    last = cascading(model, X, seed=3).stage(-1).model
    assert all(torch.equal(v, last.state_dict()[k]) for k, v in full.state_dict().items())
    part = randomize(model, X, ["features"], seed=3)
    names = [l.name for l in discover_layers(model, X)]
    assert _changed(model, part, names) == {"features.conv1", "features.conv2"}


def test_blocks_in_variants():
    model = _trained_bn(_model("resnet-small"))
    names = [l.name for l in discover_layers(model, X)]
    seq = cascading(model, X, blocks="prefix:2")
    assert len(seq) == 7 and count_stages(model, X, blocks="prefix:2") == 7
    for stage in seq:
        if stage.name == "stages.stage3":
            assert _changed(model, stage.model, names) == {n for n in names
                                                            if n.startswith("stages.stage3") or n == "output"}


def test_errors():
    with pytest.raises(ModelError, match="no parameters"):
        discover_layers(nn.Sequential(nn.ReLU(), nn.Flatten()), X)
    with pytest.raises(ModelError, match="no parameters"):
        cascading(nn.ReLU(), X)
    with pytest.raises(ModelError, match="forward pass"):
        discover_layers(_model("cnn"), torch.zeros(1, 3, 5, 5))
    with pytest.raises(ConfigError, match="top_down"):
        cascading(_model("cnn"), X, order="sideways")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        discover_layers(_model("cnn"), X)  # no spurious warnings on a normal model


class Mixed(nn.Module):
    """Layers whose parameters reach torch as lists (LSTM) or functionally (attention's out_proj)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.emb = nn.Embedding(10, 8)
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.ln = nn.LayerNorm(8)

    def forward(self, x):
        h, _ = self.lstm(self.emb(x))
        h, _ = self.att(h, h, h)
        return self.head(self.ln(h).mean(1))


def test_other_layer_types_and_default_scheme_fallbacks():
    torch.manual_seed(0)
    model = Mixed()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.rand(p.shape))  # "trained": differs from any default init, no constant tensors
    x = torch.randint(0, 10, (2, 5))
    names = [l.name for l in discover_layers(model, x)]
    assert names == ["emb", "lstm", "att", "att.out_proj", "ln", "head"]
    for init in ("default", "permute", "truncated_normal"):
        for stage in independent(model, x, init=init):
            # MultiheadAttention._reset_parameters also resets out_proj.bias: restored, so one layer changes
            assert _changed(model, stage.model, names) == set(stage.randomized_layers), (init, stage.name)
            stage.model(x)


def test_default_scheme_fails_before_the_run_starts():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.gain = nn.Parameter(torch.ones(4))

        def forward(self, x):
            return self.fc(x) * self.gain

    with pytest.raises(UnsupportedLayerError, match=r"'\(model\)'.*Scale"):
        cascading(Scale(), torch.zeros(1, 4), init="default")
    assert len(cascading(Scale(), torch.zeros(1, 4), init="truncated_normal")) == 3


def test_batchnorm_without_affine_is_not_a_layer():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, affine=False), nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(ModelError, match="lazy"):
        discover_layers(model, X)
    model(X)
    assert [l.name for l in discover_layers(model, X)] == ["0", "3"]


@pytest.mark.parametrize("init", ["truncated_normal", "uniform", "default", "permute"])
def test_stage_copies_use_channels_last_on_cpu_with_the_same_weights(init):
    """Stage models are channels_last copies on CPU (faster); the layout must not change a single
    weight: the same blocks randomized in place on a plain NCHW copy give identical tensors."""
    import copy

    model = _model("resnet-small")
    for stage in cascading(model, X, init=init, seed=4, copy=True):
        convs = [p for p in stage.model.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1]
        assert convs and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                             for p in convs)
        plain = copy.deepcopy(model)
        if stage.randomized_layers:
            randomize(plain, X, list(stage.randomized_layers), init=init, seed=4, inplace=True)
        for (k, v), w in zip(plain.state_dict().items(), stage.model.state_dict().values()):
            assert torch.equal(v, w), k
    assert all(p.is_contiguous() for p in model.parameters())  # the user's model keeps its layout
    mlp = next(iter(cascading(_model("mlp"), X))).model  # no 4-d tensors: nothing to convert
    assert all(p.is_contiguous() for p in mlp.parameters())


def test_fingerprint_sees_a_layout_change():
    model = _model("cnn")
    before = model_fingerprint(model)
    model.to(memory_format=torch.channels_last)
    assert model_fingerprint(model) != before
