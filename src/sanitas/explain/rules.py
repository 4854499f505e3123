"""Modified back-propagation rules, applied to every operation the model runs on its input.

A :class:`RuleMode` is a ``TorchFunctionMode``: while it is active, every torch function the
model calls passes through it, whether it comes from a module (reused or ``inplace=True``), a
functional call in ``forward`` or a tensor method. The mode follows which tensors derive from
the explained input (*activations*; parameters and constants do not count) and sorts every
operation on them into one of the classes below. Each method states what it does with each
class, and an operation its rules do not cover raises :class:`~sanitas.errors.UnsupportedLayerError`
naming the operation and the module it was called from: never a silently different method.

===============  ======================================================  =========================
class            operations                                             no rule needed for
===============  ======================================================  =========================
relu             ``relu`` (modules, functional, in-place)                --
elementwise      GELU, SiLU, ELU, softplus, leaky ReLU, sigmoid, tanh, ...  --
maxpool          max-pooling 1-3d, adaptive max-pooling                  gradient (winner)
select           ``max``/``min``/``amax``/``amin`` over an axis          gradient (winner)
linear           linear, conv 1-3d, transposed conv 1-3d                 --
affine           eval batch norm, average pooling, interpolation, pad,   --
                 sum, mean, add, subtract
product          mul, matmul, bmm, einsum, div: linear when one operand  --
                 is an activation, bilinear when both are
norm             layer norm, group norm, RMS norm, batch norm on batch   --
                 statistics, instance norm
softmax          softmax                                                 --
attention        ``scaled_dot_product_attention``                        --
structural       view, reshape, permute, cat, indexing, dropout (eval)   every method
===============  ======================================================  =========================

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

All autograd functions here are written so that ``torch.vmap`` can batch their backward
(``generate_vmap_rule``), which the all-class path (``is_grads_batched``) relies on.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from sanitas.errors import UnsupportedLayerError

_OWNERS = {"F": F, "torch": torch, "Tensor": torch.Tensor, "linalg": torch.linalg}


def _fns(*specs: str) -> frozenset:
    """Function objects from ``owner.name`` specs (missing ones are skipped: torch versions differ)."""
    out = set()
    for spec in specs:
        owner, _, attr = spec.rpartition(".")
        f = getattr(_OWNERS[owner], attr, None)
        if f is not None:
            out.add(f)
    return frozenset(out)


def _everywhere(*names: str) -> list[str]:
    return [f"{o}.{n}" for n in names for o in ("torch", "Tensor", "F")]


RELU = _fns("F.relu", "F.relu_", "torch.relu", "torch.relu_", "Tensor.relu", "Tensor.relu_")
INPLACE_RELU = _fns("F.relu_", "torch.relu_", "Tensor.relu_")
ELEMENTWISE = _fns("F.gelu", "F.silu", "F.elu", "F.elu_", "F.selu", "F.celu", "F.leaky_relu", "F.leaky_relu_",
                   "F.softplus", "F.hardtanh", "F.hardtanh_", "F.relu6", "F.hardswish", "F.hardsigmoid", "F.mish",
                   "F.logsigmoid", "F.softsign", "F.tanhshrink", "F.rrelu", "F.prelu",
                   *_everywhere("sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clip", "clip_"))
MAXPOOL = _fns("F.max_pool1d", "F.max_pool2d", "F.max_pool3d", "F.adaptive_max_pool1d", "F.adaptive_max_pool2d",
               "F.adaptive_max_pool3d", "torch.max_pool1d", "torch.max_pool2d", "torch.max_pool3d")
SELECT = _fns(*_everywhere("max", "min", "amax", "amin"))
LINEAR = _fns("F.linear", "F.conv1d", "F.conv2d", "F.conv3d", "F.conv_transpose1d", "F.conv_transpose2d",
              "F.conv_transpose3d")
AFFINE = _fns("F.avg_pool1d", "F.avg_pool2d", "F.avg_pool3d", "F.adaptive_avg_pool1d", "F.adaptive_avg_pool2d",
              "F.adaptive_avg_pool3d", "torch.avg_pool1d", "F.interpolate", "F.upsample", "F.upsample_bilinear",
              "F.upsample_nearest", "F.pad", "F.unfold", "F.fold",
              *_everywhere("sum", "mean", "add", "add_", "sub", "sub_", "subtract", "neg", "negative", "cumsum",
                           "__add__", "__radd__", "__iadd__", "__sub__", "__rsub__", "__isub__", "__neg__", "__pos__"))
BATCH_NORM = _fns("F.batch_norm", "torch.batch_norm")
PRODUCT = _fns(*_everywhere("mul", "mul_", "multiply", "matmul", "mm", "bmm", "einsum", "div", "div_", "divide",
                            "true_divide", "__mul__", "__rmul__", "__imul__", "__matmul__", "__rmatmul__",
                            "__truediv__", "__rtruediv__", "__itruediv__"))
DIVISION = _fns(*_everywhere("div", "div_", "divide", "true_divide", "__truediv__", "__itruediv__"))
RDIVISION = _fns("Tensor.__rtruediv__")
NORM = _fns("F.layer_norm", "F.group_norm", "F.rms_norm", "F.instance_norm", "torch.layer_norm",
            "torch.group_norm", "torch.rms_norm")
SOFTMAX = _fns(*_everywhere("softmax"))
ATTENTION = _fns("F.scaled_dot_product_attention")
STRUCTURAL = _fns(*_everywhere(
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose", "transpose_", "t",
    "swapaxes", "swapdims", "movedim", "moveaxis", "contiguous", "clone", "cat", "concat", "concatenate", "stack",
    "hstack", "vstack", "split", "split_with_sizes", "tensor_split", "chunk", "unbind", "__getitem__", "__setitem__",
    "unsqueeze", "unsqueeze_", "squeeze", "squeeze_", "expand", "expand_as", "repeat", "tile", "to", "type",
    "type_as", "float", "double", "narrow", "select", "index_select", "gather", "take_along_dim", "roll", "flip",
    "fliplr", "flipud", "masked_fill", "masked_fill_", "where", "copy_", "pixel_shuffle", "pixel_unshuffle",
    "channel_shuffle", "broadcast_to", "as_strided", "diagonal", "tril", "triu", "unfold", "detach", "requires_grad_",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "identity"))

_WITH_INDICES = {F.max_pool1d: F.max_pool1d, F.max_pool2d: F.max_pool2d, F.max_pool3d: F.max_pool3d,
                 torch.max_pool1d: F.max_pool1d, torch.max_pool2d: F.max_pool2d, torch.max_pool3d: F.max_pool3d}
GRADIENT_METHODS = "gradient, input_x_gradient, integrated_gradients, smoothgrad, vargrad"


def _fname(func) -> str:
    name = getattr(func, "__name__", None) or getattr(func, "__qualname__", None) or repr(func)
    return "max_pool" if name == "fn" else name  # torch's boolean_dispatch wrappers (max_pool*d) are all 'fn' 


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
        ctx.save_for_backward((inputs[0] > 0).to(inputs[0].dtype))

    @staticmethod
    def backward(ctx, g):
        (active,) = ctx.saved_tensors
        return g.clamp_min(0) * active


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


def _inplace_result(x: torch.Tensor, y: torch.Tensor, inplace: bool) -> torch.Tensor:
    """For an in-place call, write the rule's result into ``x`` (with its graph) and return ``x``, so code
    that ignores the return value (``h.relu_()``) sees it too; out-of-place calls return ``y``."""
    if not inplace or (x.is_leaf and x.requires_grad):
        return y
    return x.copy_(y)


def _with_gradient(value: torch.Tensor, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """A tensor equal to ``value`` whose gradient with respect to ``x`` is ``slope`` (element-wise)."""
    return value.detach() + (x - x.detach()) * slope.detach()


def _scale_grad(t: torch.Tensor, factor: float) -> torch.Tensor:
    """``t`` with its gradient multiplied by ``factor`` (the value is unchanged)."""
    return t * factor + (t * (1 - factor)).detach()


def _out_of_place(func):
    """The out-of-place twin of an in-place function (``F.elu_`` -> ``F.elu``), else ``func``."""
    name = getattr(func, "__name__", "")
    if not name.endswith("_") or name.endswith("__"):
        return func
    for owner in (F, torch, torch.Tensor):
        if getattr(owner, name, None) is func and hasattr(owner, name[:-1]):
            return getattr(owner, name[:-1])
    return func


def _is_inplace(func, kwargs) -> bool:
    return _out_of_place(func) is not func or bool(kwargs.get("inplace", False))


def _elementwise_derivative(func, x: torch.Tensor, args, kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f(x), f'(x))`` of an element-wise function, computed on a detached copy of ``x``."""
    func = _out_of_place(func)
    with torch.enable_grad():
        xx = x.detach().clone().requires_grad_(True)
        y = func(xx, *args[1:], **{k: v for k, v in kwargs.items() if k != "inplace"})
        (d,) = torch.autograd.grad(y.sum(), xx)
    return y.detach(), d


