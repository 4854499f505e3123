"""The :class:`Dataset` container every loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from sanitas.errors import DataFormatError
from sanitas.utils import validation


@dataclass(frozen=True)
class Dataset:
    """Images ``x`` as float32 ``(N, C, H, W)`` in [0, 1] and integer labels ``y`` ``(N,)``.

    ``classes`` names each label; ``source`` says where the data was read from.
    """

    name: str
    split: str
    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...]
    source: str
    info: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        x, y = self.x, self.y
        if x.ndim != 4:
            raise DataFormatError(f"dataset {self.name!r}: images must be (N, C, H, W), got shape {tuple(x.shape)}")
        if x.dtype != torch.float32:
            raise DataFormatError(f"dataset {self.name!r}: images must be float32, got {x.dtype}")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise DataFormatError(f"dataset {self.name!r}: {x.shape[0]} images but labels of shape {tuple(y.shape)}")
        if y.dtype != torch.int64:
            raise DataFormatError(f"dataset {self.name!r}: labels must be int64, got {y.dtype}")
        if x.numel() and (not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1):
            raise DataFormatError(f"dataset {self.name!r}: image values must be finite and in [0, 1]")
        if y.numel() and (y.min() < 0 or y.max() >= len(self.classes)):
            raise DataFormatError(f"dataset {self.name!r}: labels must be in [0, {len(self.classes)}), "
                                  f"got range [{int(y.min())}, {int(y.max())}]")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def take(self, n: int | None) -> Dataset:
        """The first ``n`` examples (all when ``n`` is None)."""
        if n is None:
            return self
        n = validation.count(n, "number of images")
        if n >= len(self):
            return self
        return replace(self, x=self.x[:n], y=self.y[:n])

    def sample(self, n: int | None, seed: int = 0) -> Dataset:
        """A seeded random subset of ``n`` examples, in a fixed order (all when ``n`` is None)."""
        if n is None:
            return self
        n = validation.count(n, "number of images")
        seed = validation.seed(seed)
        if n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n].sort().values
        return replace(self, x=self.x[idx], y=self.y[idx], info={**self.info, "indices": idx.tolist()})

    def describe(self) -> str:
        c, h, w = self.input_shape
        return f"{self.name}/{self.split}: {len(self)} images {c}x{h}x{w}, {self.num_classes} classes, from {self.source}"
