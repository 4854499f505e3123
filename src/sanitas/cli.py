"""The ``sanitas`` command line."""

from __future__ import annotations

import os
import sys

import click

import sanitas
from sanitas.errors import SanitasError


class _Validated(click.ParamType):
    """An integer option checked by :mod:`sanitas.utils.validation`, so the command line refuses what the
    Python API refuses, with the same message (a :class:`SanitasError`: one line, exit status 1)."""

    name = "integer"

    def __init__(self, check: str):
        self.check = check  # the name of the function in sanitas.utils.validation (imported when used: torch)

    def convert(self, value, param, ctx):
        from sanitas.utils import validation

        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                self.fail(f"{value!r} is not a whole number", param, ctx)
        return getattr(validation, self.check)(value, f"--{param.name.replace('_', '-')}" if param else "value")


#: a number of images, epochs, ...: 0 is refused (``--images 0`` used to mean the whole test set)
COUNT = _Validated("count")
SEED = _Validated("seed")

MODEL_HELP = ("MODEL is a reference model's name (`sanitas models`), a file saved with torch.save(model, path) or "
              "torch.jit.save, a class and its weights (mymodels.py:Net@weights.pt, package.module:Net(width=32)"
              "@weights.pt; a class without @weights is trained by sanitas), or a Hugging Face model directory "
              "(save_pretrained).")
DATASET_HELP = ("a dataset name (`sanitas datasets`), an .npz file, or an image folder: train/ and test/ with one "
                "folder per class, or one folder per class")


def _quiet_option(fn):
    # default None: without -q, $SANITAS_QUIET decides (an explicit False would override it)
    return click.option("--quiet", "-q", is_flag=True, default=None, help="no progress or status lines "
                        "(warnings are still shown)")(fn)


def _output_option(fn):
    return click.option("--output", default=None, help="which part of what the model returns holds the logits, "
                        "when it returns several: a key (logits), an attribute or a position (0)")(fn)


def _classes_option(fn):
    return click.option("--classes", default=None, help="class order of an image folder: comma-separated folder "
                        "names, class i = the i-th [default: the folder names, sorted]")(fn)


def _data_options(fn):
    return click.option("--dataset", "-d", default="fashion-mnist", show_default=True, help=DATASET_HELP)(
        _classes_option(fn))


def _dataset(dataset: str, classes: str | None):
    """The --dataset value, with --classes when given (a dataset mapping)."""
    if classes is None:
        return dataset
    from sanitas.data import DATASETS

    key = "name" if dataset in DATASETS else "path"
    return {key: dataset, "classes": _csv(classes)}


class _Group(click.Group):
    """Turns a :class:`SanitasError` (and an OS error: a full disk, a read-only directory) into one clear
    line and exit status 1, not a traceback."""

    def invoke(self, ctx):
        # --quiet silences every progress bar below the command too (training, DASP, ...)
        args = ctx.args  # the tokens after the subcommand name (click >= 8: the name itself is held apart)
        quiet = "-q" in args or "--quiet" in args
        before = os.environ.get("SANITAS_QUIET")
        if quiet:
            os.environ["SANITAS_QUIET"] = "1"
        try:
            return super().invoke(ctx)
        except SanitasError as exc:
            click.echo(f"sanitas: error: {exc}", err=True)
            ctx.exit(1)
        except OSError as exc:  # e.g. a figure written to a full disk: the environment, not a bug
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"sanitas: error: {where}{exc.strerror or exc}", err=True)
            ctx.exit(1)
        finally:
            if quiet:
                if before is None:
                    os.environ.pop("SANITAS_QUIET", None)
                else:
                    os.environ["SANITAS_QUIET"] = before


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(sanitas.__version__, prog_name="sanitas")
def main():
    """Can this explanation be trusted? Sanity checks for saliency maps of PyTorch classifiers.

    MODEL, wherever a command takes one, is a reference model (`sanitas models`) or your own: a .pt file
    (torch.save or torch.jit.save), a class and its weights (mymodels.py:Net@weights.pt) or a Hugging Face
    model directory. --dataset takes a name (`sanitas datasets`), an .npz file or an image folder.
    """


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


