"""Randomization variants: the stages of the model parameter randomization test.

``cascading`` (adebayo2018, section 3.1)
    Stage 0 is the original model; stage k has the top k blocks randomized (``order="top_down"``,
    the paper's: the output layer first, then cumulatively down to the input) or the bottom k
    (``order="bottom_up"``, as sMPRT). The last stage is the fully randomized model.
``independent`` (section 3.2)
    Stage 0 is the original model; stage k has only block k randomized, every other layer at
    its trained values. ``order`` sets the order the blocks are visited in.

Both return a :class:`StageSequence`: iterate it for :class:`Stage` objects, one at a time
(``len()`` gives the number of stages, so ``tqdm(seq)`` shows a total). Each stage's model is a
randomized deep copy of the user's model, in eval mode; the user's model is never touched. On
CPU the copies of convolutional models are in channels_last layout when the model runs the same
in it (same values, faster; see :func:`sanitas.utils.device.prefer_fast_layout`).

**Lifetime of a stage's model.** To avoid one deep copy per stage, the sequence keeps one
working copy and changes it in place: a yielded ``stage.model`` is valid only until the next
stage is requested (cascading randomizes the next block into it, independent restores the
block it randomized). Use ``copy=True`` (or :meth:`StageSequence.stage`) for models that stay
valid. Iterating the sequence again starts from a fresh copy and gives identical models.

**Determinism.** Layer ``L`` is randomized from a private generator seeded by
``layer_seed(seed, L)``, so cascading stage k and independent randomization of the same block
give that block the same weights, and a re-run (a resumed one too) gives identical models.
The caller's global RNG is never reseeded.
"""

from __future__ import annotations

import copy as copymod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sanitas.errors import ConfigError, ModelError
from sanitas.randomize.blocks import Block, group_layers
from sanitas.randomize.init import (_STAT_BUFFERS, InitScheme, has_running_stats, layer_seed, randomize_module,
                                    resolve_bn_stats, resolve_init)
from sanitas.randomize.layers import LayerInfo, discover_layers
from sanitas.utils.device import prefer_fast_layout

LAYER_ORDERS = ("top_down", "bottom_up")
SEQUENCE_MODES = ("cascading", "independent")


@dataclass
class Stage:
    """One stage of a randomization test.

    name: ``"original"`` for stage 0, else the name of the block randomized at this stage.
    index: 0 for the original, then 1, 2, ...
    randomized_layers: names of every layer randomized in ``model`` (cumulative for cascading;
        the block's layers for independent), in forward order.
    model: the (partially) randomized copy, in eval mode; see the module docstring for how long
        it stays valid.
    block: the :class:`Block` randomized at this stage (``None`` for the original).
    draw: which of the stage's independent random draws this is (see ``draws``).
    """

    name: str
    index: int
    randomized_layers: tuple[str, ...]
    model: nn.Module = field(repr=False)
    block: Block | None = None
    draw: int = 0


def _check_order(order: str) -> str:
    o = str(order).strip().lower().replace("-", "_")
    if o not in LAYER_ORDERS:
        raise ConfigError(f"order must be 'top_down' (the output layer first, as in the paper) or 'bottom_up', "
                          f"got {order!r}")
    return o


def _deepcopy(model: nn.Module) -> nn.Module:
    try:
        return copymod.deepcopy(model)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise ModelError(f"cannot deep-copy {type(model).__name__} ({type(e).__name__}: {e}); sanitas randomizes a "
                         "copy so that your model is never modified. Make the model deep-copyable (no open "
                         "files or locks as attributes)") from e


