"""The ``sanitas`` command line: the group and its shared helpers in :mod:`sanitas.cli.app`, the commands
in :mod:`~sanitas.cli.info` (what is there), :mod:`~sanitas.cli.checks` (one check each) and
:mod:`~sanitas.cli.studies` (configs, the papers, reports). Importing it stays light: each command
imports torch and the rest when it runs."""

from sanitas.cli import checks, info, studies  # noqa: F401 - importing a module registers its commands
from sanitas.cli.app import main

__all__ = ["main"]
