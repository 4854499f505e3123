"""Hugging Face ``transformers`` models (an optional dependency: ``pip install 'sanitas[hf]'``): loading a
model directory, and reference models built from its classes. Pretrained weights cannot be fetched on every
machine; the reference models are small configurations trained here, like the other reference models."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from sanitas.errors import ModelError
from sanitas.models.spec import SPEC_HELP


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


def _hf_class(path: str):
    t = transformers_module()
    root = Path(path).expanduser()
    if not (root / "config.json").is_file():
        raise ModelError(f"{root} is a folder without config.json: a Hugging Face model directory is what "
                         f"save_pretrained writes; otherwise give {SPEC_HELP}")
    try:
        config = t.AutoConfig.from_pretrained(str(root), local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{root / 'config.json'} cannot be read by transformers ({type(exc).__name__}: {exc})") from None
    names = list(getattr(config, "architectures", None) or [])
    cls = getattr(t, names[0], None) if names else None
    return (cls or t.AutoModelForImageClassification), config, root


@contextlib.contextmanager
def _no_hf_progress(t) -> Iterator[None]:
    """transformers' own loading bar off for the call (sanitas says what it loads), restored afterwards."""
    hf_logging = t.utils.logging
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def load_huggingface(path: str) -> nn.Module:
    """The model a Hugging Face directory (what ``save_pretrained`` writes) holds, with its weights."""
    cls, _, root = _hf_class(path)
    try:
        with _no_hf_progress(transformers_module()):
            return cls.from_pretrained(str(root), local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot load the Hugging Face model in {root} ({type(exc).__name__}: {exc})") from None


def fresh_huggingface(path: str) -> nn.Module:
    """The architecture of a Hugging Face directory, freshly initialised from its config."""
    cls, config, _ = _hf_class(path)
    if hasattr(cls, "from_config"):
        return cls.from_config(config)
    return cls(config)
