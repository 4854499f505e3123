"""Experiment configs: each paper's protocol as a YAML file shipped with the package.

A config names a paper, a dataset, a seed, default image counts and a set of experiments (each
one a check: ``model_randomization``, ``data_randomization``, ``completeness``, ...), plus the
paper's checkable claims (see :mod:`sanitas.experiments.claims`). ``quick:`` holds the overrides
of the small profile that ``make demo`` runs. ``draws`` (random draws of every randomized stage) and
``model_seeds`` (1 + the number of independently trained copies of the model whose maps are the
ceiling of the per-method verdicts) are defaults for the model randomization experiments; the shipped
configs draw 5 times in the full profile and once in ``quick:``. ``training: {train_size: N}`` (top level, or
per experiment) trains every model the study trains on a seeded subset of N training images (the quick
profile's smaller models; :func:`sanitas.models.train.training_defaults`). Copy one (``sanitas reproduce --show PAPER``), edit
it, and run it with ``sanitas run CONFIG --out DIR``.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sanitas.errors import ConfigError, UnknownNameError
from sanitas.experiments.schema import DRAW_MODES


def _config_dir():
    return resources.files("sanitas.experiments") / "configs"


def list_papers() -> list[str]:
    """Names of the configs shipped with sanitas (one per paper)."""
    return sorted(p.name[:-5] for p in _config_dir().iterdir() if p.name.endswith(".yaml"))


def config_text(name_or_path: str | Path) -> str:
    """The YAML text of a shipped config (by paper name) or of a file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; `sanitas reproduce --list` shows the shipped "
                              f"ones and `sanitas reproduce --show PAPER > my.yaml` copies one")
        return path.read_text()
    name = str(name_or_path)
    if name not in list_papers():
        raise UnknownNameError(f"unknown paper {name!r}: choose from {list_papers()} or give a .yaml file")
    return (_config_dir() / f"{name}.yaml").read_text()


def load_config(name_or_path: str | Path) -> dict[str, Any]:
    """Parse and validate a config; errors name the file, the YAML line, the key and the fix."""
    from sanitas.experiments.schema import yaml_lines

    text = config_text(name_or_path)
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name_or_path}: not valid YAML ({exc})") from None
    validate(cfg, str(name_or_path), yaml_lines(text))
    return cfg


def validate(cfg: Any, where: str = "config", lines: dict | None = None) -> None:
    """Check a parsed config against :mod:`sanitas.experiments.schema` (unknown keys, types, ranges)."""
    from sanitas.experiments.schema import check_config

    check_config(cfg, where, lines)


def resolve(cfg: dict[str, Any], *, quick: bool = False, images: int | None = None,
            only: list[str] | None = None, dataset: str | None = None) -> dict[str, Any]:
    """The config with the quick profile / image count applied and defaults filled into each experiment.

    ``dataset`` runs the same protocol on another dataset (``mnist``, any registered name or a path): it
    replaces the dataset of the config and of every experiment, and drops their ``classes:`` (which order the
    classes of the config's own dataset); models are then trained on it (cached under its name)."""
    cfg = copy.deepcopy(cfg)
    if quick:
        q = cfg.get("quick") or {}
        for key, value in q.items():
            if key == "experiments":
                for name, over in value.items():
                    cfg["experiments"][name].update(over)
            elif key != "experiments":
                cfg[key] = value
    cfg.pop("quick", None)
    if dataset is not None:
        if not isinstance(dataset, str) or not dataset.strip():
            raise ConfigError(f"dataset must be a dataset name or path, got {dataset!r}")
        cfg["dataset"] = dataset
        cfg.pop("classes", None)
        for exp in cfg["experiments"].values():
            exp["dataset"] = dataset
            exp.pop("classes", None)
    for name, exp in cfg["experiments"].items():
        exp.setdefault("dataset", cfg.get("dataset", "fashion-mnist"))
        if cfg.get("classes") is not None:
            exp.setdefault("classes", cfg["classes"])
        exp.setdefault("seed", cfg.get("seed", 0))
        if cfg.get("training"):
            exp.setdefault("training", dict(cfg["training"]))
        exp.setdefault("images", cfg.get("images", 64))
        if exp["check"] == "model_randomization":
            # the config's draws / model_seeds are defaults for the experiments that take them (draws: the
            # modes that randomize stage by stage; efficient and random_logit draw once)
            if exp.get("mode", "cascading") in DRAW_MODES:
                exp.setdefault("draws", cfg.get("draws", 1))
            exp.setdefault("model_seeds", cfg.get("model_seeds", 1))
        elif exp["check"] == "shared_zeros":   # its measured points come from a cascading randomization
            exp.setdefault("draws", cfg.get("draws", 1))
        if images is not None:
            from sanitas.utils import validation

            n = validation.count(images, "images")
            exp["images"] = n if exp["check"] != "dasp" else min(n, exp["images"])
    if only:
        missing = [n for n in only if n not in cfg["experiments"]]
        if missing:
            raise ConfigError(f"unknown experiment(s) {missing}; this config has {list(cfg['experiments'])}")
        for name, exp in cfg["experiments"].items():
            if name not in only:
                exp["skip"] = "not selected (--only)"
    return cfg
