"""Load what a model spec (:mod:`sanitas.models.spec`) names, everywhere sanitas takes a model.

:func:`load_model` gives the model to explain (trained weights: a file, a class with its weights, a Hugging
Face directory, or a reference model trained on the dataset); :func:`fresh_model` gives the same architecture
freshly initialised (what training on permuted labels starts from). A user's code that cannot be imported, a
file that holds something else, or weights that do not fit the class are a :class:`ModelError` that names the
file and the fix, never a raw traceback.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import inspect
import os
import pickle
import sys
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType, SimpleNamespace

import torch
from torch import nn

from sanitas.errors import ModelError, SanitasError, UnknownNameError
from sanitas.models.hf import fresh_huggingface, load_huggingface
from sanitas.models.spec import SPEC_HELP, ModelSource, model_source


def load_model(model, dataset: str = "fashion-mnist", *, output=None, **train_kwargs) -> nn.Module:
    """The model a spec names (see :mod:`sanitas.models.spec`), in eval mode for files sanitas read.

    A reference model's name, or a class given without weights, is trained on ``dataset`` (or loaded from the
    cache); ``train_kwargs`` go to :func:`sanitas.models.train`. An ``nn.Module`` is returned as it is.
    The spec's ``output`` is not applied here: pass it on (``explain(..., output=src.output)``), or use
    :func:`model_source` to read it.
    """
    src = model_source(model, output)
    if src.kind == "module":
        return src.module
    if not src.has_weights:
        from sanitas.models.train import train

        return train(src, dataset, **train_kwargs).model
    if src.kind == "file":
        net = _load_file(_existing(src.target, "model file"))
    elif src.kind == "huggingface":
        net = load_huggingface(src.target)
    else:
        net = _load_class_weights(src)
    return net.eval()


def fresh_model(model, input_shape=None, num_classes: int | None = None, seed: int = 0) -> nn.Module:
    """The spec's architecture, freshly initialised from ``seed`` (the caller's RNG is left as it was);
    see :func:`architecture`."""
    from sanitas.utils.seed import isolated_rng

    with isolated_rng(seed):
        return architecture(model, input_shape, num_classes)


def architecture(model, input_shape=None, num_classes: int | None = None) -> nn.Module:
    """The spec's architecture, freshly initialised from the global RNG (like any ``nn.Module`` constructor).

    Reference models are built for ``input_shape`` and ``num_classes``; a class with its own ``args``; a Hugging
    Face model from its config; a pickled module (or an ``nn.Module``) is copied and every layer re-initialised
    with its own ``reset_parameters``. A TorchScript file cannot be re-initialised: give its class instead.
    """
    src = model_source(model)
    if src.kind == "name":
        from sanitas.models.zoo import build_model

        reference_model(src.target)
        return build_model(src.target, input_shape, num_classes)
    if src.kind == "class":
        return construct(src)
    if src.kind == "huggingface":
        return fresh_huggingface(src.target)
    base = src.module if src.kind == "module" else _load_file(_existing(src.target, "model file"))
    if isinstance(base, torch.jit.ScriptModule):
        raise ModelError(f"{src.target} is a TorchScript file: its layers cannot be re-initialised for training. "
                         "Give the architecture as a class instead (mymodels.py:Net), with @weights.pt for the "
                         "trained model")
    return reinitialized(base)


def reference_model(name: str):
    """The registry entry of reference model ``name``, or an :class:`UnknownNameError` that lists the names, says
    when a folder or file of that name is here (written as a path it is read: ``./name``) and that a user's own
    model works too."""
    from sanitas.models.zoo import MODELS

    try:
        return MODELS.get(name)
    except UnknownNameError as exc:
        here = Path(name).expanduser()
        hint = (f" A {'folder' if here.is_dir() else 'file'} named {name!r} is here: write it as a path, "
                f"./{name}, to use it." if here.exists() else "")
        raise UnknownNameError(f"{exc}{hint} Your own model works too: {SPEC_HELP}.") from None


def require_python_module(model: nn.Module, what: str) -> None:
    """Refuse a TorchScript model for ``what`` (randomization, layer methods, ...: they hook layers, which
    TorchScript does not allow), naming what works instead."""
    if isinstance(model, torch.jit.ScriptModule):
        raise ModelError(f"{what} needs the model's layers (forward hooks), which a TorchScript model does not "
                         "allow. Give the Python class and its weights instead: 'mymodels.py:Net@weights.pt' "
                         "(torch.jit.load(file).state_dict() holds the weights). On a TorchScript model sanitas "
                         "computes gradient, input_x_gradient, integrated_gradients, smoothgrad and vargrad maps "
                         "(`sanitas methods --model FILE` lists what works)")


def refuse_torchscript(src: ModelSource, what: str) -> None:
    """:func:`require_python_module` for a spec, before it is loaded (a TorchScript file is told by its content)."""
    if src.kind == "file" and is_torchscript(Path(src.target).expanduser()):
        require_python_module(torch.jit.ScriptModule(), what)


def reinitialized(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every layer's parameters drawn anew by its ``reset_parameters`` (the global RNG)."""
    twin = copy.deepcopy(model)
    missing = []
    for name, m in twin.named_modules():
        own = any(True for _ in m.parameters(recurse=False))
        if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
            m.reset_parameters()
        elif own:
            missing.append(f"{name or '(model)'} ({type(m).__name__})")
    if missing:
        raise ModelError(f"cannot re-initialise {', '.join(missing[:5])}: these modules hold parameters and have no "
                         "reset_parameters(). Give the architecture as a class (mymodels.py:Net) so that sanitas "
                         "builds a fresh one, or add reset_parameters() to those modules")
    return twin


