"""Reference models built from Hugging Face ``transformers`` classes (an optional dependency:
``pip install 'sanitas[hf]'``). Pretrained weights cannot be fetched on every machine; these are
small configurations trained here, like the other reference models."""

from __future__ import annotations

from torch import nn

from sanitas.errors import ModelError


def transformers_module():
    """The ``transformers`` package, or a :class:`ModelError` that says how to install it."""
    try:
        import transformers
    except ImportError as exc:
        raise ModelError("this model is a Hugging Face transformers model; install transformers with "
                         "pip install 'sanitas[hf]' (or pip install transformers)") from exc
    return transformers


def HFViT(input_shape=(1, 28, 28), num_classes=10, patch_size=7, hidden_size=64, depth=4, heads=4,
          mlp_size=128) -> nn.Module:
    """``transformers.ViTForImageClassification``: ``depth`` pre-norm blocks of width ``hidden_size`` on
    ``patch_size`` patches (16 patches of 7x7 on 28x28 images), a class token and learned position
    embeddings. Returns a ``ModelOutput`` whose ``logits`` sanitas reads."""
    t = transformers_module()
    c, h, w = (int(s) for s in input_shape)
    if h != w or h % patch_size:
        raise ModelError(f"hf-vit needs square images whose side is a multiple of patch_size={patch_size}; "
                         f"got {h}x{w}")
    cfg = t.ViTConfig(image_size=h, patch_size=patch_size, num_channels=c, hidden_size=hidden_size,
                      num_hidden_layers=depth, num_attention_heads=heads, intermediate_size=mlp_size,
                      num_labels=int(num_classes), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = t.ViTForImageClassification(cfg)
    model.input_shape, model.num_classes = (c, h, w), int(num_classes)
    return model
