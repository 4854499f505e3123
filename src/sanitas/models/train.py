"""Training reference models, with a content-addressed checkpoint cache.

``train("cnn", "fashion-mnist")`` trains the model (or loads it from the cache) and returns a
:class:`TrainedModel`. Checkpoints live in ``~/.cache/sanitas/models/`` (``$SANITAS_CACHE``),
named by a hash of the full training config, next to a JSON of metrics that records the
checkpoint's SHA-256. Writes are atomic; a checkpoint whose hash does not match its JSON
(corrupt, truncated, tampered) is never loaded: it is reported (also under ``quiet``) and
retrained. When the checkpoint cannot be written (a full disk, a read-only cache), the trained
model is still returned, with a warning that names the path (``TrainedModel.saved`` is False).
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import sanitas
from sanitas.data import Dataset, dataset_label, load_dataset
from sanitas.errors import ConfigError, ModelError, SanitasError, StorageError
from sanitas.explain._core import model_device
from sanitas.explain.forward import current_spec, select_logits
from sanitas.models.resolve import architecture, reference_model
from sanitas.models.spec import model_source
from sanitas.models.zoo import build_model
from sanitas.utils import validation
from sanitas.utils.device import resolve_device
from sanitas.utils.forward import untouched
from sanitas.utils.hashing import config_hash, tensor_digest
from sanitas.utils.io import atomic_torch_save, atomic_write_json, read_json, sha256_file
from sanitas.utils.paths import models_dir
from sanitas.utils.progress import log, progress, warn
from sanitas.utils.seed import isolated_rng, make_generator

# Bump when an architecture or the training loop changes in a way that changes results.
TRAINING_VERSION = 1
LABEL_MODES = ("true", "permuted")


@dataclass
class TrainedModel:
    """A trained model (in eval mode) with its config, metrics and checkpoint path (``saved`` is False
    when the checkpoint could not be written there: the model then lives in memory only)."""

    model: nn.Module
    config: dict[str, Any]
    metrics: dict[str, Any]
    path: Path
    from_cache: bool = False
    history: list[dict] = field(default_factory=list)
    saved: bool = True

    @property
    def test_accuracy(self) -> float:
        return float(self.metrics["test_accuracy"])

    @property
    def train_accuracy(self) -> float:
        return float(self.metrics["train_accuracy"])


def permute_labels(y: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed random permutation of the label vector (class frequencies are preserved)."""
    g = make_generator(seed)
    return y[torch.randperm(len(y), generator=g)]


def _dataset_key(name, ds: Dataset) -> str:
    """Registry datasets are identified by name; a user's files by a hash of their content."""
    from sanitas.data import DATASETS

    if isinstance(name, str) and name in DATASETS:
        return DATASETS.canonical(name)
    return f"{ds.name}-{tensor_digest(ds.x)[:12]}{tensor_digest(ds.y)[:12]}"


#: training defaults for an architecture that is not a reference model (a user's class, file, directory)
USER_DEFAULTS = {"epochs": 5, "lr": 1e-3, "batch_size": 128}

#: with a target accuracy, the whole training set is scored after an epoch whose running accuracy came within
#: this of the target (memorizing permuted labels: the running accuracy trails the end-of-epoch model's by a
#: point or two)
MEASURE_MARGIN = 0.05

_SCOPE: contextvars.ContextVar[dict] = contextvars.ContextVar("sanitas_training_defaults", default={})


@contextlib.contextmanager
def training_defaults(*, train_size: int | None = None):
    """Within the block, :func:`train` calls that give no ``train_size`` use this one: every model trained there
    (and looked up in the cache) sees a seeded subset of ``train_size`` training images.

    A study's ``training: {train_size: N}`` runs its experiments in such a block: the quick profile trains
    smaller models without touching the code of each experiment. The size is part of the model's training
    config, so these models are cached apart from the ones trained on every image. Nested blocks override;
    ``train_size=None`` restores training on every image. The setting ends with the block, also when it raises.
    """
    if train_size is not None:
        train_size = validation.count(train_size, "train_size")
    token = _SCOPE.set({"train_size": train_size})
    try:
        yield
    finally:
        _SCOPE.reset(token)