# ----------------------------------------------------------------------------------------------
# transformer rules: normalisation and attention with their statistics / probabilities constant
# ----------------------------------------------------------------------------------------------

def _norm_constant_scale(func, args, kwargs) -> torch.Tensor:
    """A normalisation whose value is unchanged, with its mean-removal kept (linear) and its
    division by the standard deviation held constant (conservative propagation)."""
    names = {F.layer_norm: ("input", "normalized_shape", "weight", "bias", "eps"),
             torch.layer_norm: ("input", "normalized_shape", "weight", "bias", "eps"),
             F.group_norm: ("input", "num_groups", "weight", "bias", "eps"),
             torch.group_norm: ("input", "num_groups", "weight", "bias", "eps"),
             F.instance_norm: ("input", "running_mean", "running_var", "weight", "bias", "use_input_stats",
                               "momentum", "eps")}
    if hasattr(F, "rms_norm"):
        names[F.rms_norm] = ("input", "normalized_shape", "weight", "eps")
    if hasattr(torch, "rms_norm"):
        names[torch.rms_norm] = ("input", "normalized_shape", "weight", "eps")
    spec = names.get(func)
    if spec is None:
        return None
    a = dict(zip(spec, args))
    a.update(kwargs)
    x = a["input"]
    w, b = a.get("weight"), a.get("bias")
    if func in (F.layer_norm, torch.layer_norm) or func is getattr(F, "rms_norm", None) \
            or func is getattr(torch, "rms_norm", None):
        shape = a["normalized_shape"]
        dims = tuple(range(-len(shape if isinstance(shape, (tuple, list, torch.Size)) else (shape,)), 0))
        eps = a.get("eps") if a.get("eps") is not None else (1e-5 if "layer" in _fname(func) else torch.finfo(x.dtype).eps)
        if "rms" in _fname(func):
            y = x / torch.sqrt(x.pow(2).mean(dims, keepdim=True) + eps).detach()
        else:
            centred = x - x.mean(dims, keepdim=True)
            y = centred / torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + eps).detach()
        if w is not None:
            y = y * w
        if b is not None:
            y = y + b
        return y
    if func in (F.group_norm, torch.group_norm):
        g, eps = int(a["num_groups"]), a.get("eps", 1e-5)
        xs = x.reshape(x.shape[0], g, -1)
        y = ((xs - xs.mean(-1, keepdim=True)) / torch.sqrt(xs.var(-1, unbiased=False, keepdim=True) + eps).detach())
        y = y.reshape(x.shape)
    else:  # instance norm on input statistics
        if a.get("use_input_stats") is False:
            return None
        eps = a.get("eps", 1e-5)
        dims = tuple(range(2, x.dim()))
        y = (x - x.mean(dims, keepdim=True)) / torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + eps).detach()
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if w is not None:
        y = y * w.view(shape)
    if b is not None:
        y = y + b.view(shape)
    return y