class StageSequence:
    """The stages of one randomization test; iterable (one :class:`Stage` at a time) and sized.

    Built by :func:`cascading` and :func:`independent`. Layer discovery and grouping run when the
    sequence is built, so bad names fail early; copying and randomizing happen while iterating.
    Attributes: ``mode``, ``order``, ``init`` (an :class:`InitScheme`), ``seed``, ``bn_stats``
    (the effective policy, ``"keep"`` or ``"reset"``), ``layers`` (forward order), ``blocks``
    (in the order they are randomized), ``copy``.
    """

    def __init__(self, mode: str, model: nn.Module, example_input: Any, *, order: str = "top_down",
                 init: str | InitScheme = "truncated_normal", seed: int = 0, blocks: Any = None,
                 bn_stats: str = "auto", copy: bool = False, draws: int = 1):
        if mode not in SEQUENCE_MODES:
            raise ConfigError(f"mode must be one of {', '.join(SEQUENCE_MODES)}, got {mode!r}")
        self.mode = mode
        self.order = _check_order(order)
        self.init = resolve_init(init)
        self.bn_stats = resolve_bn_stats(bn_stats, self.init)
        self.seed = int(seed)
        self.copy = bool(copy)
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
            raise ConfigError(f"draws must be a whole number >= 1 (independent random draws per stage), got {draws!r}")
        self.draws = draws
        self._model = model
        self._example = example_input
        self.layers: list[LayerInfo] = discover_layers(model, example_input)
        for l in self.layers:  # fail now, not halfway through a long run
            self.init.check(model.get_submodule(l.name), l.name)
        forward_blocks = group_layers(self.layers, blocks, model)
        self.blocks: list[Block] = forward_blocks[::-1] if self.order == "top_down" else forward_blocks
        self._by_name = {l.name: l for l in self.layers}
        self._forward_index = {l.name: l.index for l in self.layers}

    # -- sizes and names -----------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of stages (the original included); iterating yields ``1 + (len - 1) * draws`` items."""
        return len(self.blocks) + 1

    def draw_seed(self, draw: int) -> int:
        """The seed of draw ``draw``: ``seed`` itself for draw 0 (so one draw is the classic test), then
        seeds derived by SHA-256 of ``(seed, draw)``."""
        return self.seed if draw == 0 else layer_seed(self.seed, f"draw {draw}") % 2**32

    @property
    def stage_names(self) -> list[str]:
        return ["original", *(b.name for b in self.blocks)]

    def config(self) -> dict:
        """What determines the stages (for ``meta.json`` and resume keys)."""
        return {"mode": self.mode, "order": self.order, "init": self.init.config(), "seed": self.seed,
                "bn_stats": self.bn_stats, "blocks": [[b.name, list(b.layer_names)] for b in self.blocks],
                "draws": self.draws}

    def __repr__(self) -> str:
        return (f"StageSequence(mode={self.mode!r}, order={self.order!r}, init={self.init.name!r}, "
                f"seed={self.seed}, stages={len(self)})")

    # -- randomization ---------------------------------------------------------------------------
    def _randomize_block(self, working: nn.Module, block: Block, draw: int = 0) -> None:
        for name in block.layer_names:
            info = self._by_name[name]
            randomize_module(working.get_submodule(name), name, init=self.init, seed=self.draw_seed(draw),
                             bn_stats=self.bn_stats, param_names=info.param_names)

    def _snapshot(self, working: nn.Module, block: Block) -> list[tuple[torch.Tensor, torch.Tensor]]:
        saved = []
        for name in block.layer_names:
            m = working.get_submodule(name)
            tensors = [getattr(m, pn) for pn in self._by_name[name].param_names]
            if has_running_stats(m):
                tensors += [getattr(m, k) for k in _STAT_BUFFERS if isinstance(getattr(m, k, None), torch.Tensor)]
            saved += [(t, t.detach().clone()) for t in tensors]
        return saved

    def _sorted(self, names) -> tuple[str, ...]:
        return tuple(sorted(names, key=self._forward_index.__getitem__))

    def _emit(self, name: str, index: int, layers, working: nn.Module, block: Block | None, draw: int = 0) -> Stage:
        model = _deepcopy(working).eval() if self.copy else working
        return Stage(name=name, index=index, randomized_layers=self._sorted(layers), model=model, block=block,
                     draw=draw)

    @torch.no_grad()
    def _fresh(self) -> nn.Module:
        return prefer_fast_layout(_deepcopy(self._model).eval(), self._example)

    def iterate(self, start: int = 0) -> Iterator[Stage]:
        """Yield the stages from index ``start`` on (earlier cascading stages are applied, not yielded);
        each randomized stage ``draws`` times, draw 0 first."""
        if not 0 <= start <= len(self):
            raise ConfigError(f"start must be between 0 and {len(self)}, got {start}")
        # one working copy per draw for cascading (each accumulates its own random blocks); independent
        # randomization restores the block after each draw, so one copy serves all
        copies = self.draws if self.mode == "cascading" else 1
        working = [self._fresh() for _ in range(copies)]
        if start == 0:
            yield self._emit("original", 0, (), working[0], None)
        done: list[str] = []
        for k, block in enumerate(self.blocks, 1):
            if self.mode == "cascading":
                done += block.layer_names
                for r in range(self.draws):
                    with torch.no_grad():
                        self._randomize_block(working[r], block, r)
                    if k >= start:
                        yield self._emit(block.name, k, done, working[r], block, r)
            elif k >= start:
                for r in range(self.draws):
                    with torch.no_grad():
                        saved = self._snapshot(working[0], block)
                        self._randomize_block(working[0], block, r)
                    try:
                        yield self._emit(block.name, k, block.layer_names, working[0], block, r)
                    finally:
                        with torch.no_grad():
                            for t, v in saved:
                                t.copy_(v)

    def __iter__(self) -> Iterator[Stage]:
        return self.iterate(0)

    def stage(self, index: int) -> Stage:
        """Stage ``index`` alone, with a model of its own (stays valid); ``-1`` is the last stage."""
        n = len(self)
        if not -n <= index < n:
            raise ConfigError(f"stage index {index} out of range for {n} stages")
        index %= n
        working = self._fresh()
        if index == 0:
            return Stage("original", 0, (), working, None)
        block = self.blocks[index - 1]
        todo = self.blocks[:index] if self.mode == "cascading" else [block]
        with torch.no_grad():
            for b in todo:
                self._randomize_block(working, b)
        layers = [n for b in todo for n in b.layer_names]
        return Stage(block.name, index, self._sorted(layers), working, block)


