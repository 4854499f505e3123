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


def _csv(value: str) -> list[str]:
    """Split a comma-separated list, keeping commas inside parentheses: 'competitive(a),b'."""
    out, depth, cur = [], 0, ""
    for ch in value:
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def _model_and_data(model: str, dataset: str, images: int, seed: int, split: str = "test"):
    from sanitas.data import load_dataset
    from sanitas.models import load_model

    net = load_model(model, dataset)
    ds = load_dataset(dataset, split)
    ds = ds.sample(images, seed=seed) if images and images < len(ds) else ds
    return net, ds


@main.command()
def methods():
    """List the attribution methods (use them by name; wrap with smoothgrad(...), competitive(...))."""
    from sanitas.explain import list_methods

    for name, doc in list_methods():
        click.echo(f"{name:<22} {doc}")


@main.command()
@click.argument("model")
@click.option("--dataset", "-d", default="fashion-mnist", show_default=True)
@click.option("--blocks", default=None, help="group layers: 'prefix:N' or comma-separated layer-name prefixes")
def layers(model, dataset, blocks):
    """Show MODEL's parameterized layers in forward order (what randomization walks through)."""
    from sanitas.data import load_dataset
    from sanitas.models import MODELS, build_model, load_model
    from sanitas.randomize import format_layers

    ds = load_dataset(dataset, "test", limit=1)
    x = ds.x
    # the layer structure does not depend on training: reference models are shown untrained
    net = build_model(model, ds.input_shape, ds.num_classes) if model in MODELS else load_model(model, dataset)
    click.echo(format_layers(net, x, blocks=_blocks(blocks)))


def _blocks(blocks):
    if blocks is None:
        return None
    return blocks if blocks.startswith("prefix:") else _csv(blocks)


@main.command()
@click.argument("model")
@click.option("--dataset", "-d", default="fashion-mnist", show_default=True)
@click.option("--methods", default="gradient,input_x_gradient,integrated_gradients,guided_backprop,gradcam,"
              "guided_gradcam", show_default=True, help="comma-separated method names (see `sanitas methods`)")
@click.option("--metrics", default="spearman_abs,spearman,spearman_nz,ssim,hog", show_default=True,
              help="comma-separated similarity names")
@click.option("--mode", type=click.Choice(["cascading", "independent", "smooth", "efficient", "random_logit"]),
              default="cascading", show_default=True, help="smooth = sMPRT, efficient = eMPRT, random_logit = Sixt et al.")
@click.option("--order", type=click.Choice(["top_down", "bottom_up"]), default="top_down", show_default=True,
              help="cascading direction")
@click.option("--init", default="truncated_normal", show_default=True,
              help="truncated_normal (paper), uniform, default (reset_parameters), permute")
@click.option("--target", type=click.Choice(["label", "original", "predicted"]), default="label",
              show_default=True, help="class explained at every stage")
@click.option("--images", "-n", default=64, show_default=True, type=int, help="number of test images (seeded sample)")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--blocks", default=None, help="group layers: 'prefix:N' or comma-separated prefixes")
@click.option("--normalize", type=click.Choice(["none", "maxabs", "rms"]), default="none", show_default=True)
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="results directory")
@click.option("--no-resume", is_flag=True, help="recompute finished stages instead of reusing them")
@click.option("--quiet", "-q", is_flag=True)
def randomize(model, dataset, methods, metrics, mode, order, init, target, images, seed, blocks, normalize, out,
              no_resume, quiet):
    """Model parameter randomization test: do MODEL's explanations change when its weights are destroyed?"""
    from sanitas.checks import model_randomization
    from sanitas.report.figures import check_figures
    from sanitas.report.html import check_report

    net, ds = _model_and_data(model, dataset, images, seed)
    res = model_randomization(net, ds.x, ds.y, _csv(methods), _csv(metrics), mode=mode, init=init, seed=seed,
                              target=target, order=order, blocks=_blocks(blocks), normalize=normalize, out=out,
                              resume=not no_resume, quiet=quiet)
    figs = check_figures(res, out)
    report = check_report(res, out, figs)
    for metric in _csv(metrics)[:2]:
        click.echo(f"\n{metric} (mean over {len(ds)} images):")
        click.echo(res.pivot(metric).round(3).to_string())
    click.echo(f"\nresults: {out}/results.parquet, {out}/results.csv\nreport:  {report}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
