"""Faster CPU kernels for the explanation passes, chosen per call without touching the model.

Two kernels of a gradient pass are far from the machine's speed on some CPUs (2-core AMD EPYC,
torch 2.13, measured):

* ``F.linear`` goes to the BLAS (MKL), which runs without AVX-512 on AMD CPUs: the paper cnn's
  3136->1024 layer reaches 180 GFLOP/s against oneDNN's 455 for its convolutions. The same
  product as a 1x1 convolution over a ``(1, K, M, 1)`` channels-last view of the ``(M, K)``
  input (no copy) runs in oneDNN: forward plus input gradient 12.5 -> 6.3 ms for 140 inputs.
  Whether it is faster depends on the CPU, its BLAS and the shape (1024x1024 gains nothing here,
  3136x1024 gains 2x), so each ``(M, K, N)`` is timed once per process, like
  ``torch.backends.cudnn.benchmark``: both ways, forward and input gradient, the faster kept if it
  wins by 10%. Products under 2^20 multiply-adds keep the BLAS without timing.
* oneDNN's input gradient of a convolution with **one input channel** (the first layer of every
  grayscale model) blocks over 16 input channels and wastes 15 of them: 5.8 ms for the cnn's
  5x5 conv1 on 140 images against 0.7 ms for its forward. Here it is a 1x1 convolution
  (``(N, C_out, H, W) -> (N, kh*kw, H, W)``) followed by kh*kw shifted in-place additions:
  2.4 ms, 5x5 and 3x3 kernels alike faster (2.3 -> 0.7 ms), large 7x7/11x11 kernels about
  10%. Only stride 1, dilation 1, one group and symmetric padding; everything else is unchanged.

Both agree with the plain kernels to float rounding (tested to 1e-5 relative). They are active
only inside :class:`CPUKernels`, a ``TorchFunctionMode`` that :class:`~sanitas.explain.Explainer`
enters for its passes on CPU: the user's model, its modules and hooks are untouched, and rule
modes (guided backprop, LRP, DeepLIFT) stack on top of it. ``SANITAS_CPU_KERNELS=0`` in the
environment, or ``sanitas.explain.kernels.ENABLED = False``, turns both off.
"""

from __future__ import annotations

import contextlib
import time

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from sanitas.utils.env import env_switch

ENABLED = env_switch("SANITAS_CPU_KERNELS")
#: ``"auto"`` (time both once per shape), ``"onednn"`` or ``"blas"`` (always that one)
LINEAR_BACKEND = "auto"

#: products smaller than this many multiply-adds keep the BLAS without being timed
MIN_LINEAR_MACS = 2**20
#: the oneDNN product is kept only when it takes less than this fraction of the BLAS time
LINEAR_SPEEDUP_NEEDED = 0.9
#: one-channel convolutions with fewer output values per input pixel (C_out * kh * kw) keep oneDNN:
#: resnet-small's 1->16 3x3 stem gains 0.4 ms of a 15 ms pass, less than the mode's own overhead
MIN_CONV_TAPS_X_CHANNELS = 256

_LINEAR_CHOICE: dict[tuple[int, int, int, bool], bool] = {}
_MAX_CHOICES = 4096


def _plain(*tensors) -> bool:
    """Ordinary dense float32 CPU tensors (no subclasses, no functorch wrappers)."""
    is_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    for t in tensors:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or type(t) not in (torch.Tensor, torch.nn.Parameter):
            return False
        if t.device.type != "cpu" or t.dtype != torch.float32 or t.layout != torch.strided:
            return False
        if is_wrapped is not None and is_wrapped(t):
            return False
    return True


# ----------------------------------------------------------------------------------------------
# linear as a 1x1 convolution
# ----------------------------------------------------------------------------------------------

