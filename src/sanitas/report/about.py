"""What a results directory is about, in the words its report opens with: the model (as the user named it),
the data (where it came from, which folder is which class) and how the model did on the explained images."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def about_run(source, data) -> dict[str, Any]:
    """The model spec and the dataset of a run (:class:`~sanitas.models.ModelSource`, :class:`~sanitas.data.Dataset`)."""
    about = {"model": source.describe(), "model_spec": source.spec_string(), "data": data.describe(),
             "classes": list(data.classes)}
    for key in ("class_order", "layout", "splits"):
        if data.info.get(key):
            about[key] = data.info[key]
    return about


def annotate(result, out, about: dict[str, Any]) -> None:
    """Add ``about`` to the result's meta (and to ``out/meta.json``, which the report is rebuilt from)."""
    from sanitas.engine import write_meta

    result.meta["about"] = about
    if out is not None:
        write_meta(Path(out), result.meta)