def _csv(value: str) -> list[str]:
    """Split a comma-separated list, keeping commas inside () and []: 'competitive(a),activity(layers=[b,c])'."""
    out, depth, cur = [], 0, ""
    for ch in value:
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        depth += ch in "(["
        depth -= ch in ")]"
        cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def _methods(value: str, top_classes: int | None):
    """Method names from the CLI; with ``--top-classes M`` every ``competitive(...)`` competes only
    among the M highest-scoring classes (named ``competitive(base, top_classes=M)`` in the results)."""
    names = _csv(value)
    if top_classes is None:
        return names
    from sanitas.explain import get_explainer
    from sanitas.explain.registry import EXPLAINERS, parse_method

    out = {}
    for name in names:
        outer, inner, options = parse_method(name)
        if EXPLAINERS.canonical(outer) == "competitive":
            options["top_classes"] = top_classes
            e = get_explainer("competitive", **({"base": inner} if inner else {}), **options)
            out[repr(e)] = e
        else:
            out[name] = name
    return out


TOP_CLASSES_HELP = ("competitive(...) methods compete only among the M highest-scoring classes of each image "
                    "(an approximation for large heads; default: all classes, exact)")


def _output(value: str | None):
    """--output: an integer index into a returned tuple, else a key/attribute name."""
    if value is None:
        return None
    return int(value) if value.lstrip("-").isdigit() else value


def _calls(src):
    """Every forward pass of the command reads the logits where the model spec says (``output``)."""
    from sanitas.explain.forward import model_call

    return model_call(output=src.output)


def _load(model, dataset, output, *, images=None, seed=0, quiet=None, structure=False, train_kwargs=None,
          needs_layers: str | None = None):
    """``(model source, model, test data)`` of a command, said on stderr. ``structure``: the command needs the
    architecture only (its layers, which methods pass them): a model sanitas would train is built untrained.
    ``needs_layers``: what the command does with the model's layers (a TorchScript model is refused for it)."""
    from sanitas.data import load_dataset
    from sanitas.models import fresh_model, load_model, model_source
    from sanitas.models.resolve import require_python_module
    from sanitas.utils.progress import log

    src = model_source(model, _output(output))
    ds = load_dataset(dataset, "test", limit=2 if structure else None)
    if structure and not src.has_weights:
        net = fresh_model(src, ds.input_shape, ds.num_classes)
    else:
        with _calls(src):
            net = load_model(src, dataset, quiet=quiet, **(train_kwargs or {}))
    if needs_layers:
        require_python_module(net, needs_layers)
    if images is not None and images < len(ds):
        ds = ds.sample(images, seed=seed)
    log(f"model: {src.describe()}", quiet=quiet)
    log(f"data:  {ds.describe()}", quiet=quiet)
    if ds.info.get("layout"):
        log(f"       {ds.info['layout']}", quiet=quiet)
    return src, net, ds


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


def _blocks(blocks):
    if blocks is None:
        return None
    return blocks if blocks.startswith("prefix:") or blocks == "auto" else _csv(blocks)


def _finish(res, src, ds, out, metrics, table=None) -> None:
    """What every check command ends with: the run described in meta.json, the figures and the report, and the
    means on stdout with the images each covers, what was left out and why (or ``table``, a DataFrame)."""
    from sanitas.report.about import annotate, about_run
    from sanitas.report.figures import check_figures
    from sanitas.report.html import check_report
    from sanitas.report.tables import coverage_lines, images_counted, mean_table, stage_labels

    annotate(res, out, about_run(src, ds))
    figs = check_figures(res, out)
    report = check_report(res, out, figs)
    for method, why in res.meta.get("refused", {}).items():
        click.echo(f"note: {method} was left out: {why}", err=True)
    for method, info in res.meta.get("resolved", {}).items():
        if info.get("layer"):
            click.echo(f"note: {method} used layer {info['layer']}", err=True)
    summary = res.summary()
    labels = stage_labels(res.meta, res.stages)
    for metric in metrics:
        if metric not in set(summary["metric"]):
            continue
        click.echo(f"\n{metric} (mean over {images_counted(summary, metric)} images):")
        click.echo(mean_table(summary, metric, labels).round(3).to_string())
        for line in coverage_lines(summary, metric, labels):
            click.echo(f"  {line}")
    if table is not None:
        click.echo(table.round(3).to_string(index=False))
    if res.kind == "model_randomization":
        _print_verdicts(res)
    click.echo(f"\nresults: {out}/results.parquet, {out}/results.csv\nreport:  {report}")


def _print_verdicts(res) -> None:
    """The per-method verdicts, from ``result.verdicts()`` (the report shows the same table)."""
    v = res.verdicts()
    if not len(v):
        return
    judged = v["reference"].ne("none").any()
    click.echo("\nverdicts (95% intervals over images and draws; " + (
        "judged against the ceiling of an independently trained model):" if judged else
        "no ceiling: run with --model-seeds 2 or --ceiling MODEL to judge):"))
    cols = ["method", "verdict", "variant", "estimate", "ci_low", "ci_high", "ceiling", "floor", "n", "excluded"]
    click.echo(v[[c for c in cols if c in v]].rename(columns={"variant": "at stage"}).round(3).to_string(index=False))


def _ceilings(src, dataset, model_seeds: int, ceiling, seed: int, output, quiet) -> list:
    """The ceiling models of a randomization: the same architecture trained with further seeds
    (``--model-seeds S``: S - 1 more), or a given independently trained model (``--ceiling SPEC``)."""
    from sanitas.models import load_model, model_source, train
    from sanitas.utils.progress import log

    models = []
    if ceiling:
        models.append(load_model(model_source(ceiling, _output(output)), dataset, quiet=quiet))
    for k in range(1, int(model_seeds)):
        log(f"ceiling: {src.describe()} trained with seed {seed + k}", quiet=quiet)
        models.append(train(src, dataset, seed=seed + k, quiet=quiet).model)
    return models


@main.command(epilog=MODEL_HELP)
@click.argument("model")
@_data_options
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
@click.option("--images", "-n", default=64, show_default=True, type=COUNT, help="number of test images (seeded sample)")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--blocks", default=None, help="group layers: 'auto' (transformer layers, residual blocks), "
              "'prefix:N' or comma-separated prefixes")
@click.option("--normalize", type=click.Choice(["none", "maxabs", "rms"]), default="none", show_default=True)
@_output_option
@click.option("--draws", default=1, show_default=True, type=COUNT,
              help="independent random draws of every randomized stage (2 or more also measure each stage's floor)")
@click.option("--model-seeds", default=1, show_default=True, type=COUNT,
              help="2 or more: also train the architecture with the next seeds; their maps are the ceiling the "
                   "verdicts judge against")
@click.option("--ceiling", default=None, metavar="MODEL", help="an independently trained model of the same task "
              "(any model spec) to serve as the ceiling")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="run the cells here or as tasks on a Ray cluster (pip install 'sanitas[ray]')")