# -- files -------------------------------------------------------------------------------------------

def _existing(path: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelError(f"no {what} at {p}" + (" (a folder: a Hugging Face model directory needs config.json)"
                                                if p.is_dir() else f"; a model is {SPEC_HELP}"))
    return p


def is_torchscript(path: Path) -> bool:
    """A ``torch.jit.save`` archive (holds compiled ``code/``), not a ``torch.save`` pickle."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n or n.endswith("/constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


@contextlib.contextmanager
def _importable_from(*folders: Path) -> Iterator[None]:
    """User code next to a model file (or in the working directory) is importable while the file loads, as it
    is for ``python`` run there (the ``sanitas`` command's own folder is what Python puts first)."""
    extra = [str(f) for f in folders if str(f) not in sys.path]
    sys.path[:0] = extra
    try:
        yield
    finally:
        for f in extra:
            with contextlib.suppress(ValueError):
                sys.path.remove(f)


class _MainClasses(Exception):
    def __init__(self, name: str):
        self.name = name


def _pickle_module(main: ModuleType | None):
    """A ``pickle_module`` for ``torch.load`` that finds classes a script defined in ``__main__`` in ``main``
    (the file the spec names), and otherwise says which class was missing."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module_name, name):
            if module_name == "__main__":
                if main is not None and hasattr(main, name):
                    return getattr(main, name)
                if not hasattr(sys.modules["__main__"], name):
                    raise _MainClasses(name)
            return super().find_class(module_name, name)

    return SimpleNamespace(__name__="pickle", Unpickler=Unpickler, load=pickle.load, loads=pickle.loads)


def read_pickle(path: Path, main: ModuleType | None = None):
    """``torch.load`` of a user's file (whole module or state_dict) with clear errors for the common failures."""
    with _importable_from(path.resolve().parent, Path.cwd()):
        try:
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_pickle_module(main))
        except _MainClasses as exc:
            raise ModelError(f"{path} was saved from a script: it refers to class {exc.name!r} of that script's "
                             f"__main__, which pickle cannot find again. Name the file that defines it: "
                             f"'script.py:{exc.name}@{path}', or save model.state_dict() and use "
                             f"'mymodels.py:{exc.name}@weights.pt'") from None
        except (ModuleNotFoundError, AttributeError) as exc:
            raise ModelError(f"{path} refers to code that cannot be imported here ({type(exc).__name__}: {exc}). "
                             "A pickled module stores its class by module name: run sanitas from the folder that "
                             "holds that module, put it on PYTHONPATH, or give the class: 'mymodels.py:Net@"
                             f"{path}'") from None
        except Exception as exc:  # noqa: BLE001 - UnpicklingError, EOFError, RuntimeError (zip), ...
            raise ModelError(f"{path} is not a model saved with torch.save or torch.jit.save ({type(exc).__name__}: "
                             f"{exc}); check that the file is complete") from None


def _load_file(path: Path) -> nn.Module:
    if is_torchscript(path):
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"{path} is a TorchScript archive that cannot be loaded ({type(exc).__name__}: "
                             f"{exc})") from None
    obj = read_pickle(path)
    if isinstance(obj, nn.Module):
        return obj
    if _state_dict_in(obj) is not None:
        raise ModelError(f"{path} holds a state_dict (weights without the architecture); give the class that "
                         f"takes them: 'mymodels.py:Net@{path}' (or 'package.module:Net@{path}')")
    raise ModelError(f"{path} holds a {type(obj).__name__}, not a model; save it with torch.save(model, path), "
                     f"or save model.state_dict() and use 'mymodels.py:Net@{path}'")


def _state_dict_in(obj) -> Mapping | None:
    """A mapping of tensors: the object itself, or its 'state_dict' / 'model_state_dict' entry (checkpoints)."""
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict"):
            if key in obj:
                return _state_dict_in(obj[key])
    return None


