"""Grouping layers into blocks: the units that one randomization stage changes together.

The paper randomizes its CNN and MLP layer by layer and Inception v3 block by block (17 phases,
one per ``Mixed_*`` block and the stem layers). ``blocks`` says how to group:

``None``
    every layer is its own block (the default).
``"auto"``
    the model's repeated blocks: each child of a ``ModuleList``/``Sequential`` whose children repeat
    one class (a transformer layer ``vit.layers.3``, a residual block ``layer2.1``) is one block,
    the shallowest such child a layer lies in; layers outside them (stem, embeddings, head) stay
    blocks of their own. Needs the model (``group_layers(..., model=model)``).
``"prefix:N"``
    layers whose dotted names agree in the first ``N`` components form a block: on
    ``resnet-small``, ``"prefix:2"`` makes ``stages.stage1``, ``stages.stage2``, ... blocks and
    keeps ``stem.conv``, ``stem.bn`` and ``output`` (names shorter than ``N``) as they are.
``["stages.stage1", "stages.stage2"]`` (or ``"stages.stage1,stages.stage2"``)
    each entry is a module-name prefix; the layers at or under that module form one block,
    named by the prefix. A layer name is a prefix of itself.
``[["conv1", "conv2"], ["fc1", "output"]]``
    each inner list is one block, the union of its prefixes, named ``"conv1+conv2"``.
``{"features": ["conv1", "conv2"], "head": ["fc1", "output"]}``
    the same with chosen names.

Layers that no entry mentions stay blocks of their own, so a stage sequence always ends with
the whole model randomized. A prefix matching no layer raises :class:`UnknownNameError`
listing the valid names; a layer claimed by two entries raises :class:`ConfigError`. Blocks are
ordered by their first layer in forward order (a block need not be contiguous, but usually is).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sanitas.errors import ConfigError, UnknownNameError
from sanitas.randomize.layers import LayerInfo

ROOT = "(model)"  # how the model's own parameters (module name "") are shown and addressed


@dataclass(frozen=True)
class Block:
    """A group of layers randomized together. ``index`` is the block's position in forward order."""

    name: str
    index: int
    layers: tuple[LayerInfo, ...]

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(l.name for l in self.layers)

    @property
    def n_params(self) -> int:
        return sum(l.n_params for l in self.layers)


def display_name(name: str) -> str:
    return name if name else ROOT


def _matches(layer: str, prefix: str) -> bool:
    if prefix in ("", ROOT):
        return layer == ""
    return layer == prefix or layer.startswith(prefix + ".")


def _valid_prefixes(layers: Sequence[LayerInfo]) -> list[str]:
    out: dict[str, None] = {}
    for l in layers:
        if not l.name:
            out[ROOT] = None
            continue
        parts = l.name.split(".")
        for i in range(1, len(parts) + 1):
            out[".".join(parts[:i])] = None
    return list(out)


def _unknown(prefix: str, layers: Sequence[LayerInfo]) -> UnknownNameError:
    valid = _valid_prefixes(layers)
    close = difflib.get_close_matches(prefix, valid, n=3, cutoff=0.6)
    last = prefix.rsplit(".", 1)[-1]
    close += [v for v in valid if v.rsplit(".", 1)[-1] == last and v not in close]
    hint = f" Did you mean {' or '.join(repr(c) for c in close[:3])}?" if close else ""
    shown = ", ".join(valid[:40]) + (f", ... ({len(valid) - 40} more)" if len(valid) > 40 else "")
    return UnknownNameError(f"no layer is named {prefix!r} or lies under a module of that name.{hint} "
                            f"Valid layer and module names (see `sanitas layers MODEL`): {shown}.")


def _parse_prefix_depth(spec: str) -> int:
    try:
        n = int(spec.split(":", 1)[1])
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"bad blocks {spec!r}: use 'prefix:N' with N a positive integer, e.g. 'prefix:2'")
    return n


