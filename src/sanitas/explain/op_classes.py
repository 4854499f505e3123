"""The classes of torch operations the rule-based methods sort a model's operations into.

A rule mode (:mod:`sanitas.explain.rules`) sees every torch function the model calls on the explained
input, by its function object, and looks it up here. Each method states its rule per class, and an
operation in no class, or in a class its rules do not cover, is refused with an error naming it:

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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_OWNERS = {"F": F, "torch": torch, "Tensor": torch.Tensor, "linalg": torch.linalg}


def fns(*specs: str) -> frozenset:
    """Function objects from ``owner.name`` specs (missing ones are skipped: torch versions differ)."""
    out = set()
    for spec in specs:
        owner, _, attr = spec.rpartition(".")
        f = getattr(_OWNERS[owner], attr, None)
        if f is not None:
            out.add(f)
    return frozenset(out)


def everywhere(*names: str) -> list[str]:
    return [f"{o}.{n}" for n in names for o in ("torch", "Tensor", "F")]


RELU = fns("F.relu", "F.relu_", "torch.relu", "torch.relu_", "Tensor.relu", "Tensor.relu_")
INPLACE_RELU = fns("F.relu_", "torch.relu_", "Tensor.relu_")
ELEMENTWISE = fns("F.gelu", "F.silu", "F.elu", "F.elu_", "F.selu", "F.celu", "F.leaky_relu", "F.leaky_relu_",
                   "F.softplus", "F.hardtanh", "F.hardtanh_", "F.relu6", "F.hardswish", "F.hardsigmoid", "F.mish",
                   "F.logsigmoid", "F.softsign", "F.tanhshrink", "F.rrelu", "F.prelu",
                   *everywhere("sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clip", "clip_"))
MAXPOOL = fns("F.max_pool1d", "F.max_pool2d", "F.max_pool3d", "F.adaptive_max_pool1d", "F.adaptive_max_pool2d",
               "F.adaptive_max_pool3d", "torch.max_pool1d", "torch.max_pool2d", "torch.max_pool3d")
SELECT = fns(*everywhere("max", "min", "amax", "amin"))
LINEAR = fns("F.linear", "F.conv1d", "F.conv2d", "F.conv3d", "F.conv_transpose1d", "F.conv_transpose2d",
              "F.conv_transpose3d")
AFFINE = fns("F.avg_pool1d", "F.avg_pool2d", "F.avg_pool3d", "F.adaptive_avg_pool1d", "F.adaptive_avg_pool2d",
              "F.adaptive_avg_pool3d", "torch.avg_pool1d", "F.interpolate", "F.upsample", "F.upsample_bilinear",
              "F.upsample_nearest", "F.pad", "F.unfold", "F.fold",
              *everywhere("sum", "mean", "add", "add_", "sub", "sub_", "subtract", "neg", "negative", "cumsum",
                           "__add__", "__radd__", "__iadd__", "__sub__", "__rsub__", "__isub__", "__neg__", "__pos__"))
BATCH_NORM = fns("F.batch_norm", "torch.batch_norm")
PRODUCT = fns(*everywhere("mul", "mul_", "multiply", "matmul", "mm", "bmm", "einsum", "div", "div_", "divide",
                            "true_divide", "__mul__", "__rmul__", "__imul__", "__matmul__", "__rmatmul__",
                            "__truediv__", "__rtruediv__", "__itruediv__"))
DIVISION = fns(*everywhere("div", "div_", "divide", "true_divide", "__truediv__", "__itruediv__"))
RDIVISION = fns("Tensor.__rtruediv__")
NORM = fns("F.layer_norm", "F.group_norm", "F.rms_norm", "F.instance_norm", "torch.layer_norm",
            "torch.group_norm", "torch.rms_norm")
SOFTMAX = fns(*everywhere("softmax"))
ATTENTION = fns("F.scaled_dot_product_attention")
STRUCTURAL = fns(*everywhere(
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose", "transpose_", "t",
    "swapaxes", "swapdims", "movedim", "moveaxis", "contiguous", "clone", "cat", "concat", "concatenate", "stack",
    "hstack", "vstack", "split", "split_with_sizes", "tensor_split", "chunk", "unbind", "__getitem__", "__setitem__",
    "unsqueeze", "unsqueeze_", "squeeze", "squeeze_", "expand", "expand_as", "repeat", "tile", "to", "type",
    "type_as", "float", "double", "narrow", "select", "index_select", "gather", "take_along_dim", "roll", "flip",
    "fliplr", "flipud", "masked_fill", "masked_fill_", "where", "copy_", "pixel_shuffle", "pixel_unshuffle",
    "channel_shuffle", "broadcast_to", "as_strided", "diagonal", "tril", "triu", "unfold", "detach", "requires_grad_",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "identity"))

WITH_INDICES = {F.max_pool1d: F.max_pool1d, F.max_pool2d: F.max_pool2d, F.max_pool3d: F.max_pool3d,
                 torch.max_pool1d: F.max_pool1d, torch.max_pool2d: F.max_pool2d, torch.max_pool3d: F.max_pool3d}
GRADIENT_METHODS = "gradient, input_x_gradient, integrated_gradients, smoothgrad, vargrad"


def fname(func) -> str:
    name = getattr(func, "__name__", None) or getattr(func, "__qualname__", None) or repr(func)
    return "max_pool" if name == "fn" else name  # torch's boolean_dispatch wrappers (max_pool*d) are all 'fn' 


def out_of_place(func):
    """The out-of-place twin of an in-place function (``F.elu_`` -> ``F.elu``), else ``func``."""
    name = getattr(func, "__name__", "")
    if not name.endswith("_") or name.endswith("__"):
        return func
    for owner in (F, torch, torch.Tensor):
        if getattr(owner, name, None) is func and hasattr(owner, name[:-1]):
            return getattr(owner, name[:-1])
    return func


def is_inplace(func, kwargs) -> bool:
    return out_of_place(func) is not func or bool(kwargs.get("inplace", False))
