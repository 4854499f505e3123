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
from sanitas.utils.versions import versions  # noqa: F401 - engine.versions() is what checks record

NORMALIZATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor] | None] = {
    "none": None,
    "maxabs": pp.normalize_maxabs,
    "rms": pp.normalize_rms,
}


@dataclass
class Variant:
    """One model to compare with the reference: a name, an order index and extra info columns."""

    name: str
    index: int
    model: nn.Module
    info: dict[str, Any] = field(default_factory=dict)


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

    def _path(self, variant_index: int, method: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in method)[:60]
        return self.cells / f"{variant_index:03d}-{safe}-{sha256_bytes(method.encode())[:8]}.pt"

    def load(self, variant_index: int, method: str):
        """``(rows, maps, extra)`` of a finished cell, or ``None`` (not finished, or not trustworthy)."""
        if self.out_dir is None:
            return None
        p = self._path(variant_index, method)
        if not p.exists():
            return None
        try:
            payload = self._verified(p.read_bytes(), variant_index, method)
            blob = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
            return pd.read_parquet(io.BytesIO(blob["rows"])), blob["maps"], blob.get("extra", {})
        except Exception as exc:  # noqa: BLE001 - a cell that cannot be trusted is recomputed, never used
            warn(f"{p}: {exc}; recomputing this cell")
            p.unlink(missing_ok=True)
            return None

    @classmethod
    def _open(cls, data: bytes, key: str) -> tuple[dict, bytes]:
        """A cell file's header and payload, checked against the run's ``key`` and the payload's checksum."""
        if not data.startswith(cls.MAGIC):
            raise ValueError("not a cell of this sanitas version (no header)")
        head, sep, payload = data[len(cls.MAGIC):].partition(b"\n")
        if not sep:
            raise ValueError("truncated header")
        info = json.loads(head)
        if info.get("key") != key:
            raise ValueError("written by a run with another config")
        if len(payload) != info.get("bytes") or sha256_bytes(payload) != info.get("sha256"):
            raise ValueError("checksum mismatch (truncated or damaged)")
        return info, payload

    def _verified(self, data: bytes, variant_index: int, method: str) -> bytes:
        info, payload = self._open(data, self.key)
        if info.get("variant") != variant_index or info.get("method") != method:
            raise ValueError(f"holds the cell of stage {info.get('variant')}, method {info.get('method')!r} "
                             "(copied or renamed)")
        return payload

    @classmethod
    def shown_maps(cls, out_dir: str | Path) -> dict[tuple[int, str], torch.Tensor]:
        """The maps every finished cell of ``out_dir`` keeps, ``{(stage, method): maps}``, read without opening
        the store for writing (a cell that fails its checks is left out; the report then lacks its maps)."""
        out_dir = Path(out_dir)
        try:
            key = read_json(out_dir / "run.json")["key"]
        except (StorageError, KeyError, TypeError):
            return {}
        shown = {}
        for path in sorted((out_dir / "cells").glob("*.pt")):
            try:
                info, payload = cls._open(path.read_bytes(), key)
                blob = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
            except Exception:  # noqa: BLE001 - a damaged cell is recomputed by the next run, never shown
                continue
            shown[(int(info["variant"]), str(info["method"]))] = blob["maps"]
        return shown

    def save(self, variant_index: int, method: str, rows: pd.DataFrame, maps: torch.Tensor, extra=None):
        if self.out_dir is None:
            return
        table = io.BytesIO()
        rows.to_parquet(table, index=False)  # exact: JSON kept 10 digits, so a resumed table differed from a fresh one
        buf = io.BytesIO()
        torch.save({"rows": table.getvalue(), "maps": maps.cpu(), "extra": extra or {}}, buf)
        payload = buf.getvalue()
        head = json.dumps({"key": self.key, "variant": variant_index, "method": method, "bytes": len(payload),
                           "sha256": sha256_bytes(payload)}, sort_keys=True).encode()
        atomic_write_bytes(self._path(variant_index, method), self.MAGIC + head + b"\n" + payload)


def tidy_rows(method: str, variant: Variant, values: dict[str, Any], target, n: int,
              constant: torch.Tensor | None = None) -> pd.DataFrame:
    """One row per image and metric for one (variant, method) cell, with the variant's info columns.

    ``constant``: per image, whether the map is constant (all zero, typically: a GradCAM whose
    ReLU removed everything); such maps have no ranks and score NaN, and the column lets every
    summary count them instead of dropping them silently.
    """
    tgt = (target if isinstance(target, torch.Tensor) else torch.full((n,), -1)).cpu().numpy()
    info = {k: [v] * n for k, v in variant.info.items()}
    const = (constant if constant is not None else torch.zeros(n, dtype=torch.bool)).cpu().numpy()
    return pd.concat([pd.DataFrame({"method": method, "variant": variant.name, "stage": variant.index,
                                    "metric": metric, "image": range(n),
                                    "value": torch.as_tensor(v).double().cpu().numpy(), "target": tgt,
                                    "constant_map": const, **info})
                      for metric, v in values.items()], ignore_index=True)


