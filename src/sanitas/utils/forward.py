"""Forward passes that leave no trace: for the facts sanitas reads off a user's model.

Counting classes, predicting labels, checking logits: each such pass runs in eval mode (every
module's own ``training`` flag restored afterwards), without an autograd graph, and with the global
random state forked, so that a model in training mode keeps its BatchNorm running statistics and
batch count, dropout draws nothing, and the caller's ``torch.get_rng_state()`` is unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from sanitas.explain._core import eval_mode, logits_of, model_device


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, no grad and a forked RNG (CPU, and the model's CUDA device) for the block."""
    dev = model_device(model)
    devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), eval_mode(model), torch.no_grad():
        yield model


def inference_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's ``(N, K)`` logits on ``x`` from a pass that changes nothing (see :func:`untouched`)."""
    with untouched(model):
        return logits_of(model, x)
