"""How sanitas calls a user's model: which output holds the logits, extra forward arguments,
tuple inputs, and which of the user's images each row of an internal batch came from.

Models return a tensor ``(N, K)``, a tuple, a dict or a Hugging Face ``ModelOutput``
(:func:`select_logits` picks the logits where that is unambiguous; ``output=`` says which
otherwise). Captum's input contract is supported too: ``additional_forward_args`` (tensors
whose first dimension is the batch are split and repeated with the images), and tuples of
input tensors, which are packed into one ``(N, D)`` batch for the methods and unpacked before
the model sees them (:class:`Packing`).

A method evaluates the model on batches it builds itself: path points of integrated gradients,
noisy copies of SmoothGrad, passes of a few images. The context variable set by
:func:`image_rows` records which of the user's images every row of such a batch belongs to, so
per-image tensors (baselines, extra forward arguments) follow their image: :func:`per_image`.
Both context variables are reset when the call returns or raises.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sanitas.errors import ConfigError, InputError, ModelError

OutputSelector = str | int | Callable[[Any], torch.Tensor] | None


@dataclass(frozen=True)
class Packing:
    """Tuple inputs ``(x_1, ..., x_m)`` (each ``(N, ...)``) as one ``(N, D)`` batch and back."""

    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, inputs: Sequence[torch.Tensor]) -> "Packing":
        return cls(tuple(tuple(t.shape[1:]) for t in inputs))

    @property
    def sizes(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]

    def segments(self) -> list[slice]:
        out, start = [], 0
        for s in self.sizes:
            out.append(slice(start, start + s))
            start += s
        return out

    def pack(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        n = max(p.shape[0] for p in parts)
        return torch.cat([p.expand(n, *p.shape[1:]).reshape(n, -1) for p in parts], dim=1)

    def unpack(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(..., D)`` -> one ``(..., *shape_i)`` tensor per input."""
        lead = flat.shape[:-1]
        return tuple(flat[..., seg].reshape(*lead, *shape) for seg, shape in zip(self.segments(), self.shapes))


@dataclass(frozen=True)
class CallSpec:
    """What a forward pass needs besides the inputs (set by :func:`model_call`)."""

    output: OutputSelector = None
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    n: int | None = None  # images in the user's batch: tensors with this many rows are per-image
    packing: Packing | None = None
    #: facts found during this call (e.g. GradCAM's resolved layer); a fresh dict per call, never reused
    cache: dict | None = None


_SPEC: contextvars.ContextVar[CallSpec] = contextvars.ContextVar("sanitas_call_spec", default=CallSpec())
_ROWS: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("sanitas_rows", default=None)


def current_spec() -> CallSpec:
    return _SPEC.get()


@contextlib.contextmanager
def model_call(output: OutputSelector = None, additional_forward_args: Any = None, n: int | None = None,
               packing: Packing | None = None, forward_kwargs: Mapping[str, Any] | None = None) -> Iterator[CallSpec]:
    """Forward passes in this block use ``output`` to find the logits and pass the extra arguments.

    ``output``, ``additional_forward_args`` and ``forward_kwargs`` left at None keep those of an
    enclosing block (a check sets ``output`` once for all the explanations it computes).
    """
    check_output_selector(output)
    outer = _SPEC.get()
    args = additional_forward_args
    if args is None:
        args = outer.args
    elif not isinstance(args, tuple):
        args = (args,)
    spec = CallSpec(output=outer.output if output is None else output, args=args,
                    kwargs=dict(outer.kwargs if forward_kwargs is None else forward_kwargs), n=n, packing=packing,
                    cache={})
    token = _SPEC.set(spec)
    rows_token = _ROWS.set(None)
    try:
        yield spec
    finally:
        _ROWS.reset(rows_token)
        _SPEC.reset(token)


@contextlib.contextmanager
def image_rows(index: torch.Tensor) -> Iterator[None]:
    """Rows of the batch built in this block come from images ``index`` of the enclosing batch."""
    outer = _ROWS.get()
    index = index.to(torch.long)
    rows = index if outer is None else outer.to(index.device)[index]
    token = _ROWS.set(rows)
    try:
        yield
    finally:
        _ROWS.reset(token)


def call_cache() -> dict | None:
    """The current call's cache (None outside an explainer call: then nothing is cached)."""
    return _SPEC.get().cache


def per_image(t: Any) -> Any:
    """A per-image tensor (first dimension = the user's batch) indexed to the rows of the batch being
    evaluated; anything else unchanged."""
    spec = _SPEC.get()
    rows = _ROWS.get()
    if not isinstance(t, torch.Tensor) or spec.n is None or rows is None or t.dim() == 0 or t.shape[0] != spec.n:
        return t
    return t[rows.to(t.device)]


