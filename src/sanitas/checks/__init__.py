"""The sanity checks: one class per check on the protocol of :mod:`sanitas.checks.base`, each with a function of
the same shape, ``check(model, x, y=None, *, methods, metrics, target, seed, out, quiet, ...)``."""

from sanitas.checks.base import CHECKS, Check
from sanitas.checks.data_randomization import DataRandomization, ceiling_verdicts, data_randomization
from sanitas.checks.input_invariance import InputInvariance, input_invariance, shifted_model
from sanitas.checks.model_randomization import ModelRandomization, model_randomization
from sanitas.checks.result import CheckResult

__all__ = ["Check", "CHECKS", "ModelRandomization", "model_randomization", "DataRandomization",
           "data_randomization", "InputInvariance", "input_invariance", "ceiling_verdicts", "shifted_model",
           "CheckResult"]
