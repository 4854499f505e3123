"""Registry of attribution methods, name parsing (``smoothgrad(guided_backprop)``) and ``explain``."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from sanitas.errors import ConfigError
from sanitas.explain.base import CallableExplainer, Explainer
from sanitas.registry import Registry

EXPLAINERS: Registry[type[Explainer]] = Registry("method")
#: method names that wrap another method: ``name(inner)``.
WRAPPERS: set[str] = set()

_CALL = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*\((.*)\)\s*$")


def register(cls: type[Explainer], aliases: tuple[str, ...] = (), wrapper: bool = False) -> type[Explainer]:
    EXPLAINERS.register(cls.name, cls, aliases=aliases)
    if wrapper:
        WRAPPERS.add(cls.name)
    return cls


def get_explainer(method: Any, **options: Any) -> Explainer:
    """An :class:`Explainer` from a name, a nested name (``"smoothgrad(guided_backprop)"``), an
    Explainer (instance or class), a user's callable ``f(model, x, target)`` or a Captum object."""
    if isinstance(method, Explainer):
        if options:
            raise ConfigError("options cannot be applied to an Explainer instance; build a new one instead")
        return method
    if isinstance(method, type) and issubclass(method, Explainer):
        return method(**options)
    if isinstance(method, str):
        m = _CALL.match(method)
        if m:
            outer, inner = m.group(1), m.group(2)
            name = EXPLAINERS.canonical(outer)
            if name not in WRAPPERS:
                raise ConfigError(f"{name!r} does not wrap another method; wrappers: {sorted(WRAPPERS)}")
            return EXPLAINERS.get(name)(base=inner.strip(), **options)
        return EXPLAINERS.get(method)(**options)
    if callable(method) or hasattr(method, "attribute"):
        if options:
            raise ConfigError("options cannot be passed to a user-supplied explanation function")
        return CallableExplainer(method)
    raise ConfigError(f"cannot use {method!r} as an attribution method: give a registered name "
                      f"({', '.join(EXPLAINERS.names())}), an Explainer, or a function f(model, x, target)")


def explain(model: nn.Module, x: torch.Tensor, target="predicted", method: Any = "gradient",
            **options: Any) -> torch.Tensor:
    """Attribution maps shaped like ``x`` (``(N, K, C, H, W)`` for ``target="all"``).

    >>> maps = explain(model, x, y, method="integrated_gradients", steps=64)
    """
    return get_explainer(method, **options)(model, x, target)


def list_methods() -> list[tuple[str, str]]:
    from sanitas.registry import describe

    return [(name, describe(cls)) for name, cls in EXPLAINERS.items()]
