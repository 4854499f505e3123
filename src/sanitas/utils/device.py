"""Device selection."""

from __future__ import annotations

import torch

from sanitas.errors import ConfigError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; anything else is validated."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"invalid device {device!r}: use 'auto', 'cpu' or 'cuda[:N]'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available here; use 'cpu' or 'auto'")
    return dev


def prefer_fast_layout(model: torch.nn.Module) -> torch.nn.Module:
    """Put a model that sanitas owns (a copy, never the user's) in the faster memory layout, in place.

    On CPU, a network with 2-d convolutions runs forward and backward faster in channels_last
    layout: oneDNN's NCHW max-pooling and ReLU backward are the slow kernels there. Measured on the
    2-core CPU (64 images, IG with 32 steps): cnn 1.2-1.3x, vgg-small 1.1-1.3x, resnet-small
    1.1-1.4x faster; the MPRT protocol of ``benchmarks/vs_quantus.py`` 12.3-14.2 s -> 8.8-9.2 s.
    Values are unchanged: only the strides of 4-d parameters and buffers change (maps agree to
    float rounding; a max-pool tie may break the other way, as it may between any two kernels).
    Models without 4-d parameters, and models on other devices, are returned as they are.
    """
    return model.to(memory_format=torch.channels_last) if layout_would_change(model) else model


def layout_would_change(model: torch.nn.Module) -> bool:
    """Whether :func:`prefer_fast_layout` would convert this model (a CPU model with 4-d tensors)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return (bool(tensors) and tensors[0].device.type == "cpu" and any(t.dim() == 4 for t in tensors)
            and not all(t.is_contiguous(memory_format=torch.channels_last) for t in tensors if t.dim() == 4))
