"""A zoo of real architectures the contract suite runs every method on (small, random weights).

Each entry builds ``(model, x)`` deterministically. The torchvision-style models are written here
(torchvision cannot be installed on the project's machines) with the patterns that break
attribution code: in-place ReLUs everywhere, a ReLU module reused within a block, ``out +=
identity``, ``x.view(x.size(0), -1)``. The Hugging Face entries are the library's real model
classes with small configs (random init), saved and reloaded with ``from_pretrained`` as a user
would load a downloaded checkpoint.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from sanitas.models import build_model


@dataclass(frozen=True)
class Entry:
    name: str
    family: str  # relu-cnn, relu-mlp, transformer, convnext, gelu-mlp, 1d-cnn, tabular
    build: Callable[[], tuple[nn.Module, torch.Tensor]]
    output: object = None  # output selector the model needs (None: automatic)


# ----------------------------------------------------------------------------------------------
# torchvision-style ResNet-18 and VGG, written as torchvision writes them
# ----------------------------------------------------------------------------------------------

class TVBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)  # reused twice per block, as torchvision does
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TVBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TVResNet(nn.Module):
    """torchvision's ResNet layout: ResNet-18 ([2, 2, 2, 2] basic blocks) by default, ResNet-50 with
    ``layers=(3, 4, 6, 3), block=TVBottleneck``; width and input channels scaled."""

    def __init__(self, layers=(2, 2, 2, 2), width=8, in_ch=1, num_classes=10, block=TVBasicBlock):
        super().__init__()
        self.block = block
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_ch, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make(width, layers[0])
        self.layer2 = self._make(width * 2, layers[1], 2)
        self.layer3 = self._make(width * 4, layers[2], 2)
        self.layer4 = self._make(width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)

    def _make(self, planes, blocks, stride=1):
        down = None
        out = planes * self.block.expansion
        if stride != 1 or self.inplanes != out:
            down = nn.Sequential(nn.Conv2d(self.inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))
        layers = [self.block(self.inplanes, planes, stride, down)]
        self.inplanes = out
        layers += [self.block(out, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


class TVVGG(nn.Module):
    """torchvision-style VGG: in-place ReLUs, and ``x.view(x.size(0), -1)`` before the classifier."""

    def __init__(self, in_ch=1, num_classes=10):
        super().__init__()
        cfg = [16, "M", 32, "M", 32, 32, "M"]
        layers, c = [], in_ch
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(32 * 3 * 3, 64), nn.ReLU(inplace=True), nn.Dropout(),
                                        nn.Linear(64, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = x.view(x.size(0), -1)
        return self.classifier(x)


# ----------------------------------------------------------------------------------------------
# other families
# ----------------------------------------------------------------------------------------------

class GeluLNMLP(nn.Module):
    def __init__(self, d_in=64, num_classes=10):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d_in, 48), nn.LayerNorm(48), nn.GELU(), nn.Linear(48, 32),
                                 nn.SiLU(), nn.LayerNorm(32), nn.Linear(32, num_classes))

    def forward(self, x):
        return self.net(x)


class Conv1dNet(nn.Module):
    """A 1-D signal classifier: (N, 2, 64) -> 5 classes."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(2, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(2),
                                      nn.Conv1d(8, 16, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class Tabular(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)


class TupleOut(nn.Module):
    """Returns (logits, features, attention-like map): logits are its only (N, K) float output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        h = nn.functional.adaptive_avg_pool2d(self.relu(self.conv(x)), 4)
        return self.head(h.flatten(1)), h, h.mean(1)


class TorchViT(nn.Module):
    """A ViT written with torch's own ``nn.TransformerEncoder`` (packed in-projection of
    ``nn.MultiheadAttention``), class token and learned position embeddings."""

    def __init__(self, img=28, patch=7, dim=32, depth=2, heads=4, num_classes=10):
        super().__init__()
        self.patch = nn.Conv2d(1, dim, patch, patch)
        n = (img // patch) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed
        return self.head(self.norm(self.encoder(t))[:, 0])


# ----------------------------------------------------------------------------------------------
# Hugging Face models (real architecture code, small random configs, reloaded from disk)
# ----------------------------------------------------------------------------------------------

def _reloaded(model: nn.Module) -> nn.Module:
    cls = type(model)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        return cls.from_pretrained(d).eval()


def hf_vit():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=64, num_labels=10)
    return _reloaded(ViTForImageClassification(cfg)), torch.rand(2, 1, 28, 28)


def hf_resnet():
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    cfg = ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                       num_labels=10)
    return _reloaded(ResNetForImageClassification(cfg)), torch.rand(2, 1, 32, 32)


def hf_convnext():
    from transformers import ConvNextConfig, ConvNextForImageClassification

    torch.manual_seed(0)
    cfg = ConvNextConfig(num_channels=1, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], patch_size=2,
                         num_labels=10)
    return _reloaded(ConvNextForImageClassification(cfg)), torch.rand(2, 1, 32, 32)


def _seeded(factory, shape):
    def build():
        torch.manual_seed(0)
        m = factory().eval()
        g = torch.Generator().manual_seed(1)
        return m, torch.rand(shape, generator=g)
    return build


def _bn_stats(build):
    """Give BatchNorm layers non-trivial running statistics (as trained models have)."""
    def wrapped():
        m, x = build()
        g = torch.Generator().manual_seed(2)
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
        return m, x
    return wrapped


ZOO: dict[str, Entry] = {e.name: e for e in [
    Entry("cnn", "relu-cnn", _seeded(lambda: build_model("cnn"), (2, 1, 28, 28))),
    Entry("mlp", "relu-mlp", _seeded(lambda: build_model("mlp", hidden=(64, 32)), (2, 1, 28, 28))),
    Entry("vgg-small", "relu-cnn", _seeded(lambda: build_model("vgg-small"), (2, 1, 28, 28))),
    Entry("resnet-small", "relu-cnn", _bn_stats(_seeded(lambda: build_model("resnet-small"), (2, 1, 28, 28)))),
    Entry("tv-resnet18", "relu-cnn", _bn_stats(_seeded(TVResNet, (2, 1, 32, 32)))),
    Entry("tv-vgg", "relu-cnn", _seeded(TVVGG, (2, 1, 28, 28))),
    Entry("gelu-ln-mlp", "gelu-mlp", _seeded(GeluLNMLP, (2, 1, 8, 8))),
    Entry("conv1d", "1d-cnn", _bn_stats(_seeded(Conv1dNet, (2, 2, 64)))),
    Entry("tabular", "tabular", _seeded(Tabular, (3, 12))),
    Entry("tuple-out", "relu-cnn", _seeded(TupleOut, (2, 1, 16, 16))),
    Entry("torch-vit", "transformer", _seeded(TorchViT, (2, 1, 28, 28))),
    Entry("hf-vit", "transformer", hf_vit),
    Entry("hf-resnet", "relu-cnn", _bn_stats(hf_resnet)),
    Entry("hf-convnext", "convnext", hf_convnext),
]}


@functools.cache
def built(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The zoo model (cached per session; tests must not change it, and the contract suite checks that)."""
    return ZOO[name].build()
