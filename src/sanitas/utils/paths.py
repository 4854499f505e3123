"""Where sanitas keeps its cache."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: ``$SANITAS_CACHE`` if set, else ``~/.cache/sanitas``."""
    env = os.environ.get("SANITAS_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "sanitas"
    return root


def models_dir() -> Path:
    return cache_dir() / "models"
