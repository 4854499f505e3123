"""Similarity metrics by name: ``get_similarity("ssim", window=7)``.

The registry maps a metric's name to its class; :func:`get_similarity` instantiates it with the
given options (checked against the constructor, unknown options raise
:class:`~sanitas.errors.ConfigError` with a did-you-mean). A metric object or a user's own
function ``f(a, b, x)`` is accepted wherever a name is.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

import torch

from sanitas.errors import ConfigError, InputError
from sanitas.registry import Registry
from sanitas.similarity.base import Similarity, work_dtype

__all__ = ["SIMILARITIES", "get_similarity", "register_similarity", "similarity_names", "FunctionSimilarity"]

#: name -> Similarity subclass
SIMILARITIES: Registry[type[Similarity]] = Registry("similarity metric")


def register_similarity(cls: type[Similarity]) -> type[Similarity]:
    """Class decorator: register a :class:`Similarity` subclass under its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    SIMILARITIES.register(cls.name, cls)
    return cls


def similarity_names() -> list[str]:
    return SIMILARITIES.names()


def _option_names(cls: type) -> list[str]:
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _check_options(cls: type[Similarity], options: dict[str, Any]) -> None:
    valid = _option_names(cls)
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            listed = ", ".join(valid) if valid else "none"
            raise ConfigError(f"metric {cls.name!r} has no option {key!r}.{hint} Its options: {listed}.")


class FunctionSimilarity(Similarity):
    """A user's function ``f(a, b, x) -> Tensor[N]`` wrapped in the metric contract."""

    symmetric = False

    def __init__(self, fn: Callable, name: str | None = None, higher_is_more_similar: bool = True):
        super().__init__()
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)  # type: ignore[misc]
        self.description = (getattr(fn, "__doc__", None) or "user-supplied similarity").strip().splitlines()[0]
        self.higher_is_more_similar = higher_is_more_similar  # type: ignore[misc]
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}
        self._takes_baseline = "baseline" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())

    def _score(self, a, b, x, baseline):
        out = self.fn(a, b, x, baseline=baseline) if self._takes_baseline else self.fn(a, b, x)
        out = torch.as_tensor(out, device=a.device)
        if out.shape != (a.shape[0],):
            raise InputError(f"similarity function {self.name!r} returned shape {tuple(out.shape)}; "
                             f"it must return one score per image, shape ({a.shape[0]},)")
        return out.to(work_dtype(a.device))

    def __repr__(self) -> str:
        return f"FunctionSimilarity({self.name!r})"


def get_similarity(metric: str | Similarity | Callable, **options: Any) -> Similarity:
    """A metric object from a registry name, a metric object, or a function ``f(a, b, x)``.

    ``get_similarity("ssim", window=7, gaussian=True)``; names ignore case and ``-``/``_``.
    Passing options with a metric object returns a copy with those options changed.
    """
    if isinstance(metric, Similarity):
        if not options:
            return metric
        cls = type(metric)
        _check_options(cls, options)
        return cls(**{**metric.options, **options})
    if isinstance(metric, str):
        cls = SIMILARITIES.get(metric)
        _check_options(cls, options)
        return cls(**options)
    if callable(metric):
        if options:
            raise ConfigError("options can only be given with a metric name or a sanitas metric object, not with "
                              "a plain function; bind them in the function (e.g. functools.partial)")
        return FunctionSimilarity(metric)
    raise ConfigError(f"a similarity metric is a name ({', '.join(similarity_names())}), a sanitas metric object, "
                      f"or a function f(a, b, x); got {type(metric).__name__}")