def _attention_constant_probs(args, kwargs) -> torch.Tensor:
    """``scaled_dot_product_attention`` with the attention probabilities held constant."""
    spec = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    a = dict(zip(spec, args))
    a.update(kwargs)
    q, k, v = a["query"], a["key"], a["value"]
    if a.get("enable_gqa") and q.shape[-3] != k.shape[-3]:
        rep = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(rep, dim=-3), v.repeat_interleave(rep, dim=-3)
    scale = a.get("scale") or 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ k.transpose(-2, -1)) * scale
    mask = a.get("attn_mask")
    if a.get("is_causal"):
        lq, lk = q.shape[-2], k.shape[-2]
        causal = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, dim=-1).detach()
    return probs @ v


_MHA_ARGS = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias", "bias_k",
             "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training",
             "key_padding_mask", "need_weights", "attn_mask", "use_separate_proj_weight", "q_proj_weight",
             "k_proj_weight", "v_proj_weight", "static_k", "static_v", "average_attn_weights", "is_causal")


def _multi_head_attention(args, kwargs, mode):
    """``F.multi_head_attention_forward`` (``nn.MultiheadAttention``) written out with linear layers,
    softmax and matmul, so that the LRP rules apply to each part (run under ``mode``)."""
    a = dict(zip(_MHA_ARGS, args))
    a.update(kwargs)
    if a.get("bias_k") is not None or a.get("add_zero_attn") or a.get("static_k") is not None \
            or a.get("static_v") is not None:
        raise mode._unsupported(F.multi_head_attention_forward, "bias_k/bias_v, add_zero_attn and static keys are "
                                                                 "not covered")
    q, k, v = a["query"], a["key"], a["value"]
    unbatched = q.dim() == 2
    if unbatched:
        q, k, v = q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)
    lq, n, e = q.shape
    heads = int(a["num_heads"])
    if a.get("use_separate_proj_weight"):
        wq, wk, wv = a["q_proj_weight"], a["k_proj_weight"], a["v_proj_weight"]
    else:
        wq, wk, wv = a["in_proj_weight"].chunk(3)
    bq = bk = bv = None
    if a.get("in_proj_bias") is not None:
        bq, bk, bv = a["in_proj_bias"].chunk(3)
    q, k, v = F.linear(q, wq, bq), F.linear(k, wk, bk), F.linear(v, wv, bv)
    hd = e // heads

    def split(t):  # (L, N, E) -> (N, heads, L, hd)
        return t.reshape(t.shape[0], n, heads, hd).permute(1, 2, 0, 3)

    mask = a.get("attn_mask")
    kpm = a.get("key_padding_mask")
    scores_mask = None
    if mask is not None:
        m = mask if mask.dim() == 3 else mask.unsqueeze(0)
        m = m.reshape(-1, heads, m.shape[-2], m.shape[-1]) if m.shape[0] == n * heads else m.unsqueeze(1)
        scores_mask = torch.zeros(m.shape, dtype=q.dtype, device=q.device).masked_fill(m, float("-inf")) \
            if m.dtype == torch.bool else m
    if kpm is not None:
        kp = kpm.reshape(n, 1, 1, -1)
        kp = torch.zeros(kp.shape, dtype=q.dtype, device=q.device).masked_fill(kp, float("-inf")) \
            if kp.dtype == torch.bool else kp
        scores_mask = kp if scores_mask is None else scores_mask + kp
    scores = split(q) @ split(k).transpose(-2, -1) / math.sqrt(hd)
    if a.get("is_causal") and mask is None:
        causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(causal, float("-inf"))
    if scores_mask is not None:
        scores = scores + scores_mask
    probs = torch.softmax(scores, dim=-1)
    out = (probs @ split(v)).permute(2, 0, 1, 3).reshape(lq, n, e)
    out = F.linear(out, a["out_proj_weight"], a.get("out_proj_bias"))
    weights = None
    if a.get("need_weights", True):
        weights = probs.mean(1) if a.get("average_attn_weights", True) else probs
        weights = weights.squeeze(0) if unbatched else weights
    return (out.squeeze(1) if unbatched else out), weights