# -- classes -----------------------------------------------------------------------------------------

def import_module_of(spec: str) -> ModuleType:
    """The module of ``module:Class`` or ``FILE.py:Class``; errors name the module and say how to fix it."""
    module = spec.rpartition(":")[0]
    if module.endswith(".py") or "/" in module or os.sep in module:
        path = Path(module).expanduser()
        if not path.is_file():
            raise ModelError(f"no Python file at {path} (the class part of model spec {spec!r})")
        return _import_file(path)
    try:
        with _importable_from(Path.cwd()):
            return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise ModelError(f"cannot import module {module!r} (model spec {spec!r}): {exc}. Give the file's path "
                         f"instead (path/to/{module.replace('.', '/')}.py:{spec.rpartition(':')[2]}), run sanitas from "
                         "the folder that holds it, or add that folder to PYTHONPATH") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise ModelError(f"importing module {module!r} (model spec {spec!r}) failed: {_where(exc)}") from None


def _where(exc: BaseException) -> str:
    tb = exc.__traceback__
    frames = [f for f in inspect.getinnerframes(tb)] if tb is not None else []
    at = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{at}"


def _import_file(path: Path) -> ModuleType:
    """Import a user's ``.py`` file under its own name (so that pickles naming that module find it), or under a
    private name when another module of that name is already imported."""
    path = path.resolve()
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) and Path(loaded.__file__).resolve() == path:
        return loaded
    if loaded is not None or not name.isidentifier():
        from sanitas.utils.io import sha256_bytes

        name = f"sanitas_user_{sha256_bytes(str(path).encode())[:10]}_{name if name.isidentifier() else 'module'}"
        if name in sys.modules:
            return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"{path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with _importable_from(path.parent):
            spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise ModelError(f"importing {path} failed: {_where(exc)}") from None
    return module


def model_class(spec: str) -> type:
    module = import_module_of(spec)
    obj: object = module
    for part in spec.rpartition(":")[2].split("."):
        if not hasattr(obj, part):
            found = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module)
                           and getattr(v, "__module__", None) == module.__name__)
            raise ModelError(f"{spec.rpartition(':')[0]} has no {spec.rpartition(':')[2]!r}; the nn.Module classes it "
                             f"defines: {', '.join(found) or 'none'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"{spec} is a {type(obj).__name__}, not a class or function that builds a model")
    return obj  # type: ignore[return-value]


def construct(src: ModelSource) -> nn.Module:
    """``Class(**args)`` of a class spec (the global RNG initialises it); errors name the call and the fix."""
    cls = model_class(src.target)
    call = f"{src.target.rpartition(':')[2]}({', '.join(f'{k}={v!r}' for k, v in src.args.items())})"
    try:
        net = cls(**src.args)
    except SanitasError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's constructor
        hint = (" Give constructor arguments in the spec: 'mymodels.py:Net(num_classes=10)' (in a config: args:)"
                if isinstance(exc, TypeError) else "")
        raise ModelError(f"{call} failed: {_where(exc)}.{hint}") from None
    if not isinstance(net, nn.Module):
        raise ModelError(f"{call} returned a {type(net).__name__}, not a torch.nn.Module")
    return net


def _load_class_weights(src: ModelSource) -> nn.Module:
    path = _existing(src.weights, "weights file")
    if is_torchscript(path):
        raise ModelError(f"{path} is a TorchScript file: give it alone as the model (no class needed)")
    net = construct(src)
    module = sys.modules.get(type(net).__module__)
    obj = read_pickle(path, main=module)
    if isinstance(obj, nn.Module):
        if not isinstance(obj, type(net)):
            raise ModelError(f"{path} holds a whole {type(obj).__name__}, not a {type(net).__name__}")
        return obj
    state = _state_dict_in(obj)
    if state is None:
        raise ModelError(f"{path} holds a {type(obj).__name__}, not a state_dict (save model.state_dict())")
    return load_weights(net, state, path)


def load_weights(net: nn.Module, state: Mapping, path) -> nn.Module:
    """``net.load_state_dict(state)`` (a ``module.`` prefix from DataParallel is dropped) or a clear mismatch."""
    own = net.state_dict()
    if state and all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in own):
        state = {k[len("module."):]: v for k, v in state.items()}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}" if missing else "",
                 f"unexpected {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}" if unexpected else "",
                 f"other shapes ({'; '.join(shapes[:3])})" if shapes else ""]
        raise ModelError(f"the weights in {path} do not fit {type(net).__name__}: "
                         f"{', '.join(p for p in parts if p)}. Check the class and its constructor arguments")
    net.load_state_dict(state)
    return net
