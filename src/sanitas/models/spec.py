"""The model spec: one way to name a model, in every command, config and API call.

A model spec is one of

* a reference model's name: ``cnn`` (trained on the dataset, or loaded from the cache; ``sanitas models``)
* a file written by ``torch.save(model, "model.pt")`` (a whole pickled module) or ``torch.jit.save``
  (TorchScript): ``model.pt``; which of the two is read from the file
* a class and its weights: ``mymodels.py:Net@weights.pt`` or ``mypackage.models:Net(width=32)@weights.pt``.
  The class is ``FILE.py:Class`` or ``module:Class`` (importable), with constructor arguments written
  ``key=value`` in parentheses; ``weights.pt`` holds ``model.state_dict()`` (or a whole pickled ``Class``).
  Without ``@weights`` the class is an architecture that sanitas trains on the dataset, like a reference model
* a Hugging Face model directory written by ``save_pretrained`` (read with ``from_pretrained``, offline)
* in Python, an ``nn.Module``

A bare word (``cnn``, ``my-vit``) is a reference model's name; a folder or file is written as a path when its
name has no suffix or slash (``./my-vit``, ``my-vit/``), so that a folder never shadows a reference model.

In a config the same string, or a mapping with the parts as keys: ``{class: mymodels.py:Net, args: {width: 32},
weights: net.pt, output: logits}``, ``{file: model.pt}``, ``{huggingface: hf-model/}``, ``{name: cnn}``.
``output`` (any form; ``--output`` on the command line) says which part of what the model returns holds the
logits, when that is not one ``(N, K)`` tensor, a ``logits`` entry or the only such tensor of a tuple: a key,
an attribute name or a position (see :func:`sanitas.explain.forward.select_logits`).

:func:`model_source` parses a spec into a :class:`ModelSource` without loading anything;
:mod:`sanitas.models.resolve` loads it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sanitas.errors import ConfigError, ModelError

KINDS = ("name", "file", "class", "huggingface", "module")
MAPPING_KEYS = ("name", "file", "class", "huggingface", "args", "weights", "output")
#: ``module:Class(args)@weights``: the module part has no ``(``, ``@`` or ``:``; the class part is a dotted name
_CLASS = re.compile(r"^(?P<module>[^:@()]+):(?P<cls>[A-Za-z_][\w.]*)\s*(?:\((?P<args>.*)\))?\s*(?:@(?P<weights>.+))?$",
                    re.DOTALL)
_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*$")

SPEC_HELP = ("a reference model name (`sanitas models`), a file saved with torch.save(model, path) or "
             "torch.jit.save, a class with its weights (mymodels.py:Net@weights.pt, module:Net(width=32)@weights.pt; "
             "without @weights sanitas trains the class), or a Hugging Face model directory (save_pretrained)")


@dataclass(frozen=True)
class ModelSource:
    """A parsed model spec (nothing loaded yet).

    ``kind``: ``name`` (a reference model), ``file`` (pickled module or TorchScript), ``class``
    (``module:Class`` with ``args``, and ``weights`` or none), ``huggingface`` (a directory) or ``module`` (an
    ``nn.Module`` given in Python, held in ``module``). ``output`` selects the logits (see the module docs).
    """

    kind: str
    target: str
    args: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    output: str | int | None = None
    module: Any = field(default=None, compare=False, repr=False)

    @property
    def has_weights(self) -> bool:
        """Whether the spec names trained weights (otherwise sanitas trains the architecture)."""
        return self.kind in ("file", "huggingface", "module") or (self.kind == "class" and self.weights is not None)

    @property
    def label(self) -> str:
        """A short name for tables, cache files and messages: ``cnn``, ``Net``, ``model``, ``hf-model``."""
        if self.kind == "name":
            return self.target
        if self.kind == "class":
            return self.target.rpartition(":")[2].rpartition(".")[2]
        if self.kind == "module":
            return type(self.module).__name__
        return Path(self.target.rstrip("/")).stem or "model"

    def describe(self) -> str:
        """The spec in words, for reports and messages."""
        if self.kind == "name":
            text = f"reference model {self.target!r}"
        elif self.kind == "file":
            text = f"model file {self.target}"
        elif self.kind == "huggingface":
            text = f"Hugging Face model directory {self.target}"
        elif self.kind == "module":
            text = f"{type(self.module).__name__} (a module given in Python)"
        else:
            args = ", ".join(f"{k}={v!r}" for k, v in self.args.items())
            text = f"class {self.target}({args})" + (f" with weights {self.weights}" if self.weights else
                                                      " (trained by sanitas)")
        return text + (f", logits from output {self.output!r}" if self.output is not None else "")

    def spec_string(self) -> str:
        """The spec as the command line writes it (a module given in Python has none: its class name)."""
        if self.kind == "class":
            args = ", ".join(f"{k}={v!r}" for k, v in self.args.items())
            return self.target + (f"({args})" if args else "") + (f"@{self.weights}" if self.weights else "")
        return self.label if self.kind == "module" else self.target

    def files(self) -> list[str]:
        """The files the spec reads (their content keys finished experiments and training caches)."""
        out = [self.target] if self.kind in ("file", "huggingface") else []
        if self.kind == "class":
            module = self.target.rpartition(":")[0]
            if module.endswith(".py"):
                out.append(module)
            if self.weights:
                out.append(self.weights)
        return out

    def with_output(self, output) -> ModelSource:
        """The same spec with ``output`` (None keeps the spec's own; two different ones are an error)."""
        if output is None or output == self.output:
            return self
        if self.output is not None:
            raise ConfigError(f"the model spec says output={self.output!r} and output={output!r} is given too; "
                              "give it once")
        return ModelSource(self.kind, self.target, dict(self.args), self.weights, output, self.module)


def _output(value, where: str):
    from sanitas.explain.forward import check_output_selector

    if isinstance(value, str) and value.lstrip("-").isdigit():
        value = int(value)
    try:
        check_output_selector(value)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return value


def _args(text: str | None, spec: str) -> dict[str, Any]:
    if not text or not text.strip():
        return {}
    from sanitas.explain.registry import parse_method

    _, positional, named = parse_method(f"args({text})")
    if positional is not None:
        raise ConfigError(f"model spec {spec!r}: constructor arguments are written key=value, e.g. "
                          f"Net(num_classes=10); got {positional!r}")
    return named


def _looks_like_file(text: str) -> bool:
    return text.endswith((".pt", ".pth", ".pkl", ".ts", ".jit", ".bin")) or "/" in text or text.startswith(("~", "."))


def parse_spec_string(text: str, output=None) -> ModelSource:
    """A model spec string -> :class:`ModelSource` (see the module docs); files are not opened."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"a model spec is a non-empty text ({SPEC_HELP}); got {text!r}")
    text = text.strip()
    out = None if output is None else _output(output, f"model {text!r}")
    m = _CLASS.match(text)
    if m and not Path(text).expanduser().exists():
        weights = m.group("weights")
        return ModelSource("class", f"{m.group('module').strip()}:{m.group('cls')}", _args(m.group("args"), text),
                           weights.strip() if weights else None, out)
    if _NAME.match(text) and not _looks_like_file(text):
        # a bare word names a reference model; a folder or file of that name is written as a path (./name)
        return ModelSource("name", text, output=out)
    path = Path(text).expanduser()
    if path.is_dir():
        return ModelSource("huggingface", text, output=out)
    if path.is_file() or _looks_like_file(text):
        return ModelSource("file", text, output=out)
    raise ConfigError(f"cannot read model spec {text!r}: use {SPEC_HELP}")


def _from_mapping(value: Mapping, output=None) -> ModelSource:
    unknown = sorted(set(map(str, value)) - set(MAPPING_KEYS))
    if unknown:
        raise ConfigError(f"model spec: unknown key(s) {unknown}; a model mapping takes one of name, file, class, "
                          "huggingface, plus args and weights (with class) and output")
    kinds = [k for k in ("name", "file", "class", "huggingface") if k in value]
    if len(kinds) != 1:
        raise ConfigError(f"model spec {dict(value)!r}: give exactly one of name, file, class, huggingface "
                          f"(got {kinds or 'none'})")
    kind = kinds[0]
    target = value[kind]
    if not isinstance(target, str) or not target.strip():
        raise ConfigError(f"model spec: {kind} must be a text, got {target!r}")
    extra = sorted(k for k in ("args", "weights") if k in value and kind != "class")
    if extra:
        raise ConfigError(f"model spec: {extra} go with class: (the architecture they belong to), not with {kind}:")
    args = value.get("args") or {}
    if not isinstance(args, Mapping):
        raise ConfigError(f"model spec: args must be a mapping of constructor arguments, got {args!r}")
    weights = value.get("weights")
    if weights is not None and (not isinstance(weights, str) or not weights.strip()):
        raise ConfigError(f"model spec: weights must be a file path, got {weights!r}")
    out = value.get("output")
    out = None if out is None else _output(out, "model spec: output")
    if kind == "class":
        m = _CLASS.match(target)
        if not m or m.group("weights"):
            raise ConfigError(f"model spec: class must be written module:Class or FILE.py:Class, got {target!r}")
        inline = _args(m.group("args"), target)
        clash = sorted(set(inline) & set(args))
        if clash:
            raise ConfigError(f"model spec: constructor argument(s) {clash} given both in class: and in args:")
        src = ModelSource("class", f"{m.group('module').strip()}:{m.group('cls')}", {**inline, **dict(args)},
                          weights.strip() if weights else None, out)
    else:
        src = ModelSource(kind, target.strip(), output=out)
    return src.with_output(None if output is None else _output(output, "output"))


def model_source(value, output=None) -> ModelSource:
    """Parse a model spec: a string, a mapping (configs), a :class:`ModelSource` or an ``nn.Module``.

    ``output`` (a key, attribute name or position) is added to the spec; a spec that names another one is
    an error. Nothing is loaded: see :func:`sanitas.models.load_model`.
    """
    if isinstance(value, ModelSource):
        return value.with_output(None if output is None else _output(output, "output"))
    torch = sys.modules.get("torch")  # a module given in Python: torch is imported already (specs need none)
    if torch is not None and isinstance(value, torch.nn.Module):
        return ModelSource("module", type(value).__name__, output=None if output is None else _output(output, "output"),
                           module=value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return parse_spec_string(value, output)
    if isinstance(value, Mapping):
        return _from_mapping(value, output)
    raise ModelError(f"cannot use {type(value).__name__} as a model: give an nn.Module or a model spec ({SPEC_HELP})")
