"""The model registry: names -> builders, and resolving a name or a module to a model."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from sanitas.models import architectures as A
from sanitas.models.hf import HFViT
from sanitas.registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    """How to build a reference model and how to train it by default."""

    name: str
    builder: type
    description: str
    epochs: int = 4
    lr: float = 1e-3
    batch_size: int = 128
    kwargs: dict = field(default_factory=dict)


MODELS: Registry[ModelSpec] = Registry("model")


def _add(spec: ModelSpec, aliases=()):
    MODELS.register(spec.name, spec, aliases=aliases)


_add(ModelSpec("cnn", A.PaperCNN, "conv5x5-32, pool, conv5x5-64, pool, fc1024, fc (sanity-checks paper)", epochs=4))
_add(ModelSpec("mlp", A.MLP, "fully connected 2500-1500-500 (sanity-checks paper)", epochs=6))
_add(ModelSpec("alexnet1", A.AlexNet1, "AlexNet-style, one input channel (competition paper)", epochs=6))
_add(ModelSpec("vgg-small", A.VGGSmall, "VGG-style conv blocks with max-pooling, no BatchNorm", epochs=5))
_add(ModelSpec("resnet-small", A.ResNetSmall, "ResNet-style: BatchNorm, skip connections, strided down-sampling",
               epochs=5))
_add(ModelSpec("linear", A.LinearModel, "linear classifier W x + b", epochs=5))
_add(ModelSpec("hf-vit", HFViT, "Hugging Face ViTForImageClassification: 4 blocks, width 64, 7x7 patches (needs "
               "transformers)", epochs=3, lr=1e-3))
_add(ModelSpec("sumpool-conv", A.SumPoolConv, "one 3x3 conv, ReLU, sum-pool (the paper's analytic model)",
               epochs=3, lr=1e-2))


def build_model(name: str, input_shape=(1, 28, 28), num_classes: int = 10, **kwargs) -> nn.Module:
    """A freshly initialised reference model (uses the global torch RNG, like any nn.Module)."""
    spec = MODELS.get(name)
    return spec.builder(input_shape=tuple(input_shape), num_classes=num_classes, **{**spec.kwargs, **kwargs})


def model_names() -> list[str]:
    return MODELS.names()
