"""Turn "a model name or a module" into a module, everywhere sanitas takes a model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sanitas.errors import ModelError


def load_model(model: str | nn.Module | Path, dataset: str = "fashion-mnist", **train_kwargs) -> nn.Module:
    """A module as given, a trained reference model by name, or a module saved with ``torch.save``.

    Names train (or load from the cache) the reference model on ``dataset``; ``train_kwargs``
    are passed to :func:`sanitas.models.train`.
    """
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, (str, Path)) and str(model).endswith((".pt", ".pth")):
        path = Path(model)
        if not path.is_file():
            raise ModelError(f"no model file at {path}")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - UnpicklingError, EOFError, RuntimeError (zip), ...
            raise ModelError(f"{path} is not a model saved with torch.save ({type(exc).__name__}: {exc}); save "
                             "the whole module with torch.save(model, path), or check that the file is complete"
                             ) from None
        if not isinstance(obj, nn.Module):
            raise ModelError(f"{path} holds a {type(obj).__name__}, not a whole nn.Module; save the model "
                             "with torch.save(model, path), or pass the module itself from Python")
        return obj
    from sanitas.models.train import train

    return train(str(model), dataset, **train_kwargs).model
