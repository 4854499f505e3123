"""Commands that describe what is there: datasets, models, methods, layers, and train."""

from __future__ import annotations

import click

from sanitas.cli.app import (COUNT, SEED, MODEL_HELP, DATASET_HELP, _quiet_option, _output_option, _classes_option,
                             _data_options, _dataset, main, _output, _calls, _load, _blocks)
from sanitas.errors import SanitasError


@main.command()
@click.argument("path", required=False)
@_classes_option
def datasets(path, classes):
    """List the datasets available here, and where each was found; with PATH, how that folder or .npz file is
    read: its splits, how many images each class has, and which folder is which class index."""
    from sanitas.data import list_datasets, load_dataset

    if path is not None:
        spec = _dataset(path, classes)
        for split in ("train", "test"):
            try:
                ds = load_dataset(spec, split)
            except SanitasError as exc:
                click.echo(f"{split}: {exc}")
                continue
            counts = ds.y.bincount(minlength=ds.num_classes).tolist()
            click.echo(f"{split}: {ds.describe()}")
            click.echo("  " + ", ".join(f"{i} {c} ({n} images)" for i, (c, n) in enumerate(zip(ds.classes, counts))))
        info = ds.info if "ds" in locals() else {}
        if info.get("layout") or info.get("class_order"):
            click.echo(info.get("layout") or f"classes: {info['class_order']}; {info.get('splits', '')}")
        return
    rows = list_datasets()
    width = max(len(r.name) for r in rows)
    for r in rows:
        mark = "yes" if r.available else "no "
        click.echo(f"{r.name:<{width}}  {mark}  {r.location}")
        click.echo(f"{'':<{width}}       {r.description}")
    click.echo(f"\nYour own data works wherever a dataset name does: {DATASET_HELP}. "
               "`sanitas datasets PATH` shows how it is read.")


@main.command()
def models():
    """List the reference models (and how to give your own)."""
    from sanitas.models import MODELS, build_model

    for name, spec in MODELS.items():
        try:
            n = f"{sum(p.numel() for p in build_model(name).parameters()):>10,d} params"
        except SanitasError:  # an optional dependency (transformers) is missing
            n = f"{'':>17}"
        click.echo(f"{name:<13} {n}  {spec.description}")
    click.echo(f"\nYour own model works wherever a name does. {MODEL_HELP}")


@main.command(epilog=MODEL_HELP)
@click.argument("model")
@_data_options
@click.option("--labels", type=click.Choice(["true", "permuted"]), default="true", show_default=True,
              help="train on the true labels or on a fixed random permutation of them")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--epochs", type=COUNT, default=None, help="maximum epochs [default: the model's own; 5 for yours]")
@click.option("--lr", type=float, default=None, help="Adam learning rate [default: the model's own; 1e-3 for yours]")
@click.option("--batch-size", type=COUNT, default=None)
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--train-size", type=COUNT, default=None, help="train on a seeded random subset of this size")
@click.option("--target-accuracy", type=float, default=None,
              help="stop once training accuracy (on the labels trained on) reaches this, e.g. 0.95")
@click.option("--device", default="auto", show_default=True)
@click.option("--force", is_flag=True, help="retrain even if a cached checkpoint exists")
@_output_option
@_quiet_option
def train(model, dataset, classes, labels, seed, epochs, lr, batch_size, weight_decay, train_size, target_accuracy,
          device, force, output, quiet):
    """Train MODEL on a dataset from a fresh initialisation (or load it from the cache) and print its accuracy.

    Your own architecture (a class, a pickled module, a Hugging Face directory) is re-initialised and trained
    with Adam and a cosine schedule; the weights in its file are not used.
    """
    from sanitas.models import model_source
    from sanitas.models import train as train_model

    src = model_source(model, _output(output))
    with _calls(src):
        result = train_model(src, _dataset(dataset, classes), labels, seed, epochs=epochs, lr=lr,
                             batch_size=batch_size, weight_decay=weight_decay, train_size=train_size,
                             target_accuracy=target_accuracy, device=device, force=force, quiet=quiet)
    m = result.metrics
    origin = "loaded from cache" if result.from_cache else f"trained in {m['seconds']:.1f} s"
    click.echo(f"{result.config['model']} on {result.config['dataset']} ({labels} labels, seed {seed}): {origin}")
    click.echo(f"  train accuracy ({labels} labels): {m['train_accuracy']:.4f}")
    click.echo(f"  test accuracy (true labels):  {m['test_accuracy']:.4f}")
    if m.get("memorized") is not None:
        click.echo(f"  reached target training accuracy {result.config['target_accuracy']}: "
                   f"{'yes' if m['memorized'] else 'NO'} after {m['epochs_run']} epochs")
    click.echo(f"  checkpoint: {result.path}" if result.saved else f"  checkpoint: NOT saved to {result.path} "
               "(see the warning above; the model was trained for this command only)")


@main.command(epilog=MODEL_HELP)
@click.option("--model", "-m", default=None, help="check which methods work on this model (any model spec, see "
              "below)")
@_data_options
@_output_option
def methods(model, dataset, classes, output):
    """List the attribution methods, and the other names each answers to (use them by name; wrap with
    smoothgrad(...), competitive(...)).

    With --model, run each method on two inputs of the model and say which work and, for the others, why.
    """
    if model is None:
        from sanitas.explain import EXPLAINERS, list_methods

        for name, doc in list_methods():
            aliases = EXPLAINERS.aliases(name)
            also = f" (also: {', '.join(aliases)})" if aliases else ""
            click.echo(f"{name:<22} {doc}{also}")
        click.echo("\nIn Python, your own function f(model, x, target) -> maps, or a Captum attribution object "
                   "(captum.attr.Saliency(model), ...), works wherever a method name does.")
        return
    from sanitas.explain.support import check_support, format_support

    src, net, ds = _load(model, _dataset(dataset, classes), output, structure=True)
    with _calls(src):  # a method that hooks layers refuses a TorchScript model with a NotApplicableError
        click.echo(format_support(check_support(net, ds.x, output=src.output)))


@main.command(epilog=MODEL_HELP)
@click.argument("model")
@_data_options
@click.option("--blocks", default=None, help="group layers: 'prefix:N' or comma-separated layer-name prefixes")
@_output_option
def layers(model, dataset, classes, blocks, output):
    """Show MODEL's parameterized layers in forward order (what randomization walks through)."""
    from sanitas.randomize import format_layers

    src, net, ds = _load(model, _dataset(dataset, classes), output, structure=True, needs_layers="listing layers")
    with _calls(src):
        click.echo(format_layers(net, ds.x[:1], blocks=_blocks(blocks)))


