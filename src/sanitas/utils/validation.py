"""One validation of what users hand sanitas: counts, seeds, finite numbers, class labels, maps.

Every entry point (``explain``, the checks, configs, the command line, training) checks its values
here, so the same value is accepted or refused with the same message everywhere, and nothing is
coerced silently: ``2.7`` samples, a seed of ``1.5``, float or boolean labels, a ``(2, 2)`` target,
NaN or infinite options are errors that name the value and the fix, never truncated or flattened.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from sanitas.errors import ConfigError, InputError, NonFiniteError

#: Seeds are whole numbers in [0, SEED_MAX]: every generator sanitas seeds (torch, numpy's
#: SeedSequence, derived seeds such as ``seed + 1`` for a second model) accepts them.
SEED_MAX = 2**32 - 1


def whole_number(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None,
                 error: type[Exception] = ConfigError) -> int:
    """``value`` as an ``int``: an integer, or a float with no fractional part (``1e3``); never a
    bool, a string or ``2.7`` (which would be truncated). ``minimum``/``maximum`` are inclusive."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{name} must be a whole number, got {value!r}")
    if isinstance(value, numbers.Integral):
        number = int(value)
    else:
        f = float(value)
        if not math.isfinite(f) or f != math.floor(f):
            raise error(f"{name} must be a whole number, got {value!r} (it would be truncated to "
                        f"{int(f) if math.isfinite(f) else 'nothing'}); give an integer")
        number = int(f)
    if minimum is not None and number < minimum:
        least = "positive (at least 1)" if minimum == 1 else f"at least {minimum}"
        raise error(f"{name} must be {least}, got {value!r}")
    if maximum is not None and number > maximum:
        raise error(f"{name} must be at most {maximum}, got {value!r}")
    return number


def count(value: Any, name: str, *, minimum: int = 1, maximum: int | None = None,
          error: type[Exception] = ConfigError) -> int:
    """A positive number of things (images, samples, steps): a whole number >= ``minimum``."""
    return whole_number(value, name, minimum=minimum, maximum=maximum, error=error)


def seed(value: Any, name: str = "seed") -> int:
    """A seed: a whole number in [0, :data:`SEED_MAX`]."""
    try:
        return whole_number(value, name, minimum=0, maximum=SEED_MAX)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; a seed is a whole number from 0 to {SEED_MAX}") from None


def real(value: Any, name: str, *, minimum: float | None = None, maximum: float | None = None,
         above: float | None = None) -> float:
    """A finite real number (never NaN or infinite); ``minimum``/``maximum`` inclusive, ``above`` exclusive."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    f = float(value)
    if not math.isfinite(f):
        raise NonFiniteError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and f < minimum:
        raise ConfigError(f"{name} must be at least {minimum:g}, got {value!r}")
    if maximum is not None and f > maximum:
        raise ConfigError(f"{name} must be at most {maximum:g}, got {value!r}")
    if above is not None and f <= above:
        raise ConfigError(f"{name} must be greater than {above:g}, got {value!r}")
    return f


def finite_tensor(t: torch.Tensor, name: str) -> torch.Tensor:
    """``t`` unchanged when all its values are finite; else a :class:`NonFiniteError` counting them."""
    if t.is_floating_point() or t.is_complex():
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise NonFiniteError(f"{name} holds {bad} NaN or infinite value(s) out of {t.numel()}; give finite values")
    return t


def class_labels(labels: Any, n: int, k: int | None, *, name: str = "target", device=None, broadcast: bool = True,
                 hint: str = "") -> torch.Tensor:
    """``labels`` as a LongTensor ``(n,)`` of class indices in ``[0, k)``.

    Integers only (a list, an int, an integer tensor): float labels are not truncated, booleans are
    not read as 0/1, a 2-d tensor is not flattened. A single index applies to every image when
    ``broadcast``. ``k=None`` (the class count is not known yet) checks everything but the upper bound. ``hint`` is appended to the message of a value that is not class indices at all.
    """
    if labels is None or isinstance(labels, (str, bytes)):
        raise InputError(f"{name} must be integer class indices, one per image; got {labels!r}{hint}")
    try:
        t = torch.as_tensor(labels, device=device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{name} must be integer class indices, one per image; got {labels!r} ({exc}){hint}") from None
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise InputError(f"{name} must hold integer class indices, got dtype {t.dtype} (floats are not truncated, "
                         f"booleans are not read as 0/1); convert them with .long() if that is what you mean")
    if t.dim() > 1:
        raise InputError(f"{name} must be a 1-d list of class indices, one per image; got shape {tuple(t.shape)}")
    t = t.long().reshape(-1)
    if t.numel() == 1 and n > 1 and broadcast:
        t = t.expand(n)
    if t.numel() != n:
        one = " (or one for all)" if broadcast else ""
        raise InputError(f"{name} has {t.numel()} entries for {n} images; give one class index per image{one}")
    if k is not None and k < 1:
        raise InputError(f"the model has {k} outputs; a classifier needs at least one class")
    bad = (t < 0) | (t >= k) if k is not None else (t < 0)
    if bad.any() and k is None:
        raise InputError(f"{name} must hold class indices >= 0, got {sorted(set(t[bad].tolist()))[:5]}")
    if bad.any():
        raise InputError(f"{name} out of range: the model has {k} classes (0..{k - 1}), got "
                         f"{sorted(set(t[bad].tolist()))[:5]}")
    return t.clone()


def check_finite_maps(maps: torch.Tensor, method: Any, model=None, x: torch.Tensor | None = None) -> torch.Tensor:
    """``maps`` unchanged when finite; else a :class:`NonFiniteError` that names the cause: the model's
    logits (when they are NaN or infinite for some images) or the method itself."""
    finite = torch.isfinite(maps)
    if bool(finite.all()):
        return maps
    bad = int((~finite).sum())
    cause = f"{method!r} itself produced them: check its options (a zero epsilon, an extreme baseline, ...)"
    if model is not None and x is not None and getattr(method, "uses_model", True):
        from sanitas.utils.forward import inference_logits

        rows = ~torch.isfinite(inference_logits(model, x)).all(1)
        if bool(rows.any()):
            first = rows.nonzero().flatten()[:5].tolist()
            cause = (f"the model's logits are NaN or infinite for {int(rows.sum())} of {x.shape[0]} images "
                     f"(e.g. {first}): check its weights and the inputs")
        else:
            cause = f"the model's logits are finite, so {cause}"
    raise NonFiniteError(f"{method!r} produced {bad} NaN or infinite values in its maps; {cause}")


def finite_option(value: Any, name: str) -> Any:
    """A method option that may be a number or a tensor (a baseline, an epsilon): refused when NaN or
    infinite; names and other values pass through unchanged (their own checks come later)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        real(value, name)
    elif isinstance(value, torch.Tensor):
        finite_tensor(value, name)
    elif hasattr(value, "__array__") and not isinstance(value, (str, bytes)):
        finite_tensor(torch.as_tensor(value), name)
    return value