def linear_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` computed by oneDNN as a 1x1 convolution (differentiable)."""
    k, n = x.shape[-1], weight.shape[0]
    a = x.reshape(-1, k).contiguous()
    m = a.shape[0]
    y = F.conv2d(a.view(1, m, 1, k).permute(0, 3, 1, 2), weight.contiguous().view(n, k, 1, 1), bias)
    return y.permute(0, 2, 3, 1).reshape(*x.shape[:-1], n)


def _time_pass(fn, a, weight, bias, go) -> float:
    best = float("inf")
    for i in range(3):  # one warm-up (oneDNN builds its kernel for a new shape), best of two
        ag = a.detach().clone().requires_grad_(True)
        t0 = time.perf_counter()
        torch.autograd.grad(fn(ag, weight, bias), ag, go)
        if i:
            best = min(best, time.perf_counter() - t0)
    return best


def linear_prefers_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether the oneDNN product is faster for ``F.linear(x, weight, bias)``'s shape (timed once per
    process and shape ``(M, K, N)``, M the rows of ``x``)."""
    if LINEAR_BACKEND != "auto":
        return LINEAR_BACKEND == "onednn"
    k, n = weight.shape[1], weight.shape[0]
    m = x.numel() // max(1, k)
    if m * k * n < MIN_LINEAR_MACS or torch.is_inference_mode_enabled():
        return False
    key = (m, k, n, bias is not None)
    choice = _LINEAR_CHOICE.get(key)
    if choice is None:
        try:
            with torch.enable_grad():
                a = x.detach().reshape(m, k)
                w = weight.detach()
                b = None if bias is None else bias.detach()
                go = torch.ones(m, n, dtype=x.dtype)
                t_blas = _time_pass(F.linear, a, w, b, go)
                t_onednn = _time_pass(linear_onednn, a, w, b, go)
            choice = t_onednn < LINEAR_SPEEDUP_NEEDED * t_blas
        except RuntimeError:  # a backend that cannot run this shape: keep the BLAS
            choice = False
        if len(_LINEAR_CHOICE) >= _MAX_CHOICES:
            _LINEAR_CHOICE.clear()
        _LINEAR_CHOICE[key] = choice
    return choice


# ----------------------------------------------------------------------------------------------
# input gradient of a one-channel convolution
# ----------------------------------------------------------------------------------------------

def conv_input_grad_one_channel(grad_out: torch.Tensor, weight: torch.Tensor, in_hw: tuple[int, int],
                                padding: tuple[int, int]) -> torch.Tensor:
    """Gradient w.r.t. the ``(N, 1, H, W)`` input of a stride-1 convolution with ``weight``
    ``(C_out, 1, kh, kw)``, given the gradient ``(N, C_out, Ho, Wo)`` of its output.

    ``Y = grad_out`` contracted with the weight over ``C_out`` (one 1x1 convolution) holds, for
    every output position, the contribution to each of the ``kh*kw`` input positions it read;
    adding the taps back at their offsets into the padded input and cutting the padding off gives
    the gradient (the adjoint of the forward's sliding window).
    """
    n = grad_out.shape[0]
    c_out, _, kh, kw = weight.shape
    (h, w), (ph, pw) = in_hw, padding
    ho, wo = grad_out.shape[2], grad_out.shape[3]
    taps = weight.reshape(c_out, kh * kw).t().contiguous()
    if grad_out.is_contiguous():  # NCHW: one batched product, already in the (N, kh*kw, Ho*Wo) layout
        y = torch.matmul(taps, grad_out.view(n, c_out, ho * wo)).view(n, kh * kw, ho, wo)
    else:  # channels_last: a 1x1 convolution in oneDNN, then one copy to (N, kh*kw, Ho, Wo)
        y = F.conv2d(grad_out, taps.view(kh * kw, c_out, 1, 1)).contiguous()
    full = grad_out.new_zeros(n, h + 2 * ph, w + 2 * pw)
    for ky in range(kh):
        rows = full[:, ky:ky + ho]
        for kx in range(kw):
            rows[:, :, kx:kx + wo].add_(y[:, ky * kw + kx])
    return full[:, ph:ph + h, pw:pw + w].unsqueeze(1).contiguous()


def _engine_needs(ctx, i: int) -> bool:
    """Whether the running backward needs the gradient of the Function's ``i``-th input.

    ``ctx.needs_input_grad`` only says that the input requires grad; a weight does, yet
    ``autograd.grad(out, x)`` never uses its gradient. The engine knows (torch's own
    ``register_multi_grad_hook`` asks it the same way); when it cannot say, assume needed.
    """
    if not ctx.needs_input_grad[i]:
        return False
    node = ctx.next_functions[i][0]
    if node is None:
        return False
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, RuntimeError):
        return True


def _is_batched(t: torch.Tensor) -> bool:
    check = getattr(torch._C._functorch, "is_batchedtensor", None)
    return bool(check is not None and check(t))


class _OneChannelConv2d(torch.autograd.Function):
    """``F.conv2d`` (stride 1, dilation 1, one group, one input channel) whose input gradient is
    :func:`conv_input_grad_one_channel`; weight and bias gradients are oneDNN's, computed only when
    the running backward uses them (an explanation's input gradient does not: 2.6 ms of 40 per
    pass on the cnn)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.bias_shape = None if bias is None else list(bias.shape)
        return F.conv2d(x, weight, bias, 1, padding)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = (_engine_needs(ctx, i) for i in range(3))
        gx = gw = gb = None
        if need_x and not _is_batched(grad_out):
            gx = conv_input_grad_one_channel(grad_out, weight, tuple(x.shape[2:]), ctx.padding)
            need_x = False
        if need_x or need_w or (need_b and ctx.bias_shape is not None):
            rx, gw, gb = torch.ops.aten.convolution_backward(
                grad_out, x, weight, ctx.bias_shape, [1, 1], list(ctx.padding), [1, 1], False, [0, 0], 1,
                [need_x, need_w, bool(need_b and ctx.bias_shape is not None)])
            gx = rx if need_x else gx
        return gx, gw, gb, None


def _pair(v) -> tuple[int, int] | None:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return (int(v[0]), int(v[1]))
    if isinstance(v, (tuple, list)) and len(v) == 1 and isinstance(v[0], int):
        return (int(v[0]), int(v[0]))
    return None


def _one_channel_conv_weight(w: torch.Tensor) -> bool:
    return w.dim() == 4 and w.shape[1] == 1 and w.shape[0] * w.shape[2] * w.shape[3] >= MIN_CONV_TAPS_X_CHANNELS


def _linear_weight(w: torch.Tensor) -> bool:
    return w.dim() == 2 and 32 * w.numel() >= MIN_LINEAR_MACS  # a product of >= 32 rows could win


def applies_to(model: torch.nn.Module) -> bool:
    """Whether the model has a parameter one of the kernels could take: otherwise the mode's
    per-call overhead (about 2% of a resnet-small pass) buys nothing."""
    return any(_linear_weight(p) or _one_channel_conv_weight(p) for p in model.parameters())


def _one_channel_padding(x, weight, bias, stride=1, padding=0, dilation=1, groups=1):
    """The ``(ph, pw)`` padding when this conv2d call can take the one-channel kernel, else None."""
    if not (isinstance(x, torch.Tensor) and x.dim() == 4 and x.requires_grad and isinstance(weight, torch.Tensor)
            and _one_channel_conv_weight(weight) and x.shape[1] == 1 and groups == 1
            and _pair(stride) == (1, 1) and _pair(dilation) == (1, 1) and _plain(x, weight, bias)):
        return None
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        kh, kw = weight.shape[2:]
        if padding == "same" and kh % 2 == 1 and kw % 2 == 1:
            return (kh // 2, kw // 2)
        return None
    return _pair(padding)


# ----------------------------------------------------------------------------------------------
# the mode
# ----------------------------------------------------------------------------------------------

_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_LINEAR_ARGS = ("input", "weight", "bias")


def _bind(names, args, kwargs):
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


class CPUKernels(TorchFunctionMode):
    """Route ``F.linear`` and one-channel ``F.conv2d`` calls to the faster kernels above."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            b = _bind(_LINEAR_ARGS, args, kwargs)
            x, w, bias = b.get("input"), b.get("weight"), b.get("bias")
            if (isinstance(x, torch.Tensor) and isinstance(w, torch.Tensor) and x.dim() >= 2 and w.dim() == 2
                    and x.shape[-1] == w.shape[1] and (bias is None or (bias.dim() == 1 and bias.shape[0] == w.shape[0]))
                    and _plain(x, w, bias)):
                if linear_prefers_onednn(x, w, bias):
                    return linear_onednn(x, w, bias)
        elif func is F.conv2d:
            b = _bind(_CONV_ARGS, args, kwargs)
            opts = {k: b[k] for k in ("stride", "padding", "dilation", "groups") if k in b}
            pad = _one_channel_padding(b.get("input"), b.get("weight"), b.get("bias"), **opts)
            if pad is not None:
                return _OneChannelConv2d.apply(b["input"], b["weight"], b.get("bias"), pad)
        return func(*args, **kwargs)


def cpu_kernels(device: torch.device | str, model: torch.nn.Module | None = None) -> contextlib.AbstractContextManager:
    """:class:`CPUKernels` for passes on CPU when :data:`ENABLED` (and ``model``, if given, has a
    layer they apply to), else a no-op context."""
    if ENABLED and torch.device(device).type == "cpu" and (model is None or applies_to(model)):
        return CPUKernels()
    return contextlib.nullcontext()
