"""A cell, the unit of work of every check: one model explained by one method, scored by every metric.

The engine (:mod:`sanitas.engine`) decides which cells a check needs and stores the finished ones;
an executor (:mod:`sanitas.executors`) runs :func:`compute_cell` here or on a Ray cluster. A cell
needs only what its arguments carry (the model, the inputs, the method, the target, the reference
maps), so it computes the same floats wherever it runs.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd
import torch
from torch import nn

from sanitas.errors import ConfigError, NotApplicableError
from sanitas.explain import postprocess as pp

NORMALIZATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor] | None] = {
    "none": None,
    "maxabs": pp.normalize_maxabs,
    "rms": pp.normalize_rms,
}


@dataclass
class Variant:
    """One model to compare with the reference: a name, an order index and extra info columns.

    ``draw``: which independent random draw of the stage this is (0, 1, ...); draws after the first
    are also compared with draw 0 (the stage's *floor*: how alike two random draws are).
    ``role``: ``"stage"`` (rows in the results table) or ``"ceiling"`` (an independently trained
    model: how alike the maps of two trained models are; rows in the references table).
    ``inputs``: what this model is explained on, when not the check's ``x`` (input invariance: ``x + c``
    on a twin that computes on it what the model computes on ``x``); ``adapt``: how a method is changed
    for this model (``explainer -> explainer``, e.g. a baseline moved by ``c``; called where the engine
    runs, not in a cell). Either way the maps are scored against the reference model's maps on ``x``.
    """

    name: str
    index: int
    model: nn.Module
    info: dict[str, Any] = field(default_factory=dict)
    draw: int = 0
    role: str = "stage"
    inputs: torch.Tensor | None = field(default=None, repr=False, compare=False)
    adapt: Callable[[Any], Any] | None = field(default=None, repr=False, compare=False)

    @property
    def cell(self) -> str:
        """The cell's identity within a run: stage index, draw and role."""
        tag = f"{self.index:03d}" if self.role == "stage" else f"{self.role}{self.index:03d}"
        return tag if self.draw == 0 else f"{tag}d{self.draw}"


def normalize_maps(maps: torch.Tensor, how: str | None) -> torch.Tensor:
    how = how or "none"
    if how not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalization {how!r}: use one of {sorted(NORMALIZATIONS)}")
    fn = NORMALIZATIONS[how]
    return maps if fn is None else fn(maps)


def tidy_rows(method: str, variant: Variant, values: dict[str, Any], target, n: int,
              constant: torch.Tensor | None = None, degenerate: torch.Tensor | None = None) -> pd.DataFrame:
    """One row per image and metric for one (variant, method) cell, with the variant's info columns.

    ``constant``: per image, whether the map is constant (all zero, typically: a GradCAM whose
    ReLU removed everything); such maps have no ranks and score NaN. ``degenerate``: whether the
    map's magnitude collapsed (see :func:`degenerate_maps`), so that its scores compare numerical
    noise. Both columns let every summary count these images and verdicts leave them out.
    """
    tgt = (target if isinstance(target, torch.Tensor) else torch.full((n,), -1)).cpu().numpy()
    info = {k: [v] * n for k, v in variant.info.items()}
    no = torch.zeros(n, dtype=torch.bool)
    const = (constant if constant is not None else no).cpu().numpy()
    degen = (degenerate if degenerate is not None else no).cpu().numpy()
    return pd.concat([pd.DataFrame({"method": method, "variant": variant.name, "stage": variant.index,
                                    "draw": variant.draw, "metric": metric, "image": range(n),
                                    "value": torch.as_tensor(v).double().cpu().numpy(), "target": tgt,
                                    "constant_map": const, "degenerate_map": degen, **info})
                      for metric, v in values.items()], ignore_index=True)


def constant_maps(maps: torch.Tensor) -> torch.Tensor:
    """Per image: True when the map holds one value everywhere (no ranking of its elements exists)."""
    flat = maps.detach().flatten(1)
    return flat.amax(1) == flat.amin(1)


#: a map whose mean magnitude fell below this fraction of the original map's is numerical noise
COLLAPSE_RATIO = 1e-6


