"""The versions results record (``meta.json``) and reports show."""

from __future__ import annotations

import importlib.metadata
import platform
import sys

PACKAGES = ("torch", "numpy", "scipy", "pandas")


def versions() -> dict[str, str]:
    """sanitas, torch, numpy, scipy, pandas and Python. A package's own ``__version__`` when it is imported,
    else its installed distribution's (the same string), so that a report written without torch needs none."""
    import sanitas

    out = {"sanitas": sanitas.__version__}
    for name in PACKAGES:
        module = sys.modules.get(name)
        out[name] = module.__version__ if module is not None else importlib.metadata.version(name)
    out["python"] = platform.python_version()
    return out