@click.option("--address", default=None, help="with --executor ray: the cluster's address ('auto' after ray start)")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="results directory")
@click.option("--top-classes", type=click.IntRange(min=1), default=None, metavar="M", help=TOP_CLASSES_HELP)
@click.option("--no-resume", is_flag=True, help="recompute finished stages instead of reusing them")
@_quiet_option
def randomize(model, dataset, classes, methods, metrics, mode, order, init, target, images, seed, blocks, normalize,
              output, draws, model_seeds, ceiling, executor, address, out, top_classes, no_resume, quiet):
    """Model parameter randomization test: do MODEL's explanations change when its weights are destroyed?

    Prints the similarity per stage and, per method, a verdict with its 95% interval (pass / fail /
    inconclusive) against the ceiling of an independently trained model (--model-seeds 2 or --ceiling).
    """
    from sanitas.checks import model_randomization
    from sanitas.executors import get_executor

    data = _dataset(dataset, classes)
    src, net, ds = _load(model, data, output, images=images, seed=seed, quiet=quiet,
                         needs_layers="model parameter randomization")
    with _calls(src):
        ceilings = _ceilings(src, data, model_seeds, ceiling, seed, output, quiet)
        ex = get_executor(executor, address)
        try:
            res = model_randomization(net, ds.x, ds.y, _methods(methods, top_classes), _csv(metrics), mode=mode,
                                      init=init, seed=seed, target=target, order=order, blocks=_blocks(blocks),
                                      normalize=normalize, out=out, resume=not no_resume, quiet=quiet, draws=draws,
                                      ceiling_model=ceilings or None, executor=ex)
        finally:
            ex.close()
        _finish(res, src, ds, out, _csv(metrics)[:2])


@main.command("data-randomization", epilog=MODEL_HELP)
@click.argument("model")
@_data_options
@click.option("--methods", default="gradient,smoothgrad,input_x_gradient,integrated_gradients,guided_backprop,"
              "gradcam,competitive(input_x_gradient)", show_default=True)
@click.option("--metrics", default="spearman_abs,spearman,ssim,hog", show_default=True)
@click.option("--images", "-n", default=64, show_default=True, type=COUNT)
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--train-size", default=2000, show_default=True, type=COUNT,
              help="training subset for the permuted-label model (cnn memorizes 2000 in ~6 min on 2 cores)")
@click.option("--target-accuracy", default=0.95, show_default=True, type=float,
              help="stop permuted-label training at this training accuracy")
@click.option("--epochs", default=100, show_default=True, type=COUNT, help="epoch budget of permuted-label training")
@click.option("--lr", default=3e-4, show_default=True, type=float,
              help="learning rate of permuted-label training (1e-3 never leaves chance level for cnn)")
@click.option("--no-ceiling", is_flag=True, help="skip the second true-label model (model-seed ceiling)")
@click.option("--top-classes", type=click.IntRange(min=1), default=None, metavar="M", help=TOP_CLASSES_HELP)
@_output_option
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False))
@_quiet_option
def data_randomization_cmd(model, dataset, classes, methods, metrics, images, seed, train_size, target_accuracy,
                           epochs, lr, no_ceiling, top_classes, output, out, quiet):
    """Data randomization test: explanations of MODEL trained on true vs on permuted labels.

    MODEL's architecture is trained from a fresh initialisation on permuted labels (and, for the ceiling, on the
    true labels with seed + 1); the true-label model is MODEL itself when its spec has weights, else it is
    trained too.
    """
    from sanitas.checks import ceiling_verdicts, data_randomization
    from sanitas.checks.data_randomization import train_for_data_randomization

    data = _dataset(dataset, classes)
    src, true_model, ds = _load(model, data, output, images=images, seed=seed, quiet=quiet, train_kwargs={"seed": seed},
                                needs_layers="data randomization (training its architecture afresh)")
    with _calls(src):
        trio = train_for_data_randomization(src, data, seed=seed, train_size=train_size, epochs=epochs, lr=lr,
                                            target_accuracy=target_accuracy, ceiling=not no_ceiling, quiet=quiet)
        pm = trio.permuted.metrics
        click.echo(f"permuted-label {src.label}: train accuracy {pm['train_accuracy']:.3f} (target {target_accuracy}, "
                   f"{'reached' if pm['memorized'] else 'NOT reached'} in {pm['epochs_run']} epochs), "
                   f"test accuracy {pm['test_accuracy']:.3f}")
        res = data_randomization(true_model, trio.permuted.model, ds.x, ds.y, _methods(methods, top_classes),
                                 _csv(metrics), ceiling_model=trio.ceiling, out=out, seed=seed, quiet=quiet)
        res.meta["permuted_training"] = pm
        res.meta["training"] = trio.notes
        ceiling = trio.ceiling is not None
        _finish(res, src, ds, out, [] if ceiling else _csv(metrics)[:1], ceiling_verdicts(res) if ceiling else None)


