"""Modified back-propagation rules, applied to every operation the model runs on its input.

A :class:`RuleMode` is a ``TorchFunctionMode``: while it is active, every torch function the
model calls passes through it, whether it comes from a module (reused or ``inplace=True``), a
functional call in ``forward`` or a tensor method. The mode follows which tensors derive from
the explained input (*activations*; parameters and constants do not count) and sorts every
operation on them into one of the classes below. Each method states what it does with each
class, and an operation its rules do not cover raises :class:`~sanitas.errors.UnsupportedLayerError`
naming the operation and the module it was called from: never a silently different method.

See :mod:`sanitas.explain.op_classes` for the classes and the operations in each.

Rules per method:

* guided backprop / deconvnet: their rule at every ReLU; the gradient through linear, affine,
  max-pooling, selection and one-activation products. Any other non-linearity raises.
* LRP (epsilon, z+, alpha-beta): the gradient through ReLUs and max-pooling (winner takes all);
  the layer rule at linear layers; the epsilon stabiliser at affine operations. Transformer
  blocks follow conservative propagation (Ali et al. 2022, "XAI for Transformers: Better
  Explanations through Conservative Propagation"; Achtibat et al. 2024, "AttnLRP"):
  normalisation with its statistics held constant, attention probabilities held constant
  (softmax, ``scaled_dot_product_attention``), the identity rule at element-wise activations
  (relevance passes unchanged), and the uniform rule at products of two activations (each
  factor gets half). With these rules relevance is conserved layer by layer up to biases.
* DeepLIFT (Rescale): the multiplier (f(x) - f(r)) / (x - r) at every ReLU and element-wise
  non-linearity, max-pooling split between the winners of input and reference; anything else
  non-linear (normalisation, softmax, products of activations) raises.

The autograd functions behind the rules are in :mod:`sanitas.explain.rule_functions`, the
transformer rules in :mod:`sanitas.explain.transformer_rules`.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from sanitas.errors import UnsupportedLayerError
from sanitas.explain._core import check_hookable
from sanitas.explain.op_classes import (AFFINE, ATTENTION, BATCH_NORM, DIVISION, ELEMENTWISE, GRADIENT_METHODS,
                                        INPLACE_RELU, LINEAR, MAXPOOL, NORM, PRODUCT, RDIVISION, RELU, SELECT,
                                        SOFTMAX, STRUCTURAL, WITH_INDICES, fname, is_inplace)
from sanitas.explain.rule_functions import (DeconvReLU, EpsScale, GuidedReLU, MaxPoolDeepLift, Rescale,
                                            elementwise_derivative, inplace_result, scale_grad, with_gradient)
from sanitas.explain.transformer_rules import attention_constant_probs, multi_head_attention, norm_constant_scale


class RuleMode(TorchFunctionMode):
    """Intercept the model's torch calls and apply a method's propagation rules.

    Parameters
    ----------
    method: name used in error messages.
    relu: ``"guided"``, ``"deconv"``, ``"gradient"`` (plain) or ``"rescale"`` (DeepLIFT).
    linear: ``None`` (plain gradient), or a callable ``(func, args, kwargs, out, mode) -> out`` applied to
        conv/linear calls (LRP rules).
    affine_eps: if set, LRP: the epsilon stabiliser on affine operations and the transformer
        rules (see the module docstring).
    reference: for ``relu="rescale"``: a :class:`ReferenceRecord` of the baseline's forward pass.
    record: a :class:`ReferenceRecord` to fill (the baseline pass of DeepLIFT).
    """

    def __init__(self, method: str, relu: str = "gradient", linear: Callable | None = None,
                 affine_eps: float | None = None, reference: "ReferenceRecord | None" = None,
                 record: "ReferenceRecord | None" = None):
        super().__init__()
        self.method = method
        self.relu = relu
        self.linear = linear
        self.affine_eps = affine_eps
        self.reference = reference
        self.record = record
        self.module_stack: list[str] = []
        self._acts: dict[int, weakref.ref] = {}  # id -> weak reference, for the activations

    @property
    def lrp(self) -> bool:
        return self.affine_eps is not None

    @property
    def rescale(self) -> bool:
        return self.relu == "rescale" or self.record is not None

    def mark(self, x: torch.Tensor) -> torch.Tensor:
        """Declare ``x`` the explained input: what derives from it is an activation."""
        self._acts[id(x)] = weakref.ref(x)
        return x

    def _is_act(self, t) -> bool:
        if not isinstance(t, torch.Tensor):
            return False
        ref = self._acts.get(id(t))
        return ref is not None and ref() is t

    # -- error helpers ---------------------------------------------------------------------
    def _where(self) -> str:
        return self.module_stack[-1] if self.module_stack else "the model's forward"

    def _unsupported(self, func, why: str = "") -> UnsupportedLayerError:
        return UnsupportedLayerError(
            f"{self.method} has no rule for {fname(func)} (called in {self._where()!r}){': ' + why if why else ''}. "
            f"Its rules cover {self._covers()}; a different rule would silently make it a different method. "
            f"Methods that work on any differentiable model: {GRADIENT_METHODS}; `sanitas methods --model MODEL` "
            "lists what works on yours")

    def _covers(self) -> str:
        if self.rescale:
            return "ReLU and element-wise non-linearities, max-pooling, and linear layers"
        if self.lrp:
            return ("ReLU networks and transformer blocks (linear/conv layers, pooling, normalisation, attention, "
                    "element-wise activations)")
        return "ReLU networks (linear/conv layers, pooling, batch norm); other non-linearities have no guided rule"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        acts = [t for t in leaves if self._is_act(t)]
        if not acts:
            return func(*args, **kwargs)  # no activation involved: parameters, constants, shapes
        if getattr(func, "__name__", "") == "__get__":
            out = func(*args, **kwargs)  # attribute reads: .shape, .T (a view)
        else:
            out = self._dispatch(func, args, kwargs, acts)
        recording = torch.is_grad_enabled()
        for t in tree_leaves(out):
            # a result that autograd does not track is a constant (the detached attention probabilities of
            # conservative propagation), except in the baseline pass of DeepLIFT, which runs without autograd
            if isinstance(t, torch.Tensor) and t.is_floating_point() and (t.requires_grad or not recording):
                self.mark(t)
        return out

    def _dispatch(self, func, args, kwargs, acts):
        if func in RELU:
            return self._relu(func, args, kwargs)
        if func in ELEMENTWISE:
            if self.rescale:
                return self._rescale_elementwise(func, args, kwargs)
            if self.lrp:  # identity rule (AttnLRP): relevance passes unchanged
                x = args[0]
                y, d = elementwise_derivative(func, x, args, kwargs)
                small = x.abs() < 1e-12
                ratio = torch.where(small, d, y / torch.where(small, torch.ones_like(x), x))
                return inplace_result(x, with_gradient(y, x, ratio), is_inplace(func, kwargs))
            raise self._unsupported(func, "it is not a ReLU")
        if func in MAXPOOL:
            return self._maxpool(func, args, kwargs) if self.rescale else self._eps(func(*args, **kwargs))
        if func in SELECT:
            if self.rescale:
                raise self._unsupported(func, "DeepLIFT has no rule for a maximum over an axis")
            return func(*args, **kwargs)
        if func in LINEAR:
            out = func(*args, **kwargs)
            if self.linear is not None and self._is_act(args[0] if args else kwargs.get("input")):
                out = self.linear(func, args, kwargs, out, self)
            return self._eps(out)
        if func in BATCH_NORM:
            training = args[5] if len(args) > 5 else kwargs.get("training", False)
            running = args[1] if len(args) > 1 else kwargs.get("running_mean")
            if not training and running is not None:
                return self._eps(func(*args, **kwargs))
            raise self._unsupported(func, "batch norm on batch statistics is not an affine map, and it makes an "
                                          "image's map depend on the other images of the batch")
        if func in AFFINE:
            return self._eps(func(*args, **kwargs))
        if func in PRODUCT:
            return self._product(func, args, kwargs, acts)
        if func in NORM:
            if self.lrp:
                out = norm_constant_scale(func, args, kwargs)
                if out is not None:
                    return self._eps(out)
            raise self._unsupported(func, "a normalisation divides by statistics of the activations")
        if func in SOFTMAX:
            if self.lrp:  # conservative propagation: attention probabilities are constant
                return func(*args, **kwargs).detach()
            raise self._unsupported(func)
        if func in ATTENTION:
            if self.lrp:
                return attention_constant_probs(args, kwargs)
            raise self._unsupported(func, "attention multiplies activations with each other")
        if func is F.multi_head_attention_forward:
            if self.lrp:
                with self:  # the decomposition's own operations go through the rules
                    return multi_head_attention(args, kwargs, self)
            raise self._unsupported(func, "attention multiplies activations with each other")
        if func in STRUCTURAL:
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        if not any(isinstance(t, torch.Tensor) and t.is_floating_point() for t in tree_leaves(out)):
            return out  # comparisons, indices, sizes: nothing flows back through them
        raise self._unsupported(func)

    def _eps(self, out):
        if self.lrp and isinstance(out, torch.Tensor) and out.requires_grad:
            return EpsScale.apply(out, self.affine_eps)
        return out

    def _product(self, func, args, kwargs, acts):
        operands = [a for a in list(args[:2]) if isinstance(a, torch.Tensor)]
        if func is torch.einsum:
            operands = [a for a in tree_leaves(args[1:]) if isinstance(a, torch.Tensor)]
        n_act = sum(self._is_act(a) for a in operands)
        if func in RDIVISION or (func in DIVISION and len(args) > 1 and self._is_act(args[1])):
            raise self._unsupported(func, "a division by an activation is not linear")
        out = func(*args, **kwargs)
        if n_act <= 1:
            return out  # an activation times constants: linear
        if self.lrp:  # uniform rule (AttnLRP): each of the two factors gets half
            return scale_grad(out, 1.0 / n_act)
        raise self._unsupported(func, "it multiplies two activations")

    # -- rules ------------------------------------------------------------------------------
    def _relu(self, func, args, kwargs):
        x = args[0]
        inplace = func in INPLACE_RELU or bool(kwargs.get("inplace", False))
        if self.record is not None:
            self.record.relu_inputs.append(x.detach().clone())
            y = torch.relu(x)
        elif self.relu == "guided":
            y = GuidedReLU.apply(x)
        elif self.relu == "deconv":
            y = DeconvReLU.apply(x)
        elif self.relu == "rescale":
            r = self.reference.next_relu(x)
            y0 = torch.relu(x)
            y = Rescale.apply(x, y0, r, torch.relu(r), (x > 0).to(x.dtype), self.reference.eps)
        else:
            y = torch.relu(x)
        return inplace_result(x, y, inplace)

    def _rescale_elementwise(self, func, args, kwargs):
        x = args[0]
        if self.record is not None:
            self.record.relu_inputs.append(x.detach().clone())
            return func(*args, **kwargs)
        r = self.reference.next_relu(x)
        y0, d = elementwise_derivative(func, x, args, kwargs)
        yr, _ = elementwise_derivative(func, r, (r, *args[1:]), kwargs)
        y = Rescale.apply(x, y0, r, yr, d, self.reference.eps)
        return inplace_result(x, y, is_inplace(func, kwargs))

    def _maxpool(self, func, args, kwargs):
        pool = WITH_INDICES.get(func)
        if pool is None:
            raise self._unsupported(func, "DeepLIFT's max-pooling rule covers max_pool1d/2d/3d")
        kw = dict(kwargs)
        kw.pop("return_indices", None)
        params = list(args[1:])
        x = args[0]
        y, idx = pool(x, *params, **kw, return_indices=True)
        if self.record is not None:
            self.record.pool.append((x.detach().clone(), y.detach(), idx))
            return y
        r, yr, idx_r = self.reference.next_pool(x)
        return MaxPoolDeepLift.apply(x, y, idx, r, yr, idx_r, self.reference.eps)


class ReferenceRecord:
    """Activations of the baseline's forward pass, consumed in call order by the real pass."""

    def __init__(self, eps: float = 1e-10):
        self.relu_inputs: list[torch.Tensor] = []
        self.pool: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.eps = eps
        self._i = 0
        self._j = 0

    def rewind(self) -> None:
        self._i = self._j = 0

    def next_relu(self, x: torch.Tensor) -> torch.Tensor:
        if self._i >= len(self.relu_inputs):
            raise UnsupportedLayerError("the model called more non-linearities on the input than on the baseline; "
                                        "DeepLIFT needs a forward pass whose structure does not depend on the input")
        r = self.relu_inputs[self._i]
        self._i += 1
        return _match_batch(r, x)

    def next_pool(self, x: torch.Tensor):
        if self._j >= len(self.pool):
            raise UnsupportedLayerError("the model called more max-poolings on the input than on the baseline")
        r, yr, idx = self.pool[self._j]
        self._j += 1
        return _match_batch(r, x), _match_batch(yr, None, n=x.shape[0]), _match_batch(idx, None, n=x.shape[0])


def _match_batch(t: torch.Tensor, x: torch.Tensor | None, n: int | None = None) -> torch.Tensor:
    n = x.shape[0] if x is not None else n
    if t.shape[0] == n:
        return t
    if n % t.shape[0] == 0:
        return t.repeat((n // t.shape[0],) + (1,) * (t.dim() - 1))
    raise UnsupportedLayerError("baseline and input batches do not match")


@contextlib.contextmanager
def rule_mode(model: nn.Module, mode: RuleMode) -> Iterator[RuleMode]:
    """Activate ``mode`` while tracking which module is running (for error messages)."""
    check_hookable(model, mode.method)
    handles = []
    for name, module in model.named_modules():
        label = name or type(model).__name__

        def pre(mod, inputs, _label=label):
            mode.module_stack.append(f"{_label} ({type(mod).__name__})")

        def post(mod, inputs, output):
            if mode.module_stack:
                mode.module_stack.pop()

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        with mode:
            yield mode
    finally:
        for h in handles:
            h.remove()
        mode.module_stack.clear()
