"""Layer discovery: a model's parameterized layers in the order a forward pass runs them.

Registration order (``model.named_modules()``) is not execution order: a model's ``__init__``
may create its classifier before its features, or a ResNet block may register its shortcut
last although it runs it in parallel with the main branch. The model parameter randomization
test is defined top layer first, so sanitas traces one forward pass instead:

* forward pre-hooks and hooks on every module record when each module is called and the shape
  of what it returns;
* a ``TorchFunctionMode`` records the first torch operation that reads each parameter, so a
  layer is placed where its weights act, including parameters a parent uses functionally
  without calling the child module (``nn.MultiheadAttention`` uses ``out_proj.weight`` this way).

A layer is any module with parameters of its own (``recurse=False``): Conv, Linear, BatchNorm,
LayerNorm, embeddings, PReLU, a user's module holding an ``nn.Parameter``. A module called
twice appears once, at its first use. A parameter shared by two modules (tied weights) belongs
to the first module that uses it; a module left with no parameters of its own is not a layer.
Parameterized modules the forward pass never uses (an auxiliary head that only runs in
training mode) do not affect the output; they are left out with a warning. A BatchNorm
without affine parameters (``affine=False``) has no parameters and is not a layer: its running
statistics are not trainable variables, which is what the paper re-initializes.

The trace runs under ``torch.no_grad()`` with the model in eval mode and the global RNG forked;
every hook is removed and every module's ``training`` flag restored afterwards, so the model
(and the caller's random state) is exactly as before.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from sanitas.errors import ModelError
from sanitas.explain._core import eval_mode, model_device


@dataclass(frozen=True)
class LayerInfo:
    """One parameterized layer of a model.

    name: dotted module path (``""`` for the model itself), as in ``model.get_submodule(name)``.
    type: the module's class name.
    n_params: number of scalar parameters the layer owns (its direct parameters, not its children's).
    output_shape: shape of the module's output in the traced pass (a tuple of shapes for several
        tensors; ``None`` when its parameters were used without calling the module).
    index: position in forward order, from 0 (closest to the input).
    param_names: the direct parameters this layer owns (the ones randomization changes).
    """

    name: str
    type: str
    n_params: int
    output_shape: tuple | None
    index: int
    param_names: tuple[str, ...] = ()


class _ParamUse(TorchFunctionMode):
    """Records, for each watched parameter, the event number of the first op that reads it."""

    def __init__(self, watched: dict[int, nn.Parameter], clock: list[int], first_use: dict[int, int]):
        super().__init__()
        self.watched = watched
        self.clock = clock
        self.first_use = first_use

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") == "__get__":  # attribute reads (p.shape, p.device) do not compute
            return func(*args, **kwargs)
        for leaf in tree_leaves((args, kwargs)):
            if isinstance(leaf, torch.Tensor):
                key = id(leaf)
                if key in self.watched and key not in self.first_use:
                    self.first_use[key] = self.clock[0]
                    self.clock[0] += 1
        return func(*args, **kwargs)


def _shape_of(out: Any) -> tuple | None:
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    shapes = tuple(tuple(t.shape) for t in tree_leaves(out) if isinstance(t, torch.Tensor))
    if not shapes:
        return None
    return shapes[0] if len(shapes) == 1 else shapes


def run_model(model: nn.Module, example_input: Any) -> Any:
    """Call ``model`` on an example: a tensor, a tuple/list of positional inputs, or a dict of keywords."""
    if isinstance(example_input, Mapping):
        return model(**example_input)
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    return model(example_input)


def _to_device(example_input: Any, device: torch.device | None) -> Any:
    if device is None:
        return example_input
    if isinstance(example_input, torch.Tensor):
        return example_input.to(device)
    if isinstance(example_input, Mapping):
        return {k: _to_device(v, device) for k, v in example_input.items()}
    if isinstance(example_input, (tuple, list)):
        return type(example_input)(_to_device(v, device) for v in example_input)
    return example_input


def discover_layers(model: nn.Module, example_input: Any) -> list[LayerInfo]:
    """The parameterized layers of ``model`` in the order a forward pass on ``example_input`` uses them.

    ``example_input`` is what the model is called with (a batch of one is enough): a tensor, a
    tuple of positional inputs, or a dict of keyword inputs; tensors are moved to the model's
    device. The model is not changed, and neither is the caller's global random state.

    Raises :class:`ModelError` for a model without parameters, with uninitialised lazy
    parameters, or when the forward pass fails.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        raise ModelError(f"{type(model).__name__} is a TorchScript module: its layers cannot be traced with hooks, "
                         "nor re-initialized as modules. Give the eager model (a pickled module or "
                         "module:Class@weights) to randomize it")
    named = list(model.named_modules())
    if not any(True for _ in model.parameters()):
        raise ModelError(
            f"{type(model).__name__} has no parameters, so there are no weights to randomize. The model "
            "parameter randomization test needs a model with trainable layers (Conv, Linear, BatchNorm, ...)")
    lazy = [n for n, p in model.named_parameters() if nn.parameter.is_lazy(p)]
    if lazy:
        raise ModelError(f"{type(model).__name__} has uninitialised lazy parameters ({', '.join(lazy[:5])}); "
                         "run one forward pass on real data before randomizing it")
    # Candidate layers: modules with parameters of their own (recurse=False).
    owned: list[tuple[str, nn.Module, list[tuple[str, nn.Parameter]]]] = [
        (name, m, list(m.named_parameters(recurse=False))) for name, m in named]
    owned = [(n, m, ps) for n, m, ps in owned if ps]

    clock = [0]
    first_call: dict[int, int] = {}
    shapes: dict[int, tuple | None] = {}
    first_use: dict[int, int] = {}
    watched = {id(p): p for _, _, ps in owned for _, p in ps}

    def pre_hook(mod, _args):
        if id(mod) not in first_call:
            first_call[id(mod)] = clock[0]
            clock[0] += 1

    def post_hook(mod, _args, out):
        if id(mod) not in shapes:
            shapes[id(mod)] = _shape_of(out)

    handles = []
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        for _, m in named:
            handles.append(m.register_forward_pre_hook(pre_hook))
            handles.append(m.register_forward_hook(post_hook))
        example_input = _to_device(example_input, model_device(model, default=None))  # before tracing starts
        # fork_rng: a forward pass that samples (noise layers) must not move the caller's RNG.
        with eval_mode(model), torch.random.fork_rng(devices=cuda), torch.no_grad(), \
                _ParamUse(watched, clock, first_use):
            try:
                run_model(model, example_input)
            except Exception as e:  # noqa: BLE001 - re-raised with context
                raise ModelError(
                    f"the forward pass of {type(model).__name__} on the example input failed "
                    f"({type(e).__name__}: {e}). Pass an input the model accepts, e.g. one image shaped "
                    "(1, C, H, W)") from e
    finally:
        for h in handles:
            h.remove()

    # A layer sits where its weights first act. Parameters shared by several modules (tied
    # weights) do not decide the position, unless a module has nothing else.
    owners: dict[int, int] = {}
    for _, _, ps in owned:
        for _, p in ps:
            owners[id(p)] = owners.get(id(p), 0) + 1

    def order_key(entry) -> int | None:
        _, m, ps = entry
        uses = [first_use[id(p)] for _, p in ps if id(p) in first_use and owners[id(p)] == 1]
        if uses:
            return min(uses)
        if id(m) in first_call:
            return first_call[id(m)]
        uses = [first_use[id(p)] for _, p in ps if id(p) in first_use]
        return min(uses) if uses else None

    keyed = [(order_key(e), i, e) for i, e in enumerate(owned)]
    unused = [e[0] or "(model)" for k, _, e in keyed if k is None]
    keyed = sorted(((k, i, e) for k, i, e in keyed if k is not None), key=lambda t: (t[0], t[1]))
    if unused:
        warnings.warn(
            f"{len(unused)} parameterized module(s) were not used in the forward pass and will not be "
            f"randomized: {', '.join(unused[:10])}{' ...' if len(unused) > 10 else ''}", stacklevel=2)

    # Each parameter belongs to the first layer (in forward order) that has it.
    claimed: set[int] = set()
    layers: list[LayerInfo] = []
    for _, _, (name, m, ps) in keyed:
        mine = [(pn, p) for pn, p in ps if id(p) not in claimed]
        claimed.update(id(p) for _, p in mine)
        if not mine:
            continue
        layers.append(LayerInfo(name=name, type=type(m).__name__, n_params=sum(p.numel() for _, p in mine),
                                output_shape=shapes.get(id(m)), index=len(layers),
                                param_names=tuple(pn for pn, _ in mine)))
    if not any(l.n_params for l in layers):
        raise ModelError(f"none of the parameters of {type(model).__name__} is used in its forward pass, so "
                         "randomizing them cannot change anything")
    return layers


