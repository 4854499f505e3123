"""On/off switches read from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping

OFF = ("0", "false", "no", "off")


def env_switch(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """A feature switch that is on unless ``name`` is set to 0, false, no or off (any case)."""
    value = (os.environ if environ is None else environ).get(name)
    return (value or "1").strip().lower() not in OFF
