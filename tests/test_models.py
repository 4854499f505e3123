import pytest
import torch
from torch import nn

from sanitas.errors import UnknownNameError
from sanitas.models import MODELS, build_model


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 32, 32)])
def test_forward_shape(name, shape):
    from sanitas.errors import ModelError
    from sanitas.explain.forward import select_logits

    k = 1 if name == "sumpool-conv" else 10
    if name == "hf-vit" and shape[1] % 7:
        with pytest.raises(ModelError, match="multiple of patch_size"):
            build_model(name, shape, num_classes=k)
        return
    net = build_model(name, shape, num_classes=k).eval()
    out = select_logits(net(torch.rand(5, *shape)), 5)  # hf-vit returns a ModelOutput
    assert out.shape == (5, k)
    assert torch.isfinite(out).all()
    assert net.input_shape == shape and net.num_classes == k


@pytest.mark.parametrize("name", MODELS.names())
def test_relu_modules_are_not_reused(name):
    net = build_model(name)
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    assert len({id(m) for m in relus}) == len(relus)
    assert not any(m.inplace for m in relus)


def test_paper_cnn_layout():
    net = build_model("cnn")
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    fcs = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 32, (5, 5)), (32, 64, (5, 5))]
    assert [(f.in_features, f.out_features) for f in fcs] == [(7 * 7 * 64, 1024), (1024, 10)]


def test_mlp_layout():
    fcs = [m for m in build_model("mlp").modules() if isinstance(m, nn.Linear)]
    assert [f.out_features for f in fcs] == [2500, 1500, 500, 10]


def test_resnet_has_batchnorm_and_strided_downsampling():
    net = build_model("resnet-small")
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert any(isinstance(m, nn.Conv2d) and m.stride == (2, 2) for m in net.modules())
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())


def test_vgg_has_no_batchnorm_but_pools():
    net = build_model("vgg-small")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 3


def test_sumpool_conv_is_the_analytic_model():
    net = build_model("sumpool-conv", num_classes=1)
    x = torch.rand(2, 1, 28, 28)
    expected = torch.relu(nn.functional.conv2d(x, net.conv.weight, padding=1)).sum(dim=(1, 2, 3))
    torch.testing.assert_close(net(x)[:, 0], expected)


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownNameError) as err:
        build_model("resnet")
    assert "resnet-small" in str(err.value) and "cnn" in str(err.value)