def _named_groups(blocks) -> list[tuple[str, list[str]]]:
    """Normalise every accepted ``blocks`` form (except None and 'prefix:N') to (name, prefixes)."""
    if isinstance(blocks, str):
        blocks = [b.strip() for b in blocks.split(",") if b.strip()]
    if isinstance(blocks, Mapping):
        items = list(blocks.items())
        out = []
        for name, prefixes in items:
            if isinstance(prefixes, str):
                prefixes = [prefixes]
            out.append((str(name), [str(p) for p in prefixes]))
        return out
    if not isinstance(blocks, Sequence) or not blocks:
        raise ConfigError(f"bad blocks {blocks!r}: use None, 'prefix:N', a list of module-name prefixes, "
                          "a list of lists of layer names, or a dict {block name: [layer names]}")
    out = []
    for entry in blocks:
        if isinstance(entry, str):
            out.append((entry, [entry]))
        elif isinstance(entry, Sequence) and entry and all(isinstance(e, str) for e in entry):
            out.append(("+".join(entry), list(entry)))
        else:
            raise ConfigError(f"bad block {entry!r}: each block is a module-name prefix or a non-empty list of them")
    return out


def repeated_blocks(model) -> list[str]:
    """Module names of the model's repeated blocks (see ``"auto"`` in the module docs), outermost first."""
    from torch import nn

    found: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        children = [(n, c) for n, c in module.named_children() if any(True for _ in c.parameters())]
        kinds = [type(c) for _, c in children]
        repeated = {k for k in kinds if kinds.count(k) > 1}
        for n, c in children:
            full = f"{name}.{n}" if name else n
            if type(c) in repeated and not any(full.startswith(f + ".") for f in found):
                found.append(full)
    return found


def group_layers(layers: Sequence[LayerInfo], blocks=None, model=None) -> list[Block]:
    """Group ``layers`` (from :func:`discover_layers`) into blocks; see the module docs for ``blocks``."""
    layers = list(layers)
    if isinstance(blocks, str) and blocks.strip() == "auto":
        if model is None:
            raise ConfigError("blocks='auto' groups by the model's repeated modules: pass model= to group_layers")
        names = {l.name for l in layers}
        blocks = [b for b in repeated_blocks(model) if any(n == b or n.startswith(b + ".") for n in names)] or None
    if blocks is None:
        groups = [(display_name(l.name), [l]) for l in layers]
    elif isinstance(blocks, str) and blocks.strip().startswith("prefix:"):
        depth = _parse_prefix_depth(blocks.strip())
        by_key: dict[str, list[LayerInfo]] = {}
        for l in layers:
            key = ".".join(l.name.split(".")[:depth]) if l.name else ROOT
            by_key.setdefault(key, []).append(l)
        groups = list(by_key.items())
    else:
        owner: dict[str, str] = {}
        members: dict[str, list[LayerInfo]] = {}
        for name, prefixes in _named_groups(blocks):
            if name in members:
                raise ConfigError(f"block {name!r} is given twice")
            members[name] = []
            for prefix in prefixes:
                hit = [l for l in layers if _matches(l.name, prefix)]
                if not hit:
                    raise _unknown(prefix, layers)
                for l in hit:
                    if l.name in owner and owner[l.name] != name:
                        raise ConfigError(f"layer {display_name(l.name)!r} is in two blocks, {owner[l.name]!r} and "
                                          f"{name!r}; each layer may belong to one block only")
                    if l.name not in owner:
                        owner[l.name] = name
                        members[name].append(l)
        for l in layers:
            if l.name not in owner:
                if display_name(l.name) in members:
                    raise ConfigError(f"block name {display_name(l.name)!r} is also the name of a layer outside it")
                members[display_name(l.name)] = [l]
        groups = list(members.items())
    groups = [(n, sorted(ls, key=lambda l: l.index)) for n, ls in groups]
    groups.sort(key=lambda g: g[1][0].index)
    return [Block(name=n, index=i, layers=tuple(ls)) for i, (n, ls) in enumerate(groups)]