def constant_maps(maps: torch.Tensor) -> torch.Tensor:
    """Per image: True when the map holds one value everywhere (no ranking of its elements exists)."""
    flat = maps.detach().flatten(1)
    return flat.amax(1) == flat.amin(1)


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


def run(reference: nn.Module, variants: Iterable[Variant], x: torch.Tensor,
        explainers: dict[str, Explainer], metrics: dict[str, Any],
        target_for: Callable[[Variant], torch.Tensor | str],
        store: CellStore, reference_target: torch.Tensor | str, normalize: str | None = None,
        show: int = 8, quiet: bool | None = None, total: int | None = None,
        extra_scores: Callable[[Variant, str, torch.Tensor, torch.Tensor], dict] | None = None,
        refused: dict[str, str] | None = None):
    """Run the engine. Returns ``(rows DataFrame, shown maps {(variant_index, method): maps}, timings)``.

    A method that cannot be applied to the model (:class:`~sanitas.errors.NotApplicableError`: a
    layer its rules do not cover, no convolutional layer, ...) is skipped and its reason stored in
    ``refused`` (method -> message); the other methods run.
    """
    timings: dict[str, float] = {}
    refused = {} if refused is None else refused
    shown: dict[tuple[int, str], torch.Tensor] = {}
    frames: list[pd.DataFrame] = []
    ref_maps: dict[str, torch.Tensor] = {}

    def ref(method: str) -> torch.Tensor:
        if method not in ref_maps:
            t = time.perf_counter()
            ref_maps[method] = normalize_maps(explainers[method](reference, x, reference_target), normalize).detach()
            timings[f"explain/{method}/reference"] = time.perf_counter() - t
        return ref_maps[method]

    # the passes of every cell reuse one another's memory (see sanitas.utils.memory)
    with hold_freed_memory(x.device):
        for variant in progress(variants, desc="variants", total=total, quiet=quiet):
            for method, explainer in explainers.items():
                if method in refused:
                    continue
                cached = store.load(variant.index, method)
                if cached is not None:
                    rows, maps, _ = cached
                    frames.append(rows)
                    shown[(variant.index, method)] = maps
                    continue
                t = time.perf_counter()
                target = target_for(variant)
                try:
                    if variant.model is reference and _same_target(target, reference_target):
                        maps = ref(method)  # the unchanged model (stage 0): its maps are the reference, once
                    else:
                        maps = normalize_maps(explainer(variant.model, x, target), normalize).detach()
                        ref(method)
                except NotApplicableError as exc:
                    refused[method] = str(exc)
                    warnings.warn(f"{method} cannot explain this model and is left out: {exc}", stacklevel=2)
                    continue
                timings[f"explain/{method}/{variant.name}"] = time.perf_counter() - t
                t = time.perf_counter()
                values = score(metrics, ref(method), maps, x)
                timings[f"score/{method}/{variant.name}"] = time.perf_counter() - t
                if extra_scores is not None:
                    values.update(extra_scores(variant, method, ref(method), maps))
                rows = tidy_rows(method, variant, values, target, x.shape[0], constant_maps(maps))
                keep = maps[:show].cpu()
                store.save(variant.index, method, rows, keep)
                frames.append(rows)
                shown[(variant.index, method)] = keep
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return table, shown, timings


def write_meta(out_dir: Path, meta: dict[str, Any]) -> None:
    """``meta.json`` (anything JSON cannot hold is written as its ``str``)."""
    atomic_write_json(Path(out_dir) / "meta.json", json.loads(json.dumps(meta, default=str)))


SHOWN_INPUTS = "shown-inputs.pt"


def write_outputs(out_dir: Path, table: pd.DataFrame, meta: dict[str, Any],
                  calibration: pd.DataFrame | None = None, images: torch.Tensor | None = None) -> None:
    """``results.parquet``, ``results.csv`` and ``meta.json`` (DESIGN.md's contract), plus
    ``calibration.csv`` when the check computed its null bands (claims and reports read them back), and
    the inputs whose maps the cells keep (``images``: what ``sanitas report`` draws beside them)."""
    ensure_dir(out_dir)
    if images is not None:
        from sanitas.utils.io import atomic_torch_save

        atomic_torch_save(out_dir / SHOWN_INPUTS, images.detach().cpu())
    atomic_write_table(out_dir / "results.parquet", table)
    atomic_write_table(out_dir / "results.csv", table)
    write_meta(out_dir, meta)
    if calibration is not None:
        atomic_write_table(out_dir / "calibration.csv", calibration)
