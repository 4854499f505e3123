"""Faster CPU kernels for the explanation passes, chosen by fixed rules without touching the model.

Two kernels of a gradient pass are far from the machine's speed on some CPUs (2-core AMD EPYC,
torch 2.13, measured):

* ``F.linear`` goes to the BLAS (MKL), which picks its AVX-512 code only on Intel CPUs: on this
  AMD CPU the paper cnn's 3136->1024 layer reaches 180 GFLOP/s against oneDNN's 455 for its
  convolutions. The same product as a 1x1 convolution over a ``(1, K, M, 1)`` channels-last view
  of the ``(M, K)`` input (no copy) runs in oneDNN: forward plus input gradient 12.5 -> 6.3 ms for
  140 inputs. The choice is a fixed rule (:func:`linear_prefers_onednn`), never a timing, so two
  processes compute the same floats: oneDNN when the CPU facts of :func:`blas_lacks_avx512` hold
  (AVX-512 in torch's CPU capability, a CPU vendor other than Intel, torch built with MKL and
  oneDNN) and the shape is one where it measured faster here (``benchmarks/cpu_passes.py
  --linear`` prints the table the rule comes from); else the BLAS, as plain PyTorch.
* oneDNN's input gradient of a convolution with **one input channel** (the first layer of every
  grayscale model) blocks over 16 input channels and wastes 15 of them: 5.8 ms for the cnn's
  5x5 conv1 on 140 images against 0.7 ms for its forward. Here it is a product with the taps
  (``(N, C_out, H, W) -> (N, kh*kw, H, W)``) followed by kh*kw shifted in-place additions:
  2.4 ms, 5x5 and 3x3 kernels alike faster (2.3 -> 0.7 ms), large 7x7/11x11 kernels about
  10%. Only stride 1, dilation 1, one group and symmetric padding; everything else is unchanged.
  Which calls take it depends on the call's arguments only.

Both agree with the plain kernels to float rounding (tested to 1e-5 relative). They are active
only inside :class:`CPUKernels`, a ``TorchFunctionMode`` that :class:`~sanitas.explain.Explainer`
enters for its passes on CPU: the user's model, its modules and hooks are untouched, and rule
modes (guided backprop, LRP, DeepLIFT) stack on top of it. The one-channel function is a complete
``autograd.Function`` (``setup_context``, a ``jvp``, ``generate_vmap_rule``), so ``torch.func``
transforms and ``is_grads_batched`` go through it like through any torch op. One private call
remains, guarded: see :func:`_engine_needs`. ``SANITAS_CPU_KERNELS=0`` in the environment, or
``sanitas.explain.kernels.ENABLED = False``, turns both off.
"""

from __future__ import annotations

import contextlib
import functools
import platform

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from sanitas.utils.env import env_switch

ENABLED = env_switch("SANITAS_CPU_KERNELS")
#: ``"auto"`` (the rule of :func:`linear_prefers_onednn`), ``"onednn"`` or ``"blas"`` (always that one)
LINEAR_BACKEND = "auto"

#: the oneDNN product is used from this many rows (inputs of a pass) on,
LINEAR_MIN_ROWS = 64
#: for weights of at least this many elements (K * N),
LINEAR_MIN_WEIGHT = 2**20
#: and products of at least this many multiply-adds (M * K * N)
LINEAR_MIN_MACS = 2**27
#: one-channel convolutions with fewer output values per input pixel (C_out * kh * kw) keep oneDNN:
#: resnet-small's 1->16 3x3 stem gains 0.4 ms of a 15 ms pass, less than the mode's own overhead
MIN_CONV_TAPS_X_CHANNELS = 256


def _plain(*tensors) -> bool:
    """Ordinary dense float32 CPU tensors (no subclasses)."""
    for t in tensors:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or type(t) not in (torch.Tensor, torch.nn.Parameter):
            return False
        if t.device.type != "cpu" or t.dtype != torch.float32 or t.layout != torch.strided:
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


