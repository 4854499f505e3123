"""The engine: every explanation computed once per (variant, method), scored by every similarity.

A *variant* is a model derived from the reference one (a randomized stage, a model trained on
permuted labels, another seed...). For each variant the engine computes each method's maps
once, scores them against the reference maps with every metric, and appends tidy rows
(one per image x method x variant x metric). Finished (variant, method) cells are written to
``out_dir/cells/`` atomically as they complete, each with its config's key and a checksum; a
re-run with the same config skips them, and one process at a time writes a directory.
"""

from __future__ import annotations

import io
import json
import time
import warnings
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import pandas as pd
import torch
from torch import nn

from sanitas.errors import ConfigError, NotApplicableError, StorageError
from sanitas.explain import Explainer
from sanitas.explain import postprocess as pp
from sanitas.utils.hashing import config_hash
from sanitas.utils.io import (atomic_write_bytes, atomic_write_json, atomic_write_table, directory_lock, ensure_dir,
                              read_json, sha256_bytes)
from sanitas.utils.memory import hold_freed_memory
from sanitas.utils.progress import progress, warn

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
    """

    name: str
    index: int
    model: nn.Module
    info: dict[str, Any] = field(default_factory=dict)
    draw: int = 0
    role: str = "stage"

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


class CellStore:
    """Finished cells of a run on disk: ``cells/<variant-index>-<method>-<hash>.pt`` (rows + shown maps).

    A results directory belongs to one config at a time. The store holds an OS lock on it while it
    is open (a second process writing there gets :class:`~sanitas.errors.ResultsBusyError`), and
    every cell carries the config's key, its own (variant, method) and a SHA-256 of its content. A
    cell that fails any of these (damaged, truncated, copied from another stage or another run) is
    recomputed, with a warning that says why. Use it as a context manager (``with CellStore(...)
    as store``) so the lock is released when the run ends, also when it raises.
    """

    MAGIC = b"sanitas-cell 2\n"

    def __init__(self, out_dir: str | Path | None, config: dict[str, Any], resume: bool = True):
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.key = config_hash(config)
        self.config = config
        self._lock = None
        if self.out_dir is None:
            return
        self._lock = directory_lock(self.out_dir)
        self._lock.__enter__()
        # released when the store is closed, or at the latest when it is garbage collected
        self._finalizer = weakref.finalize(self, self._lock.__exit__, None, None, None)
        try:
            self.cells = ensure_dir(self.out_dir / "cells")
            self._start(resume)
        except BaseException:
            self.close()
            raise

    def _start(self, resume: bool) -> None:
        marker = self.out_dir / "run.json"
        stale = None
        if marker.exists():
            try:
                old = read_json(marker)
            except StorageError as exc:
                old, stale = {}, f"{exc}"
            if old.get("key") != self.key:
                stale = stale or "the config changed"
            elif not resume:
                stale = "--no-resume"
        if stale is not None:
            old_cells = list(self.cells.glob("*.pt"))
            if old_cells:
                warn(f"{self.out_dir}: {stale}; deleting its {len(old_cells)} finished cell(s) and starting afresh")
            for f in old_cells:
                f.unlink(missing_ok=True)
        atomic_write_json(marker, {"key": self.key, "config": self.config})

    def close(self) -> None:
        """Release the directory's lock (idempotent)."""
        if self._lock is not None:
            self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _path(self, cell: str, method: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in method)[:60]
        return self.cells / f"{cell}-{safe}-{sha256_bytes(method.encode())[:8]}.pt"

    def load(self, cell: str, method: str):
        """``(rows, maps, extra)`` of a finished cell, or ``None`` (not finished, or not trustworthy)."""
        if self.out_dir is None:
            return None
        p = self._path(cell, method)
        if not p.exists():
            return None
        try:
            payload = self._verified(p.read_bytes(), cell, method)
            blob = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
            return pd.read_parquet(io.BytesIO(blob["rows"])), blob["maps"], blob.get("extra", {})
        except Exception as exc:  # noqa: BLE001 - a cell that cannot be trusted is recomputed, never used
            warn(f"{p}: {exc}; recomputing this cell")
            p.unlink(missing_ok=True)
            return None

    def _verified(self, data: bytes, cell: str, method: str) -> bytes:
        if not data.startswith(self.MAGIC):
            raise ValueError("not a cell of this sanitas version (no header)")
        head, sep, payload = data[len(self.MAGIC):].partition(b"\n")
        if not sep:
            raise ValueError("truncated header")
        info = json.loads(head)
        if info.get("key") != self.key:
            raise ValueError("written by a run with another config")
        if info.get("variant") != cell or info.get("method") != method:
            raise ValueError(f"holds the cell of stage {info.get('variant')}, method {info.get('method')!r} "
                             "(copied or renamed)")
        if len(payload) != info.get("bytes") or sha256_bytes(payload) != info.get("sha256"):
            raise ValueError("checksum mismatch (truncated or damaged)")
        return payload

    def save(self, cell: str, method: str, rows: pd.DataFrame, maps: torch.Tensor, extra=None):
        if self.out_dir is None:
            return
        table = io.BytesIO()
        rows.to_parquet(table, index=False)  # exact: JSON kept 10 digits, so a resumed table differed from a fresh one
        buf = io.BytesIO()
        torch.save({"rows": table.getvalue(), "maps": maps.cpu(), "extra": extra or {}}, buf)
        payload = buf.getvalue()
        head = json.dumps({"key": self.key, "variant": cell, "method": method, "bytes": len(payload),
                           "sha256": sha256_bytes(payload)}, sort_keys=True).encode()
        atomic_write_bytes(self._path(cell, method), self.MAGIC + head + b"\n" + payload)


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


