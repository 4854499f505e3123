"""Reference models, their training, the checkpoint cache, and the model spec (a user's own models).

>>> from sanitas.models import build_model, train
>>> net = build_model("cnn")                       # untrained
>>> trained = train("cnn", "fashion-mnist")        # trained (cached after the first call)
>>> net = load_model("mymodels.py:Net@weights.pt")  # a user's model: see sanitas.models.spec

The names below are imported when first used (most need torch; reading a model spec does not).
"""

from __future__ import annotations

import importlib
import sys
import types

_WHERE = {
    "AlexNet1": "architectures", "LinearModel": "architectures", "MLP": "architectures", "PaperCNN": "architectures",
    "ResNetSmall": "architectures", "SumPoolConv": "architectures", "VGGSmall": "architectures",
    "architecture": "resolve", "fresh_model": "resolve", "load_model": "resolve",
    "ModelSource": "spec", "model_source": "spec",
    "TrainedModel": "train", "accuracy": "train", "permute_labels": "train", "train": "train",
    "training_config": "train", "training_defaults": "train",
    "MODELS": "zoo", "ModelSpec": "zoo", "build_model": "zoo", "model_names": "zoo",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    setattr(sys.modules[__name__], name, value)
    return value


def __dir__():
    return sorted({*globals(), *_WHERE})


class _Package(types.ModuleType):
    """``sanitas.models.train`` is the function; importing the submodule of that name must not replace it
    (the import system sets a package attribute for every submodule it loads)."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and _WHERE.get(name) == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