def training_config(model, dataset: str = "fashion-mnist", labels: str = "true", seed: int = 0, *,
                    epochs: int | None = None, lr: float | None = None, batch_size: int | None = None,
                    weight_decay: float = 0.0, train_size: int | None = None,
                    target_accuracy: float | None = None, model_kwargs: dict | None = None) -> dict[str, Any]:
    """The full, resolved training config (defaults filled in from the model's spec).

    ``model`` is a model spec (:mod:`sanitas.models.spec`): a reference model's name takes its own defaults;
    any other architecture (a class, a file, a Hugging Face directory) takes :data:`USER_DEFAULTS` and is
    identified by the content of its files (``architecture``).
    """
    src = model_source(model)
    if src.kind == "name":
        spec = reference_model(src.target)
        name, defaults = spec.name, {"epochs": spec.epochs, "lr": spec.lr, "batch_size": spec.batch_size}
    else:
        if model_kwargs:
            raise ConfigError(f"model_kwargs build reference models; the arguments of {src.describe()} belong in "
                              "its spec (module:Net(width=32), or args: in a config)")
        name, defaults = src.label, USER_DEFAULTS
    if labels not in LABEL_MODES:
        raise ConfigError(f"labels must be one of {LABEL_MODES}, got {labels!r}")
    if target_accuracy is not None:
        target_accuracy = validation.real(target_accuracy, "target accuracy", above=0, maximum=1)
    cfg = {
        "model": name, "dataset": dataset_label(dataset), "labels": labels, "seed": validation.seed(seed),
        "epochs": validation.count(epochs if epochs is not None else defaults["epochs"], "epochs"),
        "lr": validation.real(lr if lr is not None else defaults["lr"], "learning rate (lr)", above=0),
        "batch_size": validation.count(batch_size if batch_size is not None else defaults["batch_size"], "batch_size"),
        "weight_decay": validation.real(weight_decay, "weight decay", minimum=0),
        "train_size": None if train_size is None else validation.count(train_size, "train_size"),
        "target_accuracy": target_accuracy,
        "optimizer": "adam", "schedule": "cosine", "model_kwargs": dict(model_kwargs or {}),
        "training_version": TRAINING_VERSION,
    }
    if src.kind != "name":
        cfg["architecture"] = architecture_key(src)
    return cfg


def architecture_key(src) -> dict[str, Any]:
    """What identifies a user's architecture in the training cache: its spec and the content of its files
    (an edited class file or a replaced model file is a new architecture); weights are not part of it."""
    from sanitas.utils.io import sha256_file

    if src.kind == "module":
        net = src.module
        return {"module": type(net).__qualname__, "repr": repr(net),
                "shapes": [[n, list(p.shape)] for n, p in net.named_parameters()]}
    key: dict[str, Any] = {"kind": src.kind, "target": src.target, "args": src.args}
    files = [f for f in src.files() if f != src.weights]
    if src.kind == "class" and not files:  # an importable module: the source file of the class
        from sanitas.models.resolve import model_class

        with contextlib.suppress(TypeError, OSError):
            files = [inspect.getsourcefile(model_class(src.target)) or ""]
    if src.kind == "huggingface":
        files = [str(Path(src.target).expanduser() / "config.json")]
    key["files"] = {Path(f).name: sha256_file(f) for f in files if f and Path(f).expanduser().is_file()}
    return key


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000,
             device: torch.device | None = None) -> float:
    """Top-1 accuracy of ``model`` in eval mode (every module's mode restored, the RNG untouched)."""
    device = device or model_device(model)
    correct = 0
    with untouched(model):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device)
            pred = select_logits(model(xb), len(xb), current_spec().output).argmax(1).cpu()
            correct += int((pred == y[i:i + batch_size]).sum())
    return correct / max(len(x), 1)


def _paths(cfg: dict, tag: str | None = None) -> tuple[Path, Path, str]:
    """Checkpoint, metrics JSON and key of a config; ``tag`` (default: the labels) names the kind of training."""
    key = config_hash(cfg)
    stem = f"{cfg['model']}-{cfg['dataset_key'][:40]}-{cfg['labels'] if tag is None else tag}-s{cfg['seed']}-{key}"
    root = models_dir()
    return root / f"{stem}.pt", root / f"{stem}.json", key