@main.command("input-invariance", epilog=MODEL_HELP)
@click.argument("model")
@_data_options
@click.option("--methods", default="gradient,guided_backprop,input_x_gradient,integrated_gradients,deeplift",
              show_default=True)
@click.option("--metrics", default="spearman,spearman_abs,ssim", show_default=True)
@click.option("--shift", default=-1.0, show_default=True, type=float, help="constant added to every input")
@click.option("--shift-baselines", is_flag=True, help="move IG/DeepLIFT baselines with the inputs")
@click.option("--images", "-n", default=64, show_default=True, type=COUNT)
@click.option("--seed", default=0, show_default=True, type=SEED)
@_output_option
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False))
@_quiet_option
def input_invariance_cmd(model, dataset, classes, methods, metrics, shift, shift_baselines, images, seed, output, out,
                         quiet):
    """Input invariance (Kindermans et al.): are explanations unchanged by a compensated input shift?"""
    from sanitas.checks import input_invariance

    src, net, ds = _load(model, _dataset(dataset, classes), output, images=images, seed=seed, quiet=quiet,
                         needs_layers="input invariance (its twin model shifts the first layer)")
    with _calls(src):
        res = input_invariance(net, ds.x, ds.y, _csv(methods), _csv(metrics), shift=shift,
                               shift_baselines=shift_baselines, out=out)
        click.echo(f"largest logit difference between the two models: {res.meta['max_logit_difference']:.2e}")
        _finish(res, src, ds, out, _csv(metrics))


def _print_claims(claims) -> None:
    if claims is None or not len(claims):
        click.echo("(no claims)")
        return
    for r in claims.to_dict("records"):
        m = r["measured"]
        measured = "-" if m is None or m != m else f"{m:.3f}"
        why = f"  ({r['why']})" if isinstance(r.get("why"), str) and r["why"] else ""
        click.echo(f"  {r['verdict']:<14} {r['id']:<30} measured {measured:>8}   expected {r['expected']}{why}")
    from sanitas.experiments.claims import claims_count

    click.echo(f"\n{claims_count(claims)}")


@main.command("run")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="results directory")
@click.option("--quick", is_flag=True, help="apply the config's `quick:` profile (fewer images and experiments)")
@click.option("--images", "-n", type=COUNT, default=None, help="override every experiment's number of images")
@click.option("--only", multiple=True, help="experiment names to run, comma-separated or repeated (the others: not run)")
@_quiet_option
def run_cmd(config, out, quick, images, only, quiet):
    """Run the experiments of a YAML CONFIG (copy one with `sanitas reproduce --show PAPER`)."""
    from sanitas.experiments import run_config

    res = run_config(config, out, quick=quick, images=images, only=[n for o in only for n in _csv(o)] or None, quiet=quiet)
    click.echo(f"{res.config.get('title', res.paper)}:")
    _print_claims(res.claims)
    click.echo(f"\nclaims: {out}/claims.csv\nreport: {res.report}")
    _exit_if_failed([res])


def _exit_if_failed(runs) -> None:
    """Exit 1, naming each failed experiment and why, when any experiment of ``runs`` failed."""
    failed = [(r.paper, name, why) for r in runs for name, why in r.failed.items()]
    if failed:
        lines = "\n".join(f"  [{paper}] {name}: {why}" for paper, name, why in failed)
        click.echo(f"sanitas: error: {len(failed)} experiment(s) failed:\n{lines}", err=True)
        click.get_current_context().exit(1)