def _same_target(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a.cpu(), b.cpu()))
    return isinstance(a, str) and isinstance(b, str) and a == b


def _rows_bytes(rows: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    rows.to_parquet(buf, index=False)
    return buf.getvalue()


def run(reference: nn.Module, variants: Iterable[Variant], x: torch.Tensor,
        explainers: dict[str, Explainer], metrics: dict[str, Any],
        target_for: Callable[[Variant], torch.Tensor | str],
        store: CellStore, reference_target: torch.Tensor | str, normalize: str | None = None,
        show: int = 8, quiet: bool | None = None, total: int | None = None,
        extra_scores: Callable[[Variant, str, torch.Tensor, torch.Tensor], dict] | None = None,
        refused: dict[str, str] | None = None, references: list[pd.DataFrame] | None = None):
    """Run the engine. Returns ``(rows DataFrame, shown maps {(variant_index, method): maps}, timings)``.

    A method that cannot be applied to the model (:class:`~sanitas.errors.NotApplicableError`: a
    layer its rules do not cover, no convolutional layer, ...) is skipped and its reason stored in
    ``refused`` (method -> message); the other methods run.

    Reference comparisons go to ``references`` (a list the caller reads afterwards), with a
    ``reference`` column: ``"floor"`` rows compare a stage's draw r >= 1 with its draw 0 (variants
    of one stage arrive draw 0 first), ``"ceiling"`` rows compare an independently trained model
    (``role="ceiling"``) with the reference model.
    """
    timings: dict[str, float] = {}
    refused = {} if refused is None else refused
    references = [] if references is None else references
    shown: dict[tuple[int, str], torch.Tensor] = {}
    frames: list[pd.DataFrame] = []
    ref_maps: dict[str, torch.Tensor] = {}
    stage_zero: Variant | None = None  # draw 0 of the current stage (its model stays valid while the stage runs)
    zero_maps: dict[str, torch.Tensor] = {}  # ... and its maps, for the floor of the later draws

    def ref(method: str) -> torch.Tensor:
        if method not in ref_maps:
            t = time.perf_counter()
            ref_maps[method] = normalize_maps(explainers[method](reference, x, reference_target), normalize).detach()
            timings[f"explain/{method}/reference"] = time.perf_counter() - t
        return ref_maps[method]

    def explain_variant(variant: Variant, method: str, target) -> torch.Tensor:
        if variant.model is reference and _same_target(target, reference_target):
            return ref(method)  # the unchanged model (stage 0): its maps are the reference, computed once
        maps = normalize_maps(explainers[method](variant.model, x, target), normalize).detach()
        ref(method)
        return maps

    # the passes of every cell reuse one another's memory (see sanitas.utils.memory)
    with hold_freed_memory(x.device):
        for variant in progress(variants, desc="variants", total=total, quiet=quiet):
            if variant.role == "stage" and variant.draw == 0:
                stage_zero, zero_maps = variant, {}
            for method in explainers:
                if method in refused:
                    continue
                cached = store.load(variant.cell, method)
                if cached is not None:
                    rows, maps, extra = cached
                    (references if variant.role == "ceiling" else frames).append(rows)
                    if "references" in extra:
                        references.append(pd.read_parquet(io.BytesIO(extra["references"])))
                    if variant.role == "stage" and variant.draw == 0:
                        shown[(variant.index, method)] = maps
                    continue
                t = time.perf_counter()
                target = target_for(variant)
                try:
                    maps = explain_variant(variant, method, target)
                except NotApplicableError as exc:
                    refused[method] = str(exc)
                    warnings.warn(f"{method} cannot explain this model and is left out: {exc}", stacklevel=2)
                    continue
                timings[f"explain/{method}/{variant.cell}"] = time.perf_counter() - t
                t = time.perf_counter()
                values = score(metrics, ref(method), maps, x)
                timings[f"score/{method}/{variant.cell}"] = time.perf_counter() - t
                if extra_scores is not None:
                    values.update(extra_scores(variant, method, ref(method), maps))
                n = x.shape[0]
                rows = tidy_rows(method, variant, values, target, n, constant_maps(maps), degenerate_maps(maps, ref(method)))
                extra: dict[str, Any] = {}
                if variant.role == "ceiling":
                    rows.insert(0, "reference", "ceiling")
                    references.append(rows)
                elif variant.draw == 0:
                    zero_maps[method] = maps
                    frames.append(rows)
                else:
                    frames.append(rows)
                    if method not in zero_maps:  # draw 0 finished in an earlier run: explain it again
                        zero_maps[method] = explain_variant(stage_zero, method, target_for(stage_zero))
                    floor = tidy_rows(method, variant, score(metrics, zero_maps[method], maps, x), target, n,
                                      constant_maps(maps), degenerate_maps(maps, ref(method)))
                    floor.insert(0, "reference", "floor")
                    references.append(floor)
                    extra["references"] = _rows_bytes(floor)
                keep = maps[:show].cpu()
                store.save(variant.cell, method, rows, keep, extra)
                if variant.role == "stage" and variant.draw == 0:
                    shown[(variant.index, method)] = keep
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return table, shown, timings


def versions() -> dict[str, str]:
    import platform

    import numpy
    import scipy

    import sanitas

    return {"sanitas": sanitas.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "scipy": scipy.__version__, "pandas": pd.__version__, "python": platform.python_version()}


def write_outputs(out_dir: Path, table: pd.DataFrame, meta: dict[str, Any],
                  calibration: pd.DataFrame | None = None, references: pd.DataFrame | None = None) -> None:
    """``results.parquet``, ``results.csv`` and ``meta.json`` (DESIGN.md's contract), plus
    ``calibration.csv`` when the check computed its null bands (claims and reports read them back)
    and ``references.parquet``/``.csv`` with the floor and ceiling comparisons, when there are any."""
    ensure_dir(out_dir)
    atomic_write_table(out_dir / "results.parquet", table)
    atomic_write_table(out_dir / "results.csv", table)
    atomic_write_json(out_dir / "meta.json", json.loads(json.dumps(meta, default=str)))
    if calibration is not None:
        atomic_write_table(out_dir / "calibration.csv", calibration)
    if references is not None and len(references):
        atomic_write_table(out_dir / "references.parquet", references)
        atomic_write_table(out_dir / "references.csv", references)