# ----------------------------------------------------------------------------------------------
# the mode
# ----------------------------------------------------------------------------------------------

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
            f"{self.method} has no rule for {_fname(func)} (called in {self._where()!r}){': ' + why if why else ''}. "
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
                y, d = _elementwise_derivative(func, x, args, kwargs)
                small = x.abs() < 1e-12
                ratio = torch.where(small, d, y / torch.where(small, torch.ones_like(x), x))
                return _inplace_result(x, _with_gradient(y, x, ratio), _is_inplace(func, kwargs))
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
                out = _norm_constant_scale(func, args, kwargs)
                if out is not None:
                    return self._eps(out)
            raise self._unsupported(func, "a normalisation divides by statistics of the activations")
        if func in SOFTMAX:
            if self.lrp:  # conservative propagation: attention probabilities are constant
                return func(*args, **kwargs).detach()
            raise self._unsupported(func)
        if func in ATTENTION:
            if self.lrp:
                return _attention_constant_probs(args, kwargs)
            raise self._unsupported(func, "attention multiplies activations with each other")
        if func is F.multi_head_attention_forward:
            if self.lrp:
                with self:  # the decomposition's own operations go through the rules
                    return _multi_head_attention(args, kwargs, self)
            raise self._unsupported(func, "attention multiplies activations with each other")
        if func in STRUCTURAL:
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        if not any(isinstance(t, torch.Tensor) and t.is_floating_point() for t in tree_leaves(out)):
            return out  # comparisons, indices, sizes: nothing flows back through them
        raise self._unsupported(func)

    def _eps(self, out):
        if self.lrp and isinstance(out, torch.Tensor) and out.requires_grad:
            return _EpsScale.apply(out, self.affine_eps)
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
            return _scale_grad(out, 1.0 / n_act)
        raise self._unsupported(func, "it multiplies two activations")

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
        return _inplace_result(x, y, inplace)

    def _rescale_elementwise(self, func, args, kwargs):
        x = args[0]
        if self.record is not None:
            self.record.relu_inputs.append(x.detach().clone())
            return func(*args, **kwargs)
        r = self.reference.next_relu(x)
        y0, d = _elementwise_derivative(func, x, args, kwargs)
        yr, _ = _elementwise_derivative(func, r, (r, *args[1:]), kwargs)
        y = _Rescale.apply(x, y0, r, yr, d, self.reference.eps)
        return _inplace_result(x, y, _is_inplace(func, kwargs))

    def _maxpool(self, func, args, kwargs):
        pool = _WITH_INDICES.get(func)
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