@main.command()
@click.argument("papers", nargs=-1)
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None, help="results directory")
@click.option("--quick", is_flag=True, help="the small profile (what `make demo` runs: 6.5 min on 2 cores, model training included)")
@click.option("--images", "-n", type=COUNT, default=None, help="override every experiment's number of images")
@click.option("--show", is_flag=True, help="print the config of PAPER (YAML) instead of running it")
@click.option("--list", "list_", is_flag=True, help="list the papers and their claims")
@_quiet_option
def reproduce(papers, out, quick, images, show, list_, quiet):
    """Re-run the papers' experiments (PAPERS: names or `all`) and state which claims hold."""
    from sanitas.errors import ConfigError
    from sanitas.experiments import config_text, list_papers, load_config
    from sanitas.experiments import reproduce as run_all

    if list_ or (not papers and not show):
        for name in list_papers():
            cfg = load_config(name)
            n_exp, n_claims = len(cfg["experiments"]), len(cfg.get("claims") or [])
            click.echo(f"{name:<14} {cfg.get('title', '')}  ({n_exp} experiment{'s' * (n_exp != 1)}, "
                       f"{n_claims} claim{'s' * (n_claims != 1)})")
        if not list_:
            click.echo("\nrun: sanitas reproduce all --out DIR   (or a paper name; --quick for the small profile)")
        return
    if show:
        if len(papers) != 1 or papers[0] == "all":
            raise ConfigError(f"--show takes one paper name: one of {list_papers()}")
        click.echo(config_text(papers[0]), nl=False)
        return
    if out is None:
        raise ConfigError("reproduce needs --out DIR (where results, claims.csv and report.html go)")
    runs, claims, report = run_all(list(papers), out, quick=quick, images=images, quiet=quiet)
    _print_claims(claims)
    click.echo(f"\nclaims: {out}/claims.csv\nreport: {report}")
    _exit_if_failed(runs)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
def report(directory):
    """(Re)build report.html (and the claims) of a results DIRECTORY written by sanitas."""
    from sanitas.experiments.rebuild import rebuild

    path, claims = rebuild(directory)
    if claims is not None:
        _print_claims(claims)
    click.echo(f"report: {path}")


@main.command(epilog=MODEL_HELP.replace("MODEL is", "Each of MODELS is"))
@click.argument("models", nargs=-1, required=True)
@_data_options
@click.option("--images", "-n", default=512, show_default=True, type=COUNT,
              help="test images for the per-layer decomposition and the regression (seeded sample)")
@click.option("--accuracy-images", default=None, type=COUNT, help="test images for the accuracies [default: all]")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--distill", is_flag=True, help="also make zero-bias models by bias decay + distillation (T=100)")
@click.option("--distill-models", default=None, help="comma-separated subset of MODELS to distill (implies --distill)")
@click.option("--distill-steps", default=None, type=COUNT,
              help="fine-tuning steps of --distill [default: distill_zero_bias's]")
@click.option("--temperature", "-T", default=100.0, show_default=True, type=float, help="distillation temperature")
@click.option("--label-weight", default=None, type=float,
              help="weight of the true-label cross-entropy in --distill (0: pure distillation) [default: 0.5]")
@_output_option
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="results directory")
@_quiet_option
def biases(models, dataset, classes, output, images, accuracy_images, seed, distill, distill_models, distill_steps, temperature,
           label_weight, out, quiet):
    """The role of biases (seed 002): accuracy with biases set to zero, f^{b=0} = alpha f + beta, and the
    per-layer bias share of the logit (Eq. 13-14) for each MODEL."""
    from sanitas.evaluate.biases import bias_analysis

    if distill_models:
        distill = _csv(distill_models)
    distill_kwargs = {"T": temperature, **({"steps": distill_steps} if distill_steps else {}),
                      **({"label_weight": label_weight} if label_weight is not None else {})}
    from sanitas.models import model_source

    sources = [model_source(m, _output(output)) for m in models]  # every spec is read before anything runs
    from sanitas.models.resolve import refuse_torchscript

    for src in sources:
        refuse_torchscript(src, "the bias decomposition")
    with _calls(sources[0]):
        res = bias_analysis(list(models), _dataset(dataset, classes), images, out, seed=seed,
                            distill=distill, distill_kwargs=distill_kwargs, accuracy_images=accuracy_images,
                            quiet=quiet)
    cols = ["model", "test_accuracy", "zero_bias_accuracy", "alpha", "beta", "r2", "bias_share_of_logit_median",
            "max_residual", "distilled_accuracy", "distill_seconds"]
    table = res.models[[c for c in cols if c in res.models]].round(4)
    table["max_residual"] = res.models["max_residual"].map("{:.1e}".format)  # Eq. 13 check: ~1e-6, not 0
    click.echo(table.to_string(index=False))
    for name, note in res.meta.get("notes", {}).items():
        click.echo(f"\nnote: {name}: {note}")
    click.echo(f"\nresults: {out}/results.parquet, {out}/summary.csv, {out}/layers.csv\nreport:  {res.report}")