def _fmt_shape(shape: tuple | None) -> str:
    if shape is None:
        return "-"
    if shape and isinstance(shape[0], tuple):
        return " ".join(_fmt_shape(s) for s in shape)
    return "(" + ", ".join(str(s) for s in shape) + ")"


def format_layers(model: nn.Module, example_input: Any, blocks: Any = None) -> str:
    """A table of ``model``'s parameterized layers in forward order (for ``sanitas layers MODEL``).

    Columns: index, name, type, parameters, output shape and block (see :func:`group_layers`
    for ``blocks``). A last line gives the totals and the randomization order.
    """
    from sanitas.randomize.blocks import group_layers

    layers = discover_layers(model, example_input)
    groups = group_layers(layers, blocks, model)
    block_of = {n: b.name for b in groups for n in b.layer_names}
    header = ("#", "name", "type", "params", "output shape", "block")
    rows = [(str(l.index), l.name or "(model)", l.type, f"{l.n_params:,}", _fmt_shape(l.output_shape),
             block_of[l.name] or "(model)") for l in layers]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    right = {0, 3}

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    total = sum(l.n_params for l in layers)
    out = [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]
    out.append(f"{len(layers)} layers, {len(groups)} blocks, {total:,} parameters. Forward order shown "
               "(input first); cascading top_down randomizes from the last block up.")
    return "\n".join(out)
