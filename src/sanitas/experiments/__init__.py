"""The papers' protocols as declarative configs, their claims, and ``reproduce``.

>>> from sanitas.experiments import list_papers, load_config, run_config, reproduce
>>> run = run_config("sanity-checks", "out/sanity", quick=True)        # doctest: +SKIP
>>> run.claims[["id", "measured", "verdict"]]                          # doctest: +SKIP
>>> result = reproduce("all", "out/all")                               # doctest: +SKIP
>>> result.claims, result.report        # a named tuple: runs, claims, report = reproduce(...) works too
"""

from sanitas.experiments.claims import claims_table, evaluate_claim, measure
from sanitas.experiments.config import config_text, list_papers, load_config, resolve
from sanitas.experiments.reproduce import PaperRun, Reproduction, load_outcome, load_run, reproduce, run_config
from sanitas.experiments.runners import RUNNERS, Outcome, build_methods

__all__ = ["claims_table", "evaluate_claim", "measure", "config_text", "list_papers", "load_config", "resolve",
           "PaperRun", "Reproduction", "load_outcome", "load_run", "reproduce", "run_config", "RUNNERS", "Outcome",
           "build_methods"]