def call_model(model: nn.Module, x: torch.Tensor) -> Any:
    """Run ``model`` on ``x`` (unpacked for tuple inputs) with the extra arguments of the current spec."""
    spec = _SPEC.get()
    inputs = spec.packing.unpack(x) if spec.packing is not None else (x,)
    args = tuple(per_image(a) for a in spec.args)
    kwargs = {k: per_image(v) for k, v in spec.kwargs.items()}
    return model(*inputs, *args, **kwargs)


def check_output_selector(output: OutputSelector) -> None:
    if output is None or callable(output) or isinstance(output, (str, int)) and not isinstance(output, bool):
        return
    raise ConfigError(f"output must be None (automatic), a key or attribute name such as 'logits', a position "
                      f"in a returned tuple, or a function of the model's output; got {output!r}")


def _describe(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, Mapping) or hasattr(out, "keys"):
        return f"{type(out).__name__} with keys {list(out.keys())}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)}: " + ", ".join(
            f"[{i}] {tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__}" for i, o in enumerate(out))
    return type(out).__name__


def _pick(out: Any, output: OutputSelector) -> Any:
    if callable(output):
        return output(out)
    if isinstance(output, int):
        if not isinstance(out, (tuple, list)):
            raise ModelError(f"output={output} selects a position, but the model returned {_describe(out)}")
        if not -len(out) <= output < len(out):
            raise ModelError(f"output={output} is out of range: the model returned {_describe(out)}")
        return out[output]
    if isinstance(out, Mapping) or hasattr(out, "keys"):
        if output in out.keys():
            return out[output]
    if hasattr(out, output):
        return getattr(out, output)
    raise ModelError(f"output={output!r}: the model returned {_describe(out)}, which has no {output!r}")


def select_logits(out: Any, n: int, output: OutputSelector = None) -> torch.Tensor:
    """The ``(n, K)`` logits in a model's output.

    With ``output=None``: a tensor is the logits; a dict or ``ModelOutput`` gives its ``logits``
    entry; a tuple or list its only ``(n, K)`` floating-point entry. Anything ambiguous raises a
    :class:`ModelError` that lists what the model returned and asks for ``output=``.
    """
    if output is not None:
        out = _pick(out, output)
    elif not isinstance(out, torch.Tensor):
        if isinstance(out, Mapping) or hasattr(out, "keys"):
            keys = list(out.keys())
            if "logits" in keys:
                out = out["logits"]
            else:
                tensors = [k for k in keys if isinstance(out[k], torch.Tensor)]
                if len(tensors) != 1:
                    raise ModelError(f"the model returned {_describe(out)}; say which entry holds the logits "
                                     "with output='KEY' (or a function of the output)")
                out = out[tensors[0]]
        elif isinstance(out, (tuple, list)):
            cands = [i for i, o in enumerate(out) if isinstance(o, torch.Tensor) and o.dim() == 2
                     and o.shape[0] == n and o.is_floating_point()]
            if len(cands) != 1:
                raise ModelError(f"the model returned {_describe(out)}; "
                                 + ("none of them is" if not cands else f"{len(cands)} of them are")
                                 + f" (N, K) logits for N={n} inputs. Say which with output=INDEX "
                                 "(or a function of the output)")
            out = out[cands[0]]
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != n:
        raise ModelError(f"the model must return logits of shape (N, K) for N={n} inputs; it returned "
                         f"{_describe(out)}. Pick them with output= (a key, an index or a function), or wrap the "
                         "model so that forward returns one (N, K) tensor")
    if not out.is_floating_point():
        raise ModelError(f"the model's logits have dtype {out.dtype}; they must be floating point")
    return out


def pack_inputs(x: Any) -> tuple[torch.Tensor, Packing | None]:
    """A tensor as it is, or a tuple/list of tensors with one batch size packed into ``(N, D)``."""
    if isinstance(x, torch.Tensor):
        return x, None
    if isinstance(x, (tuple, list)) and x and all(isinstance(t, torch.Tensor) for t in x):
        n = {t.shape[0] if t.dim() else None for t in x}
        if len(n) != 1 or None in n:
            raise InputError("tuple inputs must all have the same batch size as their first dimension; got shapes "
                             + ", ".join(str(tuple(t.shape)) for t in x))
        if not all(t.is_floating_point() for t in x):
            raise InputError("every input of a tuple must be a floating-point tensor (explanations are gradients "
                             "with respect to them); pass integer inputs through additional_forward_args")
        if len(x) == 1:
            return x[0], None
        packing = Packing.of(x)
        return packing.pack([t.detach() for t in x]), packing
    raise InputError(f"inputs must be a tensor or a tuple of tensors, got {type(x).__name__}")