@main.command("evaluate", epilog=MODEL_HELP)
@click.argument("model")
@_data_options
@click.option("--methods", default="gradient,fullgrad,random", show_default=True,
              help="comma-separated method names, options in parentheses: activity(layers=[features.conv1]), "
                   "competitive(gradient); tokens 'layers' and 'aggregates' add the layer methods")
@click.option("--layers", default=None,
              help="'all' (or comma-separated layer names): per-layer activity and bias maps and top-down "
                   "activity aggregates, ranked layer by layer")
@click.option("--images", "-n", default=64, show_default=True, type=COUNT, help="number of test images (seeded sample)")
@click.option("--order", default="-s,+s", show_default=True, help="removal orders: -s (least salient first), +s")
@click.option("--removal", type=click.Choice(["zero", "mean", "blur"]), default="zero", show_default=True,
              help="what a removed pixel becomes")
@click.option("--shuffles", default=10, show_default=True, type=click.IntRange(min=0),
              help="noise maps per image (same method, other images)")
@click.option("--target", type=click.Choice(["predicted", "label"]), default="predicted", show_default=True)
@click.option("--interpolation", type=click.Choice(["bilinear", "nearest"]), default="bilinear", show_default=True,
              help="upsampling of layer maps")
@click.option("--seed", default=0, show_default=True, type=SEED)
@_output_option
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="results directory")
@click.option("--no-resume", is_flag=True, help="recompute finished methods instead of reusing them")
@_quiet_option
def evaluate_cmd(model, dataset, classes, output, methods, layers, images, order, removal, shuffles, target, interpolation, seed, out,
                 no_resume, quiet):
    """Decision-flip evaluation (seed 002): how much signal can go before MODEL changes its decision?"""
    from sanitas.evaluate.quality import evaluate_methods

    src, net, ds = _load(model, _dataset(dataset, classes), output, images=images, seed=seed, quiet=quiet)
    lay = None if layers is None else ("all" if layers.strip() == "all" else _csv(layers))
    with _calls(src):
        res = evaluate_methods(net, ds.x, ds.y, _csv(methods), layers=lay, target=target, orders=_csv(order),
                               removal=removal, n_shuffles=shuffles, seed=seed, interpolation=interpolation, out=out,
                               resume=not no_resume, quiet=quiet)
    n = res.table["image"].nunique()
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_rows", 500):
        click.echo(f"mean over {n} images (higher delta_e_minus / e_minus / delta_e_delta is better):")
        click.echo(res.pivot().round(4).to_string())
        lt = res.layer_table((res.select_metric,))
        if not lt.empty:
            cols = ["layer_index", "layer", "activity_mean", "bias_mean", "p_value", "p_holm", "rank_biserial", "winner"]
            click.echo(f"\nactivity vs bias per layer ({res.select_metric}, Wilcoxon signed-rank):")
            click.echo(lt[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        if res.best_aggregate:
            click.echo(f"\nbest aggregate by mean {res.select_metric}: {res.best_aggregate}")
            cmp_ = res.comparison((res.select_metric,))
            if not cmp_.empty:
                click.echo(cmp_[["other", "role", "median_difference", "p_value", "favours"]]
                           .to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    click.echo(f"\nresults: {out}/results.parquet, {out}/results.csv\nreport:  {res.report}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
