"""The sanity checks, thin layers over :mod:`sanitas.engine`."""

from sanitas.checks.model_randomization import model_randomization
from sanitas.checks.result import CheckResult

__all__ = ["model_randomization", "CheckResult"]
