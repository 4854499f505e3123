"""The engine: every explanation computed once per (variant, method), scored by every similarity.

A *variant* is a model derived from the reference one (a randomized stage, a model trained on
permuted labels, another seed...). For each variant the engine computes each method's maps
once, scores them against the reference maps with every metric, and appends tidy rows
(one per image x method x variant x metric). Finished (variant, method) cells are written to
``out_dir/cells/`` atomically as they complete, each with its config's key and a checksum; a
re-run with the same config skips them, and one process at a time writes a directory.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Self

import pandas as pd
import torch
from torch import nn

from sanitas.cells import (COLLAPSE_RATIO, NORMALIZATIONS, CellOutput, Variant, as_image_batch, compute_cell,
                           constant_maps, degenerate_maps, explain_maps, light, normalize_maps, rows_bytes, score,
                           tidy_rows)
from sanitas.errors import StorageError
from sanitas.executors import LocalExecutor
from sanitas.explain import Explainer
from sanitas.utils.hashing import config_hash
from sanitas.utils.io import (atomic_write_bytes, atomic_write_json, atomic_write_table, directory_lock, ensure_dir,
                              read_json, sha256_bytes)
from sanitas.utils.memory import hold_freed_memory
from sanitas.utils.progress import progress, warn
from sanitas.utils.versions import versions  # noqa: F401 - engine.versions() is what checks record

# the cell vocabulary is part of the engine's interface (engine.Variant, engine.score, ...)
__all__ = ["COLLAPSE_RATIO", "NORMALIZATIONS", "CellStore", "Variant", "as_image_batch", "constant_maps",
           "degenerate_maps", "normalize_maps", "run", "score", "tidy_rows", "versions", "write_outputs"]

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

    def _verified(self, data: bytes, cell: str, method: str) -> bytes:
        info, payload = self._open(data, self.key)
        if info.get("variant") != cell or info.get("method") != method:
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
            cell = str(info["variant"])
            if cell.isdigit():  # draw 0 of a stage (later draws and the ceiling keep no maps for figures)
                shown[(int(cell), str(info["method"]))] = blob["maps"]
        return shown

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
        refused: dict[str, str] | None = None, references: list[pd.DataFrame] | None = None,
        executor=None, draws: int = 1):
    """Run the engine: the one loop over the cells of a check. Returns ``(rows DataFrame, shown maps
    {(variant_index, method): maps}, timings)``.

    Every (variant, method) cell not finished earlier is computed by :func:`sanitas.cells.compute_cell`
    on ``executor`` (:mod:`sanitas.executors`: ``None`` runs here; a Ray executor sends the cells to a
    cluster), and stored in ``store`` in the order the variants come, so every executor writes the same
    table. A method that cannot explain the model (:class:`~sanitas.errors.NotApplicableError`) is left
    out, its reason stored in ``refused`` (method -> message). ``reference`` is explained on ``x`` with
    ``reference_target``; a variant is explained on its own ``inputs`` with its ``adapt``-ed method when it
    has them (:class:`~sanitas.cells.Variant`), and every map is scored against the reference's.

    Reference comparisons go to ``references``, with a ``reference`` column: ``"floor"`` rows compare a
    stage's draw r >= 1 with its draw 0 (variants of one stage arrive draw 0 first), ``"ceiling"`` rows
    compare an independently trained model (``role="ceiling"``) with the reference model.
    """
    timings: dict[str, float] = {}
    refused = {} if refused is None else refused
    references = [] if references is None else references
    ex = executor if executor is not None else LocalExecutor()
    threads = torch.get_num_threads()
    gpus = 1 if x.device.type == "cuda" and not ex.streaming else 0
    shown: dict[tuple[int, str], torch.Tensor] = {}
    results: list[tuple[Variant, str, Any] | tuple[Variant, str, None, tuple]] = []
    x_h, ref_h = ex.put(x.cpu() if not ex.streaming else x), ex.put(reference)
    reference_maps: dict[str, Any] = {}
    stage_zero: Variant | None = None  # draw 0 of the current stage (its model stays valid while the stage runs)
    zero_h: dict[str, Any] = {}  # ... and its cells, for the floor of the later draws
    inputs_h: dict[str, Any] = {}  # the inputs of variants explained on their own, put once each
    todo = 0

    def inputs_of(v: Variant) -> Any:
        """What ``v`` is explained on: ``None`` for ``x``, else its own inputs' handle."""
        if v.inputs is None:
            return None
        if v.cell not in inputs_h:
            inputs_h[v.cell] = ex.put(v.inputs.cpu() if not ex.streaming else v.inputs)
        return inputs_h[v.cell]

    def method_of(v: Variant, method: str) -> Explainer:
        return explainers[method] if v.adapt is None else v.adapt(explainers[method])

    def ref_maps(method: str) -> Any:
        if method not in reference_maps:
            t = time.perf_counter()
            reference_maps[method] = ex.submit(explain_maps, ref_h, x_h, explainers[method], reference_target,
                                               normalize, threads, gpus=gpus)
            timings[f"explain/{method}/reference"] = time.perf_counter() - t
        return reference_maps[method]

    def finish(entry) -> None:
        """Store a finished cell (in submission order), or note the method's refusal."""
        variant, method, handle, cached = entry
        if cached is not None:
            rows, maps, extra = cached
            (references if variant.role == "ceiling" else frames).append(rows)
            if "references" in extra:
                references.append(pd.read_parquet(io.BytesIO(extra["references"])))
            if variant.role == "stage" and variant.draw == 0:
                shown[(variant.index, method)] = maps
            return
        out: CellOutput = ex.get(handle)
        if out.refused is not None:
            if method not in refused:
                refused[method] = out.refused
                warn(f"{method} cannot explain this model and is left out: {out.refused}")
            return
        for part, sec in out.seconds.items():
            timings[f"{part}/{method}/{variant.cell}"] = sec
        extra: dict[str, Any] = {"explainer": repr(explainers[method])}
        if variant.role == "ceiling":
            out.rows.insert(0, "reference", "ceiling")
            references.append(out.rows)
        else:
            frames.append(out.rows)
        if out.floor is not None:
            references.append(out.floor)
            extra["references"] = rows_bytes(out.floor)
        store.save(variant.cell, method, out.rows, out.shown, extra)
        if variant.role == "stage" and variant.draw == 0:
            shown[(variant.index, method)] = out.shown

    frames: list[pd.DataFrame] = []
    # the passes of every cell reuse one another's memory when the user opted in (sanitas.utils.memory)
    with hold_freed_memory(x.device) if ex.streaming else contextlib.nullcontext():
        for variant in progress(variants, desc="variants", total=total, quiet=quiet):
            if variant.role == "stage" and variant.draw == 0:
                stage_zero, zero_h = variant, {}
            model_h = None
            for method in explainers:
                if method in refused:
                    continue
                cached = store.load(variant.cell, method)
                if cached is not None and cached[2].get("explainer", repr(explainers[method])) != repr(
                        explainers[method]):
                    cached = None  # the same name for another method (a run whose config leaves methods out)
                if cached is not None:
                    results.append((variant, method, None, cached))
                    continue
                target = target_for(variant)
                own = (variant.model is reference and variant.inputs is None and variant.adapt is None
                       and _same_target(target, reference_target))
                if model_h is None and not own:
                    model_h = variant.model if ex.streaming else ex.put(variant.model)
                zero = None
                if variant.role == "stage" and variant.draw > 0:
                    if method not in zero_h:  # draw 0 finished in an earlier run: explain it again
                        zero_x = inputs_of(stage_zero)
                        zero_h[method] = ex.submit(explain_maps, stage_zero.model if ex.streaming else
                                                   ex.put(stage_zero.model), x_h if zero_x is None else zero_x,
                                                   method_of(stage_zero, method), target_for(stage_zero), normalize,
                                                   threads, gpus=gpus)
                    zero = zero_h[method]
                keep = variant.role == "stage" and variant.draw == 0 and draws > 1
                handle = ex.submit(compute_cell, None if own else model_h, x_h, method_of(variant, method), method,
                                   target, ref_maps(method), zero, metrics, normalize, extra_scores, light(variant),
                                   show, keep, threads, inputs_of(variant), gpus=gpus)
                if variant.role == "stage" and variant.draw == 0:
                    zero_h[method] = handle
                results.append((variant, method, handle, None))
                todo += 1
                if ex.streaming:  # finished already: store the cell now (kept if a later one raises)
                    for entry in results:
                        finish(entry)
                    results = []
            if ex.streaming:  # cells loaded from the store, in order, before the stage's model changes
                for entry in results:
                    finish(entry)
                results = []
        for entry in progress(results, desc="cells", total=len(results), quiet=quiet if todo else True):
            finish(entry)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return table, shown, timings


def write_meta(out_dir: Path, meta: dict[str, Any]) -> None:
    """``meta.json`` (anything JSON cannot hold is written as its ``str``)."""
    atomic_write_json(Path(out_dir) / "meta.json", json.loads(json.dumps(meta, default=str)))


SHOWN_INPUTS = "shown-inputs.pt"


def write_outputs(out_dir: Path, table: pd.DataFrame, meta: dict[str, Any],
                  calibration: pd.DataFrame | None = None, references: pd.DataFrame | None = None,
                  images: torch.Tensor | None = None) -> None:
    """``results.parquet``, ``results.csv`` and ``meta.json`` (DESIGN.md's contract), plus
    ``calibration.csv`` when the check computed its null bands (claims and reports read them back),
    ``references.parquet``/``.csv`` with the floor and ceiling comparisons when there are any, and
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
    if references is not None and len(references):
        atomic_write_table(out_dir / "references.parquet", references)
        atomic_write_table(out_dir / "references.csv", references)
