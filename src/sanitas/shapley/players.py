"""Who the players are: input features, single elements, pixels or patches; and the baseline.

A *player* is a set of input elements that enter or leave a coalition together. Players are
given as an integer label per input element (shape ``x.shape[1:]``); a coalition ``S`` is the
input that equals ``x`` on the players in ``S`` and the baseline elsewhere.

``feature_groups``:

* ``None`` or ``"element"``: every scalar input is a player (``C*H*W`` players; per channel);
* ``"pixel"``: the ``C`` channels of a pixel form one player (``H*W`` players);
* ``int p`` or ``(ph, pw)``: ``p x p`` (``ph x pw``) patches over all channels; the last row and
  column of patches are smaller when ``H`` or ``W`` is not a multiple of the patch size;
* an integer tensor of labels, shaped ``(C, H, W)`` or ``(H, W)`` (broadcast over channels), or
  for non-image inputs shaped like one input: any grouping; labels need not be contiguous.

A player's attribution is spread evenly over its elements, so a map still sums to the total
(completeness); for ``"pixel"`` and patches the map of an element is the player's value
divided by its number of elements.
"""

from __future__ import annotations

import torch

from sanitas.errors import ConfigError, InputError

GroupSpec = None | str | int | tuple[int, int] | torch.Tensor


def player_labels(shape: tuple[int, ...], feature_groups: GroupSpec = None,
                  device: torch.device | str = "cpu") -> tuple[torch.Tensor, int]:
    """``(labels, M)``: a LongTensor of ``shape`` with values ``0..M-1`` naming each element's player."""
    shape = tuple(int(s) for s in shape)
    numel = 1
    for s in shape:
        numel *= s
    if feature_groups is None or (isinstance(feature_groups, str) and feature_groups == "element"):
        return torch.arange(numel, device=device).reshape(shape), numel
    if isinstance(feature_groups, torch.Tensor):
        lab = feature_groups.to(device)
        if lab.is_floating_point() or lab.dtype == torch.bool:
            raise ConfigError(f"feature_groups as a tensor must hold integer labels, got dtype {lab.dtype}")
        if tuple(lab.shape) == shape[-2:] and len(shape) == 3:
            lab = lab.expand(shape)
        if tuple(lab.shape) != shape:
            raise ConfigError(f"feature_groups labels have shape {tuple(lab.shape)}; the inputs have shape {shape} "
                              f"per sample (give labels shaped {shape} or {shape[-2:]})")
        _, inv = torch.unique(lab.reshape(-1), return_inverse=True)
        return inv.reshape(shape), int(inv.max()) + 1
    if len(shape) != 3:
        raise ConfigError(f"feature_groups={feature_groups!r} needs image inputs (C, H, W); the inputs have shape "
                          f"{shape} per sample. Use None (one player per element) or a tensor of labels")
    c, h, w = shape
    if isinstance(feature_groups, str):
        if feature_groups != "pixel":
            raise ConfigError(f"unknown feature_groups {feature_groups!r}: use None/'element', 'pixel', a patch "
                              "size (int or (ph, pw)) or a tensor of labels")
        ph = pw = 1
    else:
        try:
            ph, pw = (feature_groups, feature_groups) if isinstance(feature_groups, int) else tuple(feature_groups)
            ph, pw = int(ph), int(pw)
        except (TypeError, ValueError):
            raise ConfigError(f"feature_groups={feature_groups!r} is not a patch size: use an int or "
                              "(ph, pw)") from None
        if isinstance(feature_groups, bool) or ph < 1 or pw < 1:
            raise ConfigError(f"patch size must be positive integers, got {feature_groups!r}")
    cols = -(-w // pw)
    rows = torch.arange(h, device=device) // ph
    colsi = torch.arange(w, device=device) // pw
    lab = (rows[:, None] * cols + colsi[None, :]).expand(c, h, w)
    return lab.contiguous(), int(lab.max()) + 1


def player_masks(labels: torch.Tensor, players: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(len(players), *labels.shape)``: 1 where an element belongs to the player, else 0."""
    return (labels.unsqueeze(0) == players.reshape(-1, *([1] * labels.dim()))).to(dtype)


def spread(values: torch.Tensor, labels: torch.Tensor, m: int) -> torch.Tensor:
    """Per-player values ``(M, K)`` to a map ``(K, *labels.shape)``, each player's value split evenly."""
    counts = torch.bincount(labels.reshape(-1), minlength=m).to(values.dtype)
    per_elem = values / counts[:, None]
    return per_elem[labels.reshape(-1)].T.reshape(values.shape[1], *labels.shape)


def resolve_baseline(baseline, x: torch.Tensor) -> torch.Tensor:
    """The baseline as a tensor shaped like ``x``: a number, one input (``x.shape[1:]``), or one per input."""
    b = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    try:
        b = torch.broadcast_to(b, x.shape)
    except RuntimeError:
        raise InputError(f"baseline of shape {tuple(b.shape)} does not broadcast to the inputs' shape "
                         f"{tuple(x.shape)}; give a number, one input shaped {tuple(x.shape[1:])}, or one per "
                         "input") from None
    if not torch.isfinite(b).all():
        raise InputError("baseline contains NaN or infinite values")
    return b
