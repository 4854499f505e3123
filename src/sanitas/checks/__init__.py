"""The sanity checks, thin layers over :mod:`sanitas.engine`."""

from sanitas.checks.data_randomization import (ceiling_verdicts, data_randomization, input_invariance,
                                               shifted_model)
from sanitas.checks.model_randomization import model_randomization
from sanitas.checks.result import CheckResult

__all__ = ["model_randomization", "data_randomization", "input_invariance", "ceiling_verdicts", "shifted_model",
           "CheckResult"]
