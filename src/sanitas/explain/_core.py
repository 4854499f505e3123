"""Shared machinery of every attribution method: input checks, targets, model safety, batched VJPs.

Internally a method works on a *selection matrix* ``G`` of shape ``(B, N, K)``: row ``b`` holds,
for every image ``n``, the weights of the ``K`` logits whose weighted sum is explained (one-hot
for a class). A single target is ``B = 1``; ``target="all"`` is ``B = K`` with one-hot rows, and
all ``K`` backward passes run as one batched vector-Jacobian product
(``torch.autograd.grad(..., is_grads_batched=True)``), not as a Python loop over classes.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from sanitas.errors import InputError
from sanitas.explain.forward import call_model, current_spec, image_rows, select_logits
from sanitas.utils.validation import class_labels

TargetLike = int | Sequence[int] | torch.Tensor | str | None


def check_images(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """Validate a batch of inputs: a float tensor with a batch dimension and finite values."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.dim() < 2:
        raise InputError(f"{name} must have a batch dimension, shape (N, C, H, W); got shape {tuple(x.shape)}. "
                         "For one image use x.unsqueeze(0)")
    if x.shape[0] == 0:
        raise InputError(f"{name} is an empty batch (shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise InputError(f"{name} must be a floating-point tensor, got dtype {x.dtype}; use x.float()")
    bad = ~torch.isfinite(x)
    if bad.any():
        first = int(bad.flatten(1).any(1).nonzero()[0])
        raise InputError(f"{name} contains {int(bad.sum())} NaN or infinite values (first in image {first}); clean "
                         "the inputs before explaining them")
    return x


def check_image_batch(x: torch.Tensor, name: str = "images") -> torch.Tensor:
    """:func:`check_images` for images proper: the shape must be ``(N, C, H, W)``."""
    check_images(x, name)
    if x.dim() != 4:
        raise InputError(f"{name} must be shaped (N, C, H, W), got shape {tuple(x.shape)}; add a batch dimension "
                         "with x.unsqueeze(0) for a single image")
    return x


def check_hookable(model: nn.Module, method: str) -> None:
    """Layer hooks (rule modes, GradCAM, layer maps) need an eager module; TorchScript takes none."""
    if isinstance(model, torch.jit.ScriptModule):
        from sanitas.errors import NotApplicableError

        raise NotApplicableError(f"{method} reads or changes the model's layers through hooks, which a TorchScript "
                                 "module does not take; use gradient, input_x_gradient, integrated_gradients, "
                                 "smoothgrad or vargrad, or give the eager model (module:Class@weights)")


def check_not_inference(model: nn.Module) -> None:
    """Autograd cannot differentiate through parameters or buffers created under torch.inference_mode()."""
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        if t.is_inference():
            raise InputError(f"the model's {name!r} was created under torch.inference_mode(), and autograd cannot "
                             "differentiate through such tensors. Build or load the model outside inference_mode "
                             "(torch.no_grad() is fine), or copy its state: model.load_state_dict({k: v.clone() "
                             "for k, v in state.items()}) outside it")


def model_device(model: nn.Module, default: torch.device | None = torch.device("cpu")) -> torch.device | None:
    """The device of the model's first parameter (else its first buffer, else ``default``)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return default


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode for the block, then restore each module's own flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run the model (through :func:`sanitas.explain.forward.call_model`) and return its ``(N, K)`` logits."""
    try:
        out = call_model(model, x)
    except RuntimeError as exc:
        raise InputError(f"the model failed on inputs of shape {tuple(x.shape)}: {exc}. Check that the inputs "
                         "have the shape, channels and size the model was built for") from exc
    return select_logits(out, x.shape[0], current_spec().output)


def resolve_target(target: TargetLike, logits: torch.Tensor | None, n: int | None = None, k: int | None = None,
                   device=None) -> torch.Tensor | None:
    """A LongTensor (N,) of class indices, or ``None`` for ``"all"``.

    ``logits`` are needed only for ``"predicted"``; otherwise ``n`` and ``k`` suffice.
    """
    if logits is not None:
        n, k = logits.shape
        device = logits.device
    if isinstance(target, str):
        if target == "all":
            return None
        if target == "predicted":
            if logits is None:
                raise InputError("target 'predicted' needs the model's logits")
            return logits.detach().argmax(1)
        raise InputError(f"unknown target {target!r}: use class indices, 'predicted' or 'all'")
    if target is None:
        return resolve_target("predicted", logits)
    return class_labels(target, n, k, name="target", device=device)


def num_classes(model: nn.Module, x: torch.Tensor) -> int:
    """The model's number of outputs, from a forward pass on one image that changes nothing (eval mode,
    no graph, the RNG forked). Never cached: a model's head can be swapped between two calls."""
    from sanitas.utils.forward import inference_logits

    with image_rows(torch.arange(1)):
        return int(inference_logits(model, x[:1]).shape[1])


def fit_selection(G: torch.Tensor, k: int) -> torch.Tensor:
    """``G`` with exactly ``k`` class columns: an explicit target's selection is built before the
    model's class count is known (no probe pass), with as many columns as its largest class needs."""
    have = G.shape[-1]
    if have == k:
        return G
    if have < k:
        return torch.nn.functional.pad(G, (0, k - have))
    beyond = G[..., k:].abs().sum(-1) > 0
    if bool(beyond.any()):
        chosen = G.argmax(-1)[beyond]
        raise InputError(f"target out of range: the model has {k} classes (0..{k - 1}), got "
                         f"{sorted(set(chosen.tolist()))[:5]}")
    return G[..., :k]


def selection(target: torch.Tensor | None, n: int, k: int, device, dtype=torch.float32) -> torch.Tensor:
    """The (B, N, K) selection matrix for a target (B=1) or for all classes (B=K)."""
    if target is None:
        return torch.eye(k, device=device, dtype=dtype)[:, None, :].expand(k, n, k)
    g = torch.zeros(1, n, k, device=device, dtype=dtype)
    g[0, torch.arange(n, device=device), target] = 1
    return g


# How vjp computes several rows: "rows" (one backward per row on the shared graph), "batched"
# (is_grads_batched), or "auto": rows on CPU, batched on accelerators.
VJP_STRATEGY = "auto"


def vjp(outputs: torch.Tensor, inputs: torch.Tensor | Sequence[torch.Tensor], G: torch.Tensor,
        retain_graph: bool = False) -> tuple[torch.Tensor, ...]:
    """Gradients of ``(G[b] * outputs).sum()`` w.r.t. ``inputs`` for every row b, batched.

    Returns one tensor per input of shape ``(B, *input.shape)``.
    """
    single = isinstance(inputs, torch.Tensor)
    ins = (inputs,) if single else tuple(inputs)
    G = fit_selection(G, outputs.shape[-1]).to(outputs.dtype)
    if G.shape[0] == 1:
        grads = torch.autograd.grad(outputs, ins, G[0], retain_graph=retain_graph, allow_unused=True)
        grads = tuple(torch.zeros_like(i) if g is None else g for g, i in zip(grads, ins))
        return tuple(g.unsqueeze(0) for g in grads)
    strategy = VJP_STRATEGY if VJP_STRATEGY != "auto" else ("rows" if outputs.device.type == "cpu" else "batched")
    if strategy == "rows":
        # One forward, then one backward per row on the shared graph: on CPU is_grads_batched's legacy
        # vmap has no batching rule for convolution_backward and max_pool2d_with_indices_backward and
        # falls back to a slower per-sample loop.
        rows = []
        for b in range(G.shape[0]):
            keep = retain_graph or b < G.shape[0] - 1
            g = torch.autograd.grad(outputs, ins, G[b], retain_graph=keep, allow_unused=True)
            rows.append(tuple(torch.zeros_like(i) if r is None else r for r, i in zip(g, ins)))
        return tuple(torch.stack([r[j] for r in rows]) for j in range(len(ins)))
    grads = torch.autograd.grad(outputs, ins, G, retain_graph=retain_graph, is_grads_batched=True,
                                allow_unused=True)
    return tuple(torch.zeros((G.shape[0], *i.shape), dtype=i.dtype, device=i.device) if g is None else g
                 for g, i in zip(grads, ins))


# Inputs per forward/backward pass of the path- and noise-based methods (and of single-pass methods
# on large batches) when ``batch_size`` is not given (DEVELOPERS.md, "Pass sizes follow the device").
# On CPU, small inputs run in passes of about 48 MiB of module outputs: past about 80 MB glibc handed
# the freed blocks back to the kernel after every pass and the next pass page-faulted them in again.
# Large inputs (one 224x224 ResNet-18 image alone holds 28.5 MiB of activations) get at least 32
# inputs per pass while they fit in 2 GiB of activations, because one-image passes made the gradient
# 2x slower. The size is measured once per model and input shape by a probe forward pass on one
# input; the fallback, when a probe is impossible, is 256 inputs of 28x28 elements. Accelerators
# keep large passes.
CPU_ACTIVATION_BYTES_PER_PASS = 48 * 2**20
CPU_MIN_INPUTS_PER_PASS = 32
CPU_MAX_BYTES_PER_PASS = 2 * 2**30
CPU_ELEMENTS_PER_PASS = 256 * 28 * 28
ACCELERATOR_INPUTS_PER_PASS = 1024

_ACTIVATION_BYTES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of all leaf modules' outputs in one forward pass on one input like ``x[0]``.

    Measured with temporary forward hooks under ``no_grad`` (removed again), cached per model
    object and input shape; at least the input's own size.
    """
    per_model = _ACTIVATION_BYTES.setdefault(model, {})
    key = (tuple(x.shape[1:]), x.dtype)
    if key not in per_model:
        total = 0

        def hook(module, args, out):
            nonlocal total
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()

        handles = [m.register_forward_hook(hook) for m in model.modules() if next(m.children(), None) is None]
        try:
            with torch.no_grad(), image_rows(torch.arange(1)):
                call_model(model, x[:1])
        finally:
            for h in handles:
                h.remove()
        per_model[key] = max(total, x[0].numel() * x.element_size())
    return per_model[key]


def inputs_per_pass(batch_size: int | None, x: torch.Tensor, model: nn.Module | None = None) -> int:
    """How many inputs one pass may hold: ``batch_size`` when given, else the device's default
    (on CPU from the model's measured activation size when ``model`` is given)."""
    if batch_size:
        return int(batch_size)
    if x.device.type != "cpu":
        return ACCELERATOR_INPUTS_PER_PASS
    if model is not None:
        try:
            per_input = activation_bytes(model, x)
        except Exception:  # noqa: BLE001 - only a sizing probe: the real pass reports real errors
            per_input = None
        if per_input is not None:
            n = CPU_ACTIVATION_BYTES_PER_PASS // per_input
            if n < CPU_MIN_INPUTS_PER_PASS:
                n = min(CPU_MIN_INPUTS_PER_PASS, CPU_MAX_BYTES_PER_PASS // per_input)
            return max(1, n)
    return max(1, CPU_ELEMENTS_PER_PASS // max(1, x[0].numel()))


def pass_shape(budget: int, n_images: int) -> tuple[int, int]:
    """``(images, points)`` per pass for ``n_images`` images with several points (path steps or
    noise samples) each, within ``budget`` inputs: all images and ``budget // n`` points when they
    fit, else ``budget`` images (at least one) and one point at a time."""
    images = max(1, min(n_images, budget))
    return images, max(1, budget // images)


def chunks(total: int, size: int | None) -> Iterator[slice]:
    size = total if not size or size <= 0 else int(size)
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))
