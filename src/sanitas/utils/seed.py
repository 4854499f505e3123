"""Seeding without touching the caller's global random state."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A private torch generator; never reseeds the global RNG."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def numpy_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(int(seed))


@contextlib.contextmanager
def isolated_rng(seed: int, devices: list | None = None) -> Iterator[None]:
    """Run a block with the global torch RNG seeded to ``seed``, then restore it.

    For code we do not control (module initialisers, dropout) that draws from the global
    generator. The caller's random state is exactly as before when the block exits.
    """
    if devices is None:
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield
