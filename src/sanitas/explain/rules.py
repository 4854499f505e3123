"""Modified back-propagation rules, applied to ``nn.ReLU`` modules AND functional calls alike.

A :class:`RuleMode` is a ``TorchFunctionMode``: while it is active, every torch function the
model calls passes through it, whether it comes from an ``nn.ReLU`` module (reused or
``inplace=True``), from ``F.relu``/``torch.relu`` in ``forward``, or from ``Tensor.relu_()``.
The mode swaps the function for a custom autograd function with the same forward value and
the method's backward rule. A non-linearity the rule cannot handle raises
:class:`~sanitas.errors.UnsupportedLayerError` naming the module it was called from, instead of
silently falling back to the plain gradient (Captum's GuidedBackprop does on ``F.relu``).

All autograd functions here are written so that ``torch.vmap`` can batch their backward
(``generate_vmap_rule``), which the all-class path (``is_grads_batched``) relies on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from sanitas.errors import UnsupportedLayerError


def _fn_set(*names: str) -> set:
    out = set()
    for spec in names:
        owner_name, _, attr = spec.rpartition(".")
        owner = {"F": F, "torch": torch, "Tensor": torch.Tensor, "_nn": torch._C._nn}[owner_name]
        if hasattr(owner, attr):
            out.add(getattr(owner, attr))
    return out


RELU_FUNCS = _fn_set("F.relu", "F.relu_", "torch.relu", "torch.relu_", "Tensor.relu", "Tensor.relu_")
INPLACE_RELU = _fn_set("F.relu_", "torch.relu_", "Tensor.relu_")
SIGMOID_FUNCS = _fn_set("F.sigmoid", "torch.sigmoid", "Tensor.sigmoid")
TANH_FUNCS = _fn_set("F.tanh", "torch.tanh", "Tensor.tanh")
OTHER_NONLINEAR = _fn_set(
    "F.gelu", "F.silu", "F.elu", "F.selu", "F.celu", "F.leaky_relu", "F.softplus", "F.hardtanh", "F.relu6",
    "F.hardswish", "F.hardsigmoid", "F.mish", "F.prelu", "F.rrelu", "F.softmax", "F.log_softmax", "F.softmin",
    "F.glu", "F.logsigmoid", "F.tanhshrink", "F.softsign", "F.layer_norm", "F.group_norm",
    "F.local_response_norm", "F.scaled_dot_product_attention", "torch.lstm", "torch.gru", "torch.rnn_tanh",
    "torch.rnn_relu", "torch.exp", "Tensor.exp", "torch.softmax", "Tensor.softmax", "torch.sqrt",
    "Tensor.sqrt", "F.normalize")
MAXPOOL_FUNCS = _fn_set("F.max_pool2d", "F.max_pool1d", "F.max_pool3d", "F.adaptive_max_pool2d")
LINEAR_FUNCS = _fn_set("F.linear", "F.conv1d", "F.conv2d", "F.conv3d")
AFFINE_FUNCS = _fn_set("F.batch_norm", "F.avg_pool1d", "F.avg_pool2d", "F.avg_pool3d", "F.adaptive_avg_pool1d",
                       "F.adaptive_avg_pool2d", "F.instance_norm")
ADD_FUNCS = _fn_set("torch.add", "Tensor.add", "Tensor.__add__", "Tensor.__radd__", "Tensor.__iadd__",
                    "Tensor.add_")
MUL_FUNCS = _fn_set("torch.mul", "Tensor.mul", "Tensor.__mul__", "Tensor.__rmul__", "Tensor.__imul__",
                    "torch.matmul", "Tensor.__matmul__", "torch.bmm", "torch.einsum", "Tensor.mul_")


def _fname(func) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))


# ----------------------------------------------------------------------------------------------
# autograd functions (forward value unchanged, backward replaced)
# ----------------------------------------------------------------------------------------------

class _GuidedReLU(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.clamp_min(0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g.clamp_min(0) * (x > 0).to(g.dtype)


class _DeconvReLU(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.clamp_min(0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return g.clamp_min(0)


class _Rescale(torch.autograd.Function):
    """DeepLIFT Rescale: multiplier (f(x) - f(r)) / (x - r), the derivative where x ~ r."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, y, r, yr, dydx, eps):
        return y.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, y, r, yr, dydx, eps = inputs
        dx = x - r
        small = dx.abs() < eps
        mult = torch.where(small, dydx, (y - yr) / torch.where(small, torch.ones_like(dx), dx))
        ctx.save_for_backward(mult)

    @staticmethod
    def backward(ctx, g):
        (mult,) = ctx.saved_tensors
        return g * mult, None, None, None, None, None


