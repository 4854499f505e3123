"""Fingerprints of configs and models (used for cache keys and to prove models are untouched)."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by the functions that hash tensors: config_hash needs none
    import torch
    from torch import nn


def config_hash(config: dict[str, Any], length: int = 16) -> str:
    """Stable hash of a JSON-serialisable config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def tensor_digest(t: torch.Tensor) -> str:
    import torch

    t = t.detach().cpu().contiguous()
    h = hashlib.sha256()
    h.update(str(t.dtype).encode())
    h.update(str(tuple(t.shape)).encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """Hash of everything about a model that sanitas promises not to change.

    Covers every parameter and buffer (values, dtype, shape, memory layout), every
    ``requires_grad`` flag and every module's ``training`` flag.
    """
    h = hashlib.sha256()
    for name, p in model.named_parameters(remove_duplicate=False):
        h.update(f"p:{name}:{p.requires_grad}:{tuple(p.stride())}:".encode())
        h.update(tensor_digest(p).encode())
    for name, b in model.named_buffers(remove_duplicate=False):
        h.update(f"b:{name}:{tuple(b.stride())}:".encode())
        h.update(tensor_digest(b).encode())
    for name, m in model.named_modules(remove_duplicate=False):
        h.update(f"m:{name}:{m.training}".encode())
    return h.hexdigest()