def _save(net: nn.Module, cfg: dict, pt: Path, meta_path: Path, key: str, metrics: dict, history: list) -> bool:
    """Write the checkpoint and its metrics JSON (with the checkpoint's SHA-256); False, with a warning, when the
    cache cannot take them (minutes of training are not thrown away for a full disk)."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    try:
        digest = atomic_torch_save(pt, state)
        atomic_write_json(meta_path, {
            "config": cfg, "key": key, "metrics": metrics, "history": history, "checkpoint_sha256": digest,
            "versions": {"sanitas": sanitas.__version__, "torch": torch.__version__,
                         "python": platform.python_version()},
        })
        return True
    except StorageError as exc:
        with contextlib.suppress(OSError):
            pt.unlink(missing_ok=True)
        warn(f"the trained {cfg['model']} could not be saved ({exc}); it is kept in memory for this run only "
             f"and will be trained again next time (set SANITAS_CACHE to a directory with space)")
        return False


def _build(src, cfg: dict, input_shape, num_classes: int) -> nn.Module:
    """A fresh model to train (the global RNG initialises it; the caller seeds it)."""
    if src.kind == "name":
        return build_model(cfg["model"], input_shape, num_classes, **cfg["model_kwargs"])
    return architecture(src)


def _check_fits(src, net: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """A user's architecture must take the dataset's images and have one logit per class."""
    from sanitas.utils.forward import inference_logits

    try:
        k = inference_logits(net, x).shape[1]
    except SanitasError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's forward pass
        raise ModelError(f"{src.describe()} cannot take the dataset's images (shape {tuple(x.shape[1:])}): "
                         f"{type(exc).__name__}: {exc}") from None
    if k != num_classes:
        example = src.target if src.kind == "class" else "mymodels.py:Net"
        raise ModelError(f"{src.describe()} has {k} outputs and the dataset {num_classes} classes; build it for "
                         f"{num_classes} classes (e.g. '{example}(num_classes={num_classes})')")


def _try_load(cfg: dict, pt: Path, meta_path: Path, input_shape, num_classes, src=None) -> TrainedModel | None:
    if not (pt.exists() and meta_path.exists()):
        return None
    try:
        meta = read_json(meta_path)
        expected = meta["checkpoint_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        warn(f"unreadable cache entry {meta_path}; retraining")
        return None
    actual = sha256_file(pt)
    if actual != expected:
        warn(f"cached checkpoint {pt} is corrupt (sha256 {actual[:12]}... != recorded {expected[:12]}...); "
             "retraining")
        return None
    with isolated_rng(0):
        model = _build(src or model_source(cfg["model"]), cfg, input_shape, num_classes)
    state = torch.load(pt, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return TrainedModel(model, cfg, meta["metrics"], pt, from_cache=True, history=meta.get("history", []))


def train(model, dataset: str = "fashion-mnist", labels: str = "true", seed: int = 0, *,
          epochs: int | None = None, lr: float | None = None, batch_size: int | None = None,
          weight_decay: float = 0.0, train_size: int | None = None, target_accuracy: float | None = None,
          model_kwargs: dict | None = None, device: str | torch.device = "auto", cache: bool = True,
          force: bool = False, quiet: bool | None = None) -> TrainedModel:
    """Train ``model`` on ``dataset`` from a fresh initialisation (or load it from the cache).

    ``model`` is a model spec (:mod:`sanitas.models.spec`): a reference model's name, or a user's
    architecture (a class, a pickled module or a Hugging Face directory, re-initialised: its weights are not
    used). ``dataset`` is a name, a path or a mapping with the class order (:func:`sanitas.data.load_dataset`).

    Adam with a cosine learning-rate schedule; deterministic for a given ``seed`` (the
    caller's global RNG is left untouched). ``labels="permuted"`` trains on a fixed random
    permutation of the training labels (the data randomization test). ``target_accuracy``
    stops training once the accuracy on the training labels reaches it, checked after each
    epoch; ``metrics["memorized"]`` says whether it was reached within ``epochs``.
    """
    src = model_source(model)
    if train_size is None:
        train_size = _SCOPE.get().get("train_size")
    cfg = training_config(src, dataset, labels, seed, epochs=epochs, lr=lr, batch_size=batch_size,
                          weight_decay=weight_decay, train_size=train_size, target_accuracy=target_accuracy,
                          model_kwargs=model_kwargs)
    train_ds = load_dataset(dataset, "train")
    test_ds = load_dataset(dataset, "test")
    cfg["dataset_key"] = _dataset_key(dataset if isinstance(dataset, str) else None, train_ds)
    pt, meta_path, key = _paths(cfg)
    if cache and not force:
        hit = _try_load(cfg, pt, meta_path, train_ds.input_shape, train_ds.num_classes, src)
        if hit is not None:
            return hit

    dev = resolve_device(device)
    if train_ds.source == test_ds.source and len(train_ds) == len(test_ds):
        warn(f"{dataset_label(dataset)} has no separate test split (both splits hold every image): the test accuracy "
             "of this training is measured on the training images")
    if cfg["train_size"] is not None:
        train_ds = train_ds.sample(cfg["train_size"], seed=cfg["seed"])
    x, y_true = train_ds.x, train_ds.y
    y = permute_labels(y_true, seed=cfg["seed"] + 1_000_003) if labels == "permuted" else y_true
    n = len(x)
    steps_per_epoch = math.ceil(n / cfg["batch_size"])
    total_steps = steps_per_epoch * cfg["epochs"]
    history: list[dict] = []
    start = time.perf_counter()
    with isolated_rng(cfg["seed"]):
        net = _build(src, cfg, train_ds.input_shape, train_ds.num_classes).to(dev)
        if src.kind != "name":
            _check_fits(src, net, x[:2].to(dev), train_ds.num_classes)
        opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))
        g = make_generator(cfg["seed"])
        memorized = None
        train_acc = float("nan")
        for epoch in range(1, cfg["epochs"] + 1):
            net.train()
            order = torch.randperm(n, generator=g)
            seen = correct = 0
            loss_sum = 0.0
            bar = progress(range(steps_per_epoch), desc=f"{cfg['model']} epoch {epoch}/{cfg['epochs']}", quiet=quiet)
            for step in bar:
                idx = order[step * cfg["batch_size"]:(step + 1) * cfg["batch_size"]]
                xb, yb = x[idx].to(dev), y[idx].to(dev)
                out = select_logits(net(xb), len(xb), current_spec().output)
                loss = F.cross_entropy(out, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                seen += len(idx)
                correct += int((out.argmax(1) == yb).sum())
                loss_sum += float(loss.detach()) * len(idx)
            record = {"epoch": epoch, "loss": loss_sum / seen, "running_train_accuracy": correct / seen}
            if cfg["target_accuracy"] is not None:
                memorized = False
                # the accuracy measured during the epoch trails the end-of-epoch model's: a pass over the whole
                # training set (a third of an epoch's cost) is only worth it once it is near the target
                if record["running_train_accuracy"] >= cfg["target_accuracy"] - MEASURE_MARGIN:
                    train_acc = accuracy(net, x, y, device=dev)
                    record["train_accuracy"] = train_acc
                    memorized = train_acc >= cfg["target_accuracy"]
            history.append(record)
            log(f"{cfg['model']} epoch {epoch}: loss {record['loss']:.4f}, running train acc "
                f"{record['running_train_accuracy']:.4f}"
                + (f", train acc {record['train_accuracy']:.4f}" if "train_accuracy" in record else ""), quiet=quiet)
            if memorized:
                break
    seconds = time.perf_counter() - start
    net.eval()
    if "train_accuracy" not in (history[-1] if history else {}):
        train_acc = accuracy(net, x, y, device=dev)
    metrics = {
        "train_accuracy": train_acc, "test_accuracy": accuracy(net, test_ds.x, test_ds.y, device=dev),
        "epochs_run": len(history), "seconds": round(seconds, 2), "n_train": n, "labels": labels,
        "memorized": memorized, "device": str(dev),
    }
    if labels == "permuted":
        metrics["train_accuracy_true_labels"] = accuracy(net, x, y_true, device=dev)
    net = net.cpu()
    saved = _save(net, cfg, pt, meta_path, key, metrics, history) if cache else False
    return TrainedModel(net, cfg, metrics, pt, from_cache=False, history=history, saved=saved)
