"""Autograd functions of the rule-based methods: the forward value unchanged, the backward replaced.

All are written so that ``torch.vmap`` can batch their backward (``generate_vmap_rule``), which the
all-class path (``is_grads_batched``) relies on.
"""

from __future__ import annotations

import torch

from sanitas.explain.op_classes import out_of_place

class _ReLUWithRule(torch.autograd.Function):
    """ReLU's forward value; subclasses replace its backward."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.clamp_min(0)


class GuidedReLU(_ReLUWithRule):
    """Guided backprop: only positive gradients, through units active in the forward pass."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward((inputs[0] > 0).to(inputs[0].dtype))  # a mask: x itself may be overwritten in place

    @staticmethod
    def backward(ctx, g):
        (active,) = ctx.saved_tensors
        return g.clamp_min(0) * active


class DeconvReLU(_ReLUWithRule):
    """Deconvnet: the rectified gradient, whatever the forward pass did."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return g.clamp_min(0)


class Rescale(torch.autograd.Function):
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


class EpsScale(torch.autograd.Function):
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


class MaxPoolDeepLift(torch.autograd.Function):
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


def inplace_result(x: torch.Tensor, y: torch.Tensor, inplace: bool) -> torch.Tensor:
    """For an in-place call, write the rule's result into ``x`` (with its graph) and return ``x``, so code
    that ignores the return value (``h.relu_()``) sees it too; out-of-place calls return ``y``."""
    if not inplace or (x.is_leaf and x.requires_grad):
        return y
    return x.copy_(y)


def with_gradient(value: torch.Tensor, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """A tensor equal to ``value`` whose gradient with respect to ``x`` is ``slope`` (element-wise)."""
    return value.detach() + (x - x.detach()) * slope.detach()


def scale_grad(t: torch.Tensor, factor: float) -> torch.Tensor:
    """``t`` with its gradient multiplied by ``factor`` (the value is unchanged)."""
    return t * factor + (t * (1 - factor)).detach()


def elementwise_derivative(func, x: torch.Tensor, args, kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f(x), f'(x))`` of an element-wise function, computed on a detached copy of ``x``."""
    func = out_of_place(func)
    with torch.enable_grad():
        xx = x.detach().clone().requires_grad_(True)
        y = func(xx, *args[1:], **{k: v for k, v in kwargs.items() if k != "inplace"})
        (d,) = torch.autograd.grad(y.sum(), xx)
    return y.detach(), d