def degenerate_maps(maps: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per image: True when the signal vanished, i.e. the map's mean absolute value is below
    :data:`COLLAPSE_RATIO` of the reference map's (or below float32's smallest normal number).

    Re-initializing a BatchNorm network with small weights (truncated normal, std 0.01) shrinks its
    maps stage by stage to 1e-9..1e-15 of their original magnitude; every similarity computed after
    that compares rounding noise (GradCAM then scores the same edge pattern on every image). Such
    maps are counted and left out of verdicts, not scored as if they were explanations.
    """
    scale = maps.detach().flatten(1).abs().double().mean(1)
    ref = reference.detach().flatten(1).abs().double().mean(1)
    tiny = torch.finfo(torch.float32).tiny
    return ((scale < COLLAPSE_RATIO * ref) | (scale < tiny)) & ~constant_maps(maps)


def as_image_batch(t: torch.Tensor) -> torch.Tensor:
    """Maps (or inputs) of signals and tabular rows as ``(N, 1, 1, D)``: the rank and correlation
    metrics score them flattened (image metrics are refused before, see ``check_metrics_for_inputs``)."""
    return t if t.dim() == 4 else t.reshape(t.shape[0], 1, 1, -1)


def score(metrics: dict[str, Any], ref: torch.Tensor, maps: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
    ref, maps, x = as_image_batch(ref), as_image_batch(maps), as_image_batch(x)
    return {name: m(ref, maps, x=x).detach().cpu().double() for name, m in metrics.items()}


def rows_bytes(rows: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    rows.to_parquet(buf, index=False)
    return buf.getvalue()


@dataclass
class CellOutput:
    """What a cell returns: its rows, the maps it keeps for figures, the floor rows of a later draw,
    the full maps when later draws of its stage compare with them, or why the method was refused."""

    rows: pd.DataFrame | None = None
    shown: torch.Tensor | None = None
    floor: pd.DataFrame | None = None
    maps: torch.Tensor | None = None
    refused: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run with the caller's number of intra-op threads (a reduction's float result can depend on it)."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def explain_maps(model: nn.Module, x: torch.Tensor, explainer, target, normalize: str | None,
                 threads: int | None = None):
    """A method's (normalized, detached) maps of ``model`` on ``x``, or the NotApplicableError that refused it."""
    with _threads(threads):
        try:
            return normalize_maps(explainer(model, x, target), normalize).detach()
        except NotApplicableError as exc:
            return exc


def compute_cell(model: nn.Module | None, x: torch.Tensor, explainer, method: str, target, reference,
                 zero, metrics: dict[str, Any], normalize: str | None, extra_scores: Callable | None,
                 variant: "Variant", show: int, keep_maps: bool, threads: int | None = None,
                 inputs: torch.Tensor | None = None) -> CellOutput:
    """Explain ``model`` (``None``: the reference model itself, whose maps are ``reference``) on ``inputs``
    (``None``: on ``x``), score the maps against ``reference`` (the reference model's on ``x``) with every
    metric, and, for a later draw of a stage, against the stage's draw 0 (``zero``: its CellOutput): the floor."""
    for prior in (reference, zero.maps if isinstance(zero, CellOutput) else zero):
        if isinstance(prior, Exception):
            return CellOutput(refused=str(prior))
    if isinstance(zero, CellOutput) and zero.refused:
        return CellOutput(refused=zero.refused)
    t = time.perf_counter()
    maps = reference if model is None else explain_maps(model, x if inputs is None else inputs, explainer, target,
                                                        normalize, threads)
    if isinstance(maps, Exception):
        return CellOutput(refused=str(maps))
    seconds = {"explain": time.perf_counter() - t}
    t = time.perf_counter()
    with _threads(threads):
        values = score(metrics, reference, maps, x)
        if extra_scores is not None:
            values.update(extra_scores(variant, method, reference, maps))
        n = x.shape[0]
        const, degen = constant_maps(maps), degenerate_maps(maps, reference)
        rows = tidy_rows(method, variant, values, target, n, const, degen)
        floor = None
        if zero is not None:
            zero_maps = zero.maps if isinstance(zero, CellOutput) else zero
            floor = tidy_rows(method, variant, score(metrics, zero_maps, maps, x), target, n, const, degen)
            floor.insert(0, "reference", "floor")
    seconds["score"] = time.perf_counter() - t
    return CellOutput(rows, maps[:show].cpu(), floor, maps if keep_maps else None, None, seconds)


def light(variant: "Variant") -> "Variant":
    """The variant without its model and inputs (what a cell's rows need; cheap to send to a worker)."""
    return replace(variant, model=None, inputs=None, adapt=None)