def cpu_vendor() -> str | None:
    """The CPU vendor string (``GenuineIntel``, ``AuthenticAMD``, ...) or None when unknown."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.partition(":")[2].strip() or None
    except OSError:
        pass
    proc = platform.processor()  # Windows: "... GenuineIntel" / "... AuthenticAMD"
    return next((v for v in ("GenuineIntel", "AuthenticAMD") if v in proc), None)


@functools.cache
def blas_lacks_avx512() -> bool:
    """Whether oneDNN runs AVX-512 code here but the BLAS does not (looked up once, never timed).

    True on an x86 CPU whose AVX-512 torch uses (``torch.backends.cpu.get_cpu_capability()``) from a
    vendor other than Intel (or unknown: False), with torch built with MKL as its BLAS and with oneDNN:
    MKL dispatches its AVX-512 kernels on Intel CPUs only, oneDNN on any CPU that has them.
    """
    if not (torch.backends.mkl.is_available() and torch.backends.mkldnn.is_available()):
        return False
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    return cpu_vendor() not in (None, "GenuineIntel")


def linear_prefers_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether ``F.linear(x, weight, bias)`` runs as :func:`linear_onednn`: a fixed rule of the shape
    and of :func:`blas_lacks_avx512`, so every process makes the same choice for the same call.

    oneDNN for at least :data:`LINEAR_MIN_ROWS` rows, weights of at least :data:`LINEAR_MIN_WEIGHT`
    elements and at least :data:`LINEAR_MIN_MACS` multiply-adds. Smaller products were as fast or
    slower that way on the 2-core AMD EPYC we measured (best of 3x7 calls on a loaded machine, so
    +-20%; oneDNN reorders the weight in every call), in oneDNN/BLAS time: 1024x1024 1.2-1.8 with
    64-110 rows, 0.8 with 140-1284; 3136x1024 1.1 with 32 rows, 0.7-0.9 from 64 on; weights under
    2^20 elements about 1 up to 256 rows."""
    if LINEAR_BACKEND != "auto":
        return LINEAR_BACKEND == "onednn"
    k, n = weight.shape[1], weight.shape[0]
    m = x.numel() // max(1, k)
    return (m >= LINEAR_MIN_ROWS and k * n >= LINEAR_MIN_WEIGHT and m * k * n >= LINEAR_MIN_MACS
            and blas_lacks_avx512())


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
        y = torch.matmul(taps, grad_out.reshape(n, c_out, ho * wo)).reshape(n, kh * kw, ho, wo)
    else:  # channels_last: a 1x1 convolution in oneDNN, then one copy to (N, kh*kw, Ho, Wo)
        y = F.conv2d(grad_out, taps.reshape(kh * kw, c_out, 1, 1)).contiguous()
    full = grad_out.new_zeros(n, h + 2 * ph, w + 2 * pw)
    for ky in range(kh):
        rows = full[:, ky:ky + ho]
        for kx in range(kw):
            rows[:, :, kx:kx + wo].add_(y[:, ky * kw + kx])
    return full[:, ph:ph + h, pw:pw + w].unsqueeze(1).contiguous()


def _engine_needs(ctx, i: int) -> bool:
    """Whether the running backward needs the gradient of the Function's ``i``-th input.

    ``ctx.needs_input_grad`` only says that the input requires grad; a weight does, yet
    ``autograd.grad(out, x)`` never uses its gradient. The engine knows, through the private
    ``torch._C._will_engine_execute_node`` (torch's own ``register_multi_grad_hook`` asks it the
    same way; there is no public equivalent). When it is missing or cannot say, the gradient is
    assumed needed: that costs time only, since each gradient is computed the same way whichever
    others are.
    """
    if not ctx.needs_input_grad[i]:
        return False
    node = ctx.next_functions[i][0]
    if node is None:
        return False
    will_execute = getattr(torch._C, "_will_engine_execute_node", None)
    if will_execute is None:
        return True
    try:
        return bool(will_execute(node))
    except RuntimeError:
        return True


class _OneChannelConv2d(torch.autograd.Function):
    """``F.conv2d`` (stride 1, dilation 1, one group, one input channel) whose input gradient is
    :func:`conv_input_grad_one_channel`; weight and bias gradients (``torch.nn.grad.conv2d_weight``
    and a sum) are computed only when the running backward uses them (an explanation's input
    gradient does not: 2.6 ms of 40 per pass on the cnn)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, padding):
        return F.conv2d(x, weight, bias, 1, padding)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, padding = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        gx = gw = gb = None
        if _engine_needs(ctx, 0):
            gx = conv_input_grad_one_channel(grad_out, weight, tuple(x.shape[-2:]), ctx.padding)
        if _engine_needs(ctx, 1):
            gw = torch.nn.grad.conv2d_weight(x, weight.shape, grad_out, 1, ctx.padding)
        if ctx.has_bias and _engine_needs(ctx, 2):
            gb = grad_out.sum(dim=(0, 2, 3))
        return gx, gw, gb, None

    @staticmethod
    def jvp(ctx, x_t, w_t, b_t, _padding_t):
        x, weight = ctx.saved_tensors
        out = None
        for a, w in ((x_t, weight), (x, w_t)):
            if a is not None and w is not None:
                term = F.conv2d(a, w, None, 1, ctx.padding)
                out = term if out is None else out + term
        if b_t is not None:
            if out is None:
                (ph, pw), (kh, kw) = ctx.padding, weight.shape[-2:]
                shape = (x.shape[0], weight.shape[0], x.shape[2] + 2 * ph - kh + 1, x.shape[3] + 2 * pw - kw + 1)
                return b_t.view(1, -1, 1, 1).expand(shape).clone()
            out = out + b_t.view(-1, 1, 1)
        return out


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
    return w.dim() == 2 and (LINEAR_BACKEND == "onednn" or (
        LINEAR_BACKEND == "auto" and w.numel() >= LINEAR_MIN_WEIGHT and blas_lacks_avx512()))


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