def cascading(model: nn.Module, x_example: Any, *, order: str = "top_down",
              init: str | InitScheme = "truncated_normal", seed: int = 0, blocks: Any = None,
              bn_stats: str = "auto", copy: bool = False, draws: int = 1) -> StageSequence:
    """Cascading randomization: stage k has the top k blocks (``"bottom_up"``: the bottom k) randomized.

    Stage 0 is ``"original"``; a later stage is named after the block it just randomized. See the
    module docstring for ``copy`` and the lifetime of ``stage.model``; :mod:`sanitas.randomize.init`
    for ``init`` and ``bn_stats``; :func:`group_layers` for ``blocks``.
    """
    return StageSequence("cascading", model, x_example, order=order, init=init, seed=seed, blocks=blocks,
                         bn_stats=bn_stats, copy=copy, draws=draws)


def independent(model: nn.Module, x_example: Any, *, order: str = "top_down",
                init: str | InitScheme = "truncated_normal", seed: int = 0, blocks: Any = None,
                bn_stats: str = "auto", copy: bool = False, draws: int = 1) -> StageSequence:
    """Independent randomization: stage k has block k alone randomized, every other layer trained.

    Same arguments as :func:`cascading`; ``order`` only sets the order the blocks are visited in.
    """
    return StageSequence("independent", model, x_example, order=order, init=init, seed=seed, blocks=blocks,
                         bn_stats=bn_stats, copy=copy, draws=draws)


def count_stages(model: nn.Module, x_example: Any, blocks: Any = None) -> int:
    """Number of stages (the original included) of cascading or independent randomization."""
    return len(group_layers(discover_layers(model, x_example), blocks, model)) + 1


def randomize(model: nn.Module, x_example: Any, layers: Sequence[str] | None = None, *,
              init: str | InitScheme = "truncated_normal", seed: int = 0, bn_stats: str = "auto",
              inplace: bool = False) -> nn.Module:
    """A copy of ``model`` (the model itself with ``inplace=True``) with ``layers`` randomized.

    ``layers``: layer names or module prefixes (``None``: every layer, the fully randomized
    model). The weights equal those of the same layers in :func:`cascading` / :func:`independent`
    with the same ``seed``, ``init`` and ``bn_stats``.
    """
    scheme = resolve_init(init)
    found = discover_layers(model, x_example)
    if layers is None:
        chosen = [l.name for l in found]
    else:
        selectors = [layers] if isinstance(layers, str) else list(layers)
        if selectors:
            group_layers(found, [selectors])  # unknown names raise UnknownNameError here
        chosen = [l.name for l in found
                  if any(l.name == s or (s != "" and l.name.startswith(s + ".")) for s in selectors)]
    by_name = {l.name: l for l in found}
    for name in chosen:
        scheme.check(model.get_submodule(name), name)
    target = model if inplace else prefer_fast_layout(_deepcopy(model), x_example)
    with torch.no_grad():
        for name in chosen:
            randomize_module(target.get_submodule(name), name, init=scheme, seed=seed, bn_stats=bn_stats,
                             param_names=by_name[name].param_names)
    return target if inplace else target.eval()