class _EpsScale(torch.autograd.Function):
    """Identity forward; backward multiplies by z / (z + eps * sign(z)) (LRP-epsilon's stabiliser)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z, eps):
        return z.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, eps = inputs
        sign = torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))
        ctx.save_for_backward(z / (z + eps * sign))

    @staticmethod
    def backward(ctx, g):
        (s,) = ctx.saved_tensors
        return g * s, None


class _MaxPoolDeepLift(torch.autograd.Function):
    """DeepLIFT through max-pooling: the output difference is split between the winners of x and r.

    The part ``max(y, y_r) - y_r`` of each window's change goes to the arg-max of the input, the
    part ``y - max(y, y_r)`` (<= 0) to the arg-max of the reference; the multiplier of an input
    element is its share divided by its own change (the plain gradient where that is ~0).
    Summation-to-delta holds exactly through the layer.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, y, idx, r, yr, idx_r, eps):
        return y.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, y, idx, r, yr, idx_r, eps = inputs
        ctx.save_for_backward(x, y, idx, r, yr, idx_r)
        ctx.eps = eps

    @staticmethod
    def backward(ctx, g):
        x, y, idx, r, yr, idx_r = ctx.saved_tensors
        top = torch.maximum(y, yr)
        n, c = x.shape[:2]

        def unpool(values, indices):
            out = torch.zeros((n, c, x[0, 0].numel()), dtype=values.dtype, device=values.device)
            return out.scatter_add(-1, indices.reshape(n, c, -1), values.reshape(n, c, -1))

        contrib = unpool(g * (top - yr), idx) + unpool(g * (y - top), idx_r)
        plain = unpool(g, idx)
        dx = (x - r).reshape(n, c, -1)
        small = dx.abs() < ctx.eps
        mult = torch.where(small, plain, contrib / torch.where(small, torch.ones_like(dx), dx))
        return mult.reshape(x.shape), None, None, None, None, None, None


# ----------------------------------------------------------------------------------------------
# the mode
# ----------------------------------------------------------------------------------------------

