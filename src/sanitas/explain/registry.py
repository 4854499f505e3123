"""Registry of attribution methods, name parsing and ``explain``.

Method names may carry arguments in parentheses, so one string names a fully configured method
(on the command line, in configs and in result tables)::

    gradient                              a registered name
    competitive(input_x_gradient)         a wrapper and the method it wraps (positional)
    smoothgrad(gradient, samples=10)      ... plus options of the wrapper
    activity(layer=features.conv2)        options of a plain method: key=value
    activity(layers=[conv1, conv2], aggregate=top-1)   a list value in brackets

Arguments are separated by top-level commas (commas inside nested ``()`` or ``[]`` belong to
the inner item). A value is read as: ``[a, b]`` a list of values; an integer; a float;
``true``/``false``/``none`` (any case); a quoted ``'string'`` or ``"string"``; anything else
is the bare string (layer names such as ``stages.stage1.block1.bn1`` need no quotes). At most one
positional argument, and only for wrappers (it is the wrapped method, itself parsed the same way).
Options given both in the name and as keyword arguments of :func:`get_explainer` are an error.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from sanitas.errors import ConfigError
from sanitas.explain.base import CallableExplainer, Explainer
from sanitas.registry import Registry

EXPLAINERS: Registry[type[Explainer]] = Registry("method")
#: method names that wrap another method: ``name(inner)``.
WRAPPERS: set[str] = set()

_CALL = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*\((.*)\)\s*$", re.DOTALL)
_KEY = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$", re.DOTALL)


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split ``text`` at ``sep`` outside of ``()`` and ``[]``; items stripped, empty ones dropped.

    Raises :class:`ConfigError` on unbalanced brackets.
    """
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == sep and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"unbalanced brackets in {text!r}")
        cur += ch
    if depth != 0:
        raise ConfigError(f"unbalanced brackets in {text!r}")
    out.append(cur.strip())
    return [o for o in out if o]


def parse_value(text: str) -> Any:
    """One option value of a method name (see the module docstring)."""
    t = text.strip()
    if t.startswith("[") and t.endswith("]"):
        return [parse_value(v) for v in split_top_level(t[1:-1])]
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1]
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    return t


def parse_method(text: str) -> tuple[str, str | None, dict[str, Any]]:
    """``"name(inner, k=v, ...)"`` -> ``(name, inner or None, {k: v})``; a bare name -> ``(name, None, {})``."""
    m = _CALL.match(text)
    if not m:
        return text.strip(), None, {}
    name, inner, options = m.group(1), None, {}
    for item in split_top_level(m.group(2)):
        kv = _KEY.match(item)
        if kv and not _CALL.match(item):
            key = kv.group(1)
            if key in options:
                raise ConfigError(f"option {key!r} given twice in method name {text!r}")
            if not kv.group(2).strip():
                raise ConfigError(f"option {key!r} has no value in method name {text!r}; write {key}=VALUE")
            options[key] = parse_value(kv.group(2))
        elif inner is None:
            inner = item
        else:
            raise ConfigError(f"method name {text!r} has more than one positional argument ({inner!r}, {item!r}); "
                              "options are written key=value")
    return name, inner, options


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
        outer, inner, named = parse_method(method)
        clash = sorted(set(named) & set(options))
        if clash:
            raise ConfigError(f"option(s) {clash} given both in the method name {method!r} and as keyword arguments")
        name = EXPLAINERS.canonical(outer)
        if inner is not None:
            if name not in WRAPPERS:
                raise ConfigError(f"{name!r} does not wrap another method (got positional argument {inner!r}); "
                                  f"wrappers: {sorted(WRAPPERS)}; options of {name!r} are written key=value, "
                                  f"e.g. {name}(option=value)")
            named["base"] = inner
        return EXPLAINERS.get(name)(**named, **options)
    if callable(method) or hasattr(method, "attribute"):
        if options:
            raise ConfigError("options cannot be passed to a user-supplied explanation function")
        return CallableExplainer(method)
    raise ConfigError(f"cannot use {method!r} as an attribution method: give a registered name "
                      f"({', '.join(EXPLAINERS.names())}), an Explainer, or a function f(model, x, target)")


def explain(model: nn.Module, x, target="predicted", method: Any = "gradient", *, output=None,
            additional_forward_args=None, **options: Any):
    """Attribution maps shaped like ``x`` (``(N, K, ...)`` for ``target="all"``; a tuple of maps
    for a tuple of inputs).

    ``output`` picks the logits from what the model returns when that is ambiguous (a key, an
    index or a function); ``additional_forward_args`` are passed to the model after the inputs.

    >>> maps = explain(model, x, y, method="integrated_gradients", steps=64)
    """
    return get_explainer(method, **options)(model, x, target, output=output,
                                            additional_forward_args=additional_forward_args)


def list_methods() -> list[tuple[str, str]]:
    from sanitas.registry import describe

    return [(name, describe(cls)) for name, cls in EXPLAINERS.items()]
