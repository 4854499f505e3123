"""The ``sanitas`` command line."""

from __future__ import annotations

import sys

import click

import sanitas
from sanitas.errors import SanitasError


class _Group(click.Group):
    """Turns a :class:`SanitasError` into one clear line and exit status 1, not a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SanitasError as exc:
            click.echo(f"sanitas: error: {exc}", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(sanitas.__version__, prog_name="sanitas")
def main():
    """Can this explanation be trusted? Sanity checks for saliency maps of PyTorch classifiers."""


@main.command()
def datasets():
    """List the datasets available here, and where each was found."""
    from sanitas.data import list_datasets

    rows = list_datasets()
    width = max(len(r.name) for r in rows)
    for r in rows:
        mark = "yes" if r.available else "no "
        click.echo(f"{r.name:<{width}}  {mark}  {r.location}")
        click.echo(f"{'':<{width}}       {r.description}")


@main.command()
def models():
    """List the reference models."""
    from sanitas.models import MODELS, build_model

    for name, spec in MODELS.items():
        n = sum(p.numel() for p in build_model(name).parameters())
        click.echo(f"{name:<13} {n:>10,d} params  {spec.description}")


@main.command()
@click.argument("model")
@click.option("--dataset", "-d", default="fashion-mnist", show_default=True,
              help="dataset name, or a path to an .npz file / image folder")
@click.option("--labels", type=click.Choice(["true", "permuted"]), default="true", show_default=True,
              help="train on the true labels or on a fixed random permutation of them")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--epochs", type=int, default=None, help="maximum epochs [default: the model's own]")
@click.option("--lr", type=float, default=None, help="Adam learning rate [default: the model's own]")
@click.option("--batch-size", type=int, default=None)
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--train-size", type=int, default=None, help="train on a seeded random subset of this size")
@click.option("--target-accuracy", type=float, default=None,
              help="stop once training accuracy (on the labels trained on) reaches this, e.g. 0.95")
@click.option("--device", default="auto", show_default=True)
@click.option("--force", is_flag=True, help="retrain even if a cached checkpoint exists")
@click.option("--quiet", "-q", is_flag=True, help="no progress bars")
def train(model, dataset, labels, seed, epochs, lr, batch_size, weight_decay, train_size, target_accuracy,
          device, force, quiet):
    """Train MODEL on a dataset (or load it from the cache) and print its accuracy."""
    from sanitas.models import train as train_model

    result = train_model(model, dataset, labels, seed, epochs=epochs, lr=lr, batch_size=batch_size,
                         weight_decay=weight_decay, train_size=train_size, target_accuracy=target_accuracy,
                         device=device, force=force, quiet=quiet)
    m = result.metrics
    origin = "loaded from cache" if result.from_cache else f"trained in {m['seconds']:.1f} s"
    click.echo(f"{result.config['model']} on {result.config['dataset']} ({labels} labels, seed {seed}): {origin}")
    click.echo(f"  train accuracy ({labels} labels): {m['train_accuracy']:.4f}")
    click.echo(f"  test accuracy (true labels):  {m['test_accuracy']:.4f}")
    if m.get("memorized") is not None:
        click.echo(f"  reached target training accuracy {result.config['target_accuracy']}: "
                   f"{'yes' if m['memorized'] else 'NO'} after {m['epochs_run']} epochs")
    click.echo(f"  checkpoint: {result.path}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