class RuleMode(TorchFunctionMode):
    """Intercept the model's torch calls and apply a method's propagation rules.

    Parameters
    ----------
    method: name used in error messages.
    relu: ``"guided"``, ``"deconv"``, ``"gradient"`` (plain) or ``"rescale"`` (DeepLIFT).
    linear: ``None`` (plain gradient), or a callable ``(func, args, kwargs, out) -> out`` applied to
        conv/linear calls (LRP rules).
    affine_eps: if set, LRP-epsilon's stabiliser on every other affine op (batch norm, average
        pooling, additions of two activations).
    reference: for ``relu="rescale"``: a :class:`ReferenceRecord` of the baseline's forward pass.
    """

    def __init__(self, method: str, relu: str = "gradient", linear: Callable | None = None,
                 affine_eps: float | None = None, reference: "ReferenceRecord | None" = None,
                 record: "ReferenceRecord | None" = None, allow_other_nonlinear: bool = False):
        super().__init__()
        self.method = method
        self.relu = relu
        self.linear = linear
        self.affine_eps = affine_eps
        self.reference = reference
        self.record = record
        self.allow_other = allow_other_nonlinear
        self.module_stack: list[str] = []
        self.calls = 0

    # -- error helpers ---------------------------------------------------------------------
    def _where(self) -> str:
        return self.module_stack[-1] if self.module_stack else "the model's forward"

    def _unsupported(self, func) -> UnsupportedLayerError:
        where = self._where()
        return UnsupportedLayerError(
            f"{self.method} cannot propagate through {_fname(func)} (called in {where!r}): its rule is defined "
            "for ReLU networks with conv/linear/pooling/batch-norm layers. Use a gradient-based method "
            "(gradient, input_x_gradient, integrated_gradients, smoothgrad) for this model")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in RELU_FUNCS:
            return self._relu(func, args, kwargs)
        if func in SIGMOID_FUNCS or func in TANH_FUNCS:
            if self.relu == "rescale" or self.record is not None:
                return self._smooth(func, args, kwargs)
            if not self.allow_other:
                raise self._unsupported(func)
            return func(*args, **kwargs)
        if func in OTHER_NONLINEAR:
            if not self.allow_other and self._touches_graph(args):
                raise self._unsupported(func)
            return func(*args, **kwargs)
        if func in MAXPOOL_FUNCS and (self.relu == "rescale" or self.record is not None):
            return self._maxpool(func, args, kwargs)
        if func in LINEAR_FUNCS and self.linear is not None:
            out = func(*args, **kwargs)
            return self.linear(func, args, kwargs, out, self)
        if self.affine_eps is not None and (func in AFFINE_FUNCS or func in LINEAR_FUNCS or func in MAXPOOL_FUNCS
                                           or self._is_sum(func, args)):
            out = func(*args, **kwargs)
            if isinstance(out, torch.Tensor) and out.requires_grad:
                return _EpsScale.apply(out, self.affine_eps)
            return out
        if self.affine_eps is not None and func in MUL_FUNCS and self._two_activations(args):
            raise self._unsupported(func)
        return func(*args, **kwargs)

    @staticmethod
    def _touches_graph(args) -> bool:
        return any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)

    @staticmethod
    def _two_activations(args) -> bool:
        ts = [a for a in args[:2] if isinstance(a, torch.Tensor) and a.requires_grad]
        return len(ts) == 2

    def _is_sum(self, func, args) -> bool:
        return func in ADD_FUNCS and self._two_activations(args)

    # -- rules ------------------------------------------------------------------------------
    def _relu(self, func, args, kwargs):
        x = args[0]
        inplace = func in INPLACE_RELU or bool(kwargs.get("inplace", False))
        if self.record is not None:
            self.record.relu_inputs.append(x.detach().clone())
            y = torch.relu(x)
        elif self.relu == "guided":
            y = _GuidedReLU.apply(x)
        elif self.relu == "deconv":
            y = _DeconvReLU.apply(x)
        elif self.relu == "rescale":
            r = self.reference.next_relu(x)
            y0 = torch.relu(x)
            y = _Rescale.apply(x, y0, r, torch.relu(r), (x > 0).to(x.dtype), self.reference.eps)
        else:
            y = torch.relu(x)
        if inplace and not x.requires_grad:
            return x.copy_(y.detach())
        return y

    def _smooth(self, func, args, kwargs):
        x = args[0]
        if self.record is not None:
            self.record.relu_inputs.append(x.detach().clone())
            return func(*args, **kwargs)
        r = self.reference.next_relu(x)
        if func in SIGMOID_FUNCS:
            y0, yr = torch.sigmoid(x), torch.sigmoid(r)
            d = y0 * (1 - y0)
        else:
            y0, yr = torch.tanh(x), torch.tanh(r)
            d = 1 - y0 ** 2
        return _Rescale.apply(x, y0, r, yr, d.detach(), self.reference.eps)

    def _maxpool(self, func, args, kwargs):
        if func is F.adaptive_max_pool2d:
            raise self._unsupported(func)
        kw = dict(kwargs)
        kw.pop("return_indices", None)
        params = list(args[1:])
        x = args[0]
        if self.record is not None:
            y, idx = F.max_pool2d(x, *params, **kw, return_indices=True) if func is F.max_pool2d else (None, None)
            if y is None:
                raise self._unsupported(func)
            self.record.pool.append((x.detach().clone(), y.detach(), idx))
            return y
        if func is not F.max_pool2d:
            raise self._unsupported(func)
        y, idx = F.max_pool2d(x, *params, **kw, return_indices=True)
        r, yr, idx_r = self.reference.next_pool(x)
        return _MaxPoolDeepLift.apply(x, y, idx, r, yr, idx_r, self.reference.eps)


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
        return _match_batch(r, x), _match_batch(yr, None, like=r, n=x.shape[0]), _match_batch(idx, None, like=r,
                                                                                               n=x.shape[0])


def _match_batch(t: torch.Tensor, x: torch.Tensor | None, like=None, n: int | None = None) -> torch.Tensor:
    n = x.shape[0] if x is not None else n
    if t.shape[0] == n:
        return t
    if n % t.shape[0] == 0:
        return t.repeat((n // t.shape[0],) + (1,) * (t.dim() - 1))
    raise UnsupportedLayerError("baseline and input batches do not match")


@contextlib.contextmanager
def rule_mode(model: nn.Module, mode: RuleMode) -> Iterator[RuleMode]:
    """Activate ``mode`` while tracking which module is running (for error messages)."""
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
