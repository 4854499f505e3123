"""The ``sanitas`` command line."""

from __future__ import annotations

import os
import sys

import click

import sanitas
from sanitas.errors import SanitasError
from sanitas.utils import validation


class _Validated(click.ParamType):
    """An integer option checked by :mod:`sanitas.utils.validation`, so the command line refuses what the
    Python API refuses, with the same message (a :class:`SanitasError`: one line, exit status 1)."""

    name = "integer"

    def __init__(self, check):
        self.check = check

    def convert(self, value, param, ctx):
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                self.fail(f"{value!r} is not a whole number", param, ctx)
        return self.check(value, f"--{param.name.replace('_', '-')}" if param else "value")


#: a number of images, epochs, ...: 0 is refused (``--images 0`` used to mean the whole test set)
COUNT = _Validated(validation.count)
SEED = _Validated(validation.seed)


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
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--epochs", type=COUNT, default=None, help="maximum epochs [default: the model's own]")
@click.option("--lr", type=float, default=None, help="Adam learning rate [default: the model's own]")
@click.option("--batch-size", type=COUNT, default=None)
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--train-size", type=COUNT, default=None, help="train on a seeded random subset of this size")
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


def _model_and_data(model: str, dataset: str, images: int, seed: int, split: str = "test", quiet: bool = False):
    from sanitas.data import load_dataset
    from sanitas.models import load_model

    net = load_model(model, dataset, **({"quiet": True} if quiet else {}))
    ds = load_dataset(dataset, split)
    ds = ds.sample(images, seed=seed) if images and images < len(ds) else ds
    return net, ds


@main.command()
@click.option("--model", "-m", default=None, help="check which methods work on this model (a name or a .pt file)")
@click.option("--dataset", "-d", default="fashion-mnist", show_default=True,
              help="with --model: the data whose input shape the model takes")
@click.option("--output", default=None, help="with --model: the key or index of the model's output that holds the "
              "logits, when the model returns several")
def methods(model, dataset, output):
    """List the attribution methods (use them by name; wrap with smoothgrad(...), competitive(...)).

    With --model, run each method on two inputs of the model and say which work and, for the others, why.
    """
    if model is None:
        from sanitas.explain import list_methods

        for name, doc in list_methods():
            click.echo(f"{name:<22} {doc}")
        return
    from sanitas.data import load_dataset
    from sanitas.explain.support import check_support, format_support
    from sanitas.models import MODELS, build_model, load_model

    ds = load_dataset(dataset, "test", limit=2)
    # which layers a method can pass does not depend on training: reference models are checked untrained
    net = build_model(model, ds.input_shape, ds.num_classes) if model in MODELS else load_model(model, dataset)
    click.echo(format_support(check_support(net, ds.x, output=_output(output))))


def _output(value: str | None):
    """--output: an integer index into a returned tuple, else a key/attribute name."""
    if value is None:
        return None
    return int(value) if value.lstrip("-").isdigit() else value


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
    return blocks if blocks.startswith("prefix:") or blocks == "auto" else _csv(blocks)


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
@click.option("--images", "-n", default=64, show_default=True, type=COUNT, help="number of test images (seeded sample)")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--blocks", default=None, help="group layers: 'auto' (transformer layers, residual blocks), "
              "'prefix:N' or comma-separated prefixes")
@click.option("--normalize", type=click.Choice(["none", "maxabs", "rms"]), default="none", show_default=True)
@click.option("--output", default=None, help="key or index of the model's output holding the logits (when it "
              "returns a tuple or dict with several candidates)")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="results directory")
@click.option("--top-classes", type=click.IntRange(min=1), default=None, metavar="M", help=TOP_CLASSES_HELP)
@click.option("--no-resume", is_flag=True, help="recompute finished stages instead of reusing them")
@click.option("--quiet", "-q", is_flag=True)
def randomize(model, dataset, methods, metrics, mode, order, init, target, images, seed, blocks, normalize, output,
              out, top_classes, no_resume, quiet):
    """Model parameter randomization test: do MODEL's explanations change when its weights are destroyed?"""
    from sanitas.checks import model_randomization
    from sanitas.report.figures import check_figures
    from sanitas.report.html import check_report

    net, ds = _model_and_data(model, dataset, images, seed, quiet=quiet)
    res = model_randomization(net, ds.x, ds.y, _methods(methods, top_classes), _csv(metrics), mode=mode, init=init,
                              seed=seed, target=target, order=order, blocks=_blocks(blocks), normalize=normalize, out=out,
                              resume=not no_resume, quiet=quiet, output=_output(output))
    figs = check_figures(res, out)
    report = check_report(res, out, figs)
    for metric in _csv(metrics)[:2]:
        click.echo(f"\n{metric} (mean over {len(ds)} images):")
        click.echo(res.pivot(metric).round(3).to_string())
    click.echo(f"\nresults: {out}/results.parquet, {out}/results.csv\nreport:  {report}")


@main.command("data-randomization")
@click.argument("model")
@click.option("--dataset", "-d", default="fashion-mnist", show_default=True)
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
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False))
@click.option("--quiet", "-q", is_flag=True)
def data_randomization_cmd(model, dataset, methods, metrics, images, seed, train_size, target_accuracy, epochs, lr,
                           no_ceiling, top_classes, out, quiet):
    """Data randomization test: explanations of MODEL trained on true vs on permuted labels."""
    from sanitas.checks import ceiling_verdicts, data_randomization
    from sanitas.data import load_dataset
    from sanitas.models import train as train_model
    from sanitas.report.figures import check_figures
    from sanitas.report.html import check_report

    true = train_model(model, dataset, seed=seed, quiet=quiet)
    perm = train_model(model, dataset, "permuted", seed=seed, train_size=train_size, epochs=epochs, lr=lr,
                       target_accuracy=target_accuracy, quiet=quiet)
    pm = perm.metrics
    click.echo(f"permuted-label {model}: train accuracy {pm['train_accuracy']:.3f} (target {target_accuracy}, "
               f"{'reached' if pm['memorized'] else 'NOT reached'} in {pm['epochs_run']} epochs), "
               f"test accuracy {pm['test_accuracy']:.3f}")
    ceiling = None if no_ceiling else train_model(model, dataset, seed=seed + 1, quiet=quiet).model
    ds = load_dataset(dataset, "test")
    ds = ds.sample(images, seed=seed) if images < len(ds) else ds
    res = data_randomization(true.model, perm.model, ds.x, ds.y, _methods(methods, top_classes), _csv(metrics),
                             ceiling_model=ceiling,
                             out=out, seed=seed, quiet=quiet)
    res.meta["permuted_training"] = pm
    figs = check_figures(res, out)
    report = check_report(res, out, figs)
    if ceiling is not None:
        click.echo(ceiling_verdicts(res).round(3).to_string(index=False))
    else:
        click.echo(res.pivot(_csv(metrics)[0]).round(3).to_string())
    click.echo(f"\nreport: {report}")


@main.command("input-invariance")
@click.argument("model")
@click.option("--dataset", "-d", default="fashion-mnist", show_default=True)
@click.option("--methods", default="gradient,guided_backprop,input_x_gradient,integrated_gradients,deeplift",
              show_default=True)
@click.option("--metrics", default="spearman,spearman_abs,ssim", show_default=True)
@click.option("--shift", default=-1.0, show_default=True, type=float, help="constant added to every input")
@click.option("--shift-baselines", is_flag=True, help="move IG/DeepLIFT baselines with the inputs")
@click.option("--images", "-n", default=64, show_default=True, type=COUNT)
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False))
@click.option("--quiet", "-q", is_flag=True)
def input_invariance_cmd(model, dataset, methods, metrics, shift, shift_baselines, images, seed, out, quiet):
    """Input invariance (Kindermans et al.): are explanations unchanged by a compensated input shift?"""
    from sanitas.checks import input_invariance
    from sanitas.report.figures import check_figures
    from sanitas.report.html import check_report

    net, ds = _model_and_data(model, dataset, images, seed, quiet=quiet)
    res = input_invariance(net, ds.x, ds.y, _csv(methods), _csv(metrics), shift=shift,
                           shift_baselines=shift_baselines, out=out)
    click.echo(f"largest logit difference between the two models: {res.meta['max_logit_difference']:.2e}")
    for metric in _csv(metrics):
        click.echo(f"\n{metric}:\n" + res.pivot(metric).round(3).to_string())
    click.echo(f"\nreport: {check_report(res, out, check_figures(res, out))}")


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
@click.option("--quiet", "-q", is_flag=True)
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
@click.option("--quiet", "-q", is_flag=True)
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


@main.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--dataset", "-d", default="fashion-mnist", show_default=True)
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
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="results directory")
@click.option("--quiet", "-q", is_flag=True)
def biases(models, dataset, images, accuracy_images, seed, distill, distill_models, distill_steps, temperature,
           label_weight, out, quiet):
    """The role of biases (seed 002): accuracy with biases set to zero, f^{b=0} = alpha f + beta, and the
    per-layer bias share of the logit (Eq. 13-14) for each MODEL."""
    from sanitas.evaluate.biases import bias_analysis

    if distill_models:
        distill = _csv(distill_models)
    distill_kwargs = {"T": temperature, **({"steps": distill_steps} if distill_steps else {}),
                      **({"label_weight": label_weight} if label_weight is not None else {})}
    res = bias_analysis(list(models), dataset, images, out, seed=seed, distill=distill, distill_kwargs=distill_kwargs,
                        accuracy_images=accuracy_images, quiet=quiet)
    cols = ["model", "test_accuracy", "zero_bias_accuracy", "alpha", "beta", "r2", "bias_share_of_logit_median",
            "max_residual", "distilled_accuracy", "distill_seconds"]
    table = res.models[[c for c in cols if c in res.models]].round(4)
    table["max_residual"] = res.models["max_residual"].map("{:.1e}".format)  # Eq. 13 check: ~1e-6, not 0
    click.echo(table.to_string(index=False))
    click.echo(f"\nresults: {out}/results.parquet, {out}/summary.csv, {out}/layers.csv\nreport:  {res.report}")


@main.command("evaluate")
@click.argument("model")
@click.option("--dataset", "-d", default="fashion-mnist", show_default=True)
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
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="results directory")
@click.option("--no-resume", is_flag=True, help="recompute finished methods instead of reusing them")
@click.option("--quiet", "-q", is_flag=True)
def evaluate_cmd(model, dataset, methods, layers, images, order, removal, shuffles, target, interpolation, seed, out,
                 no_resume, quiet):
    """Decision-flip evaluation (seed 002): how much signal can go before MODEL changes its decision?"""
    from sanitas.evaluate.quality import evaluate_methods

    net, ds = _model_and_data(model, dataset, images, seed, quiet=quiet)
    lay = None if layers is None else ("all" if layers.strip() == "all" else _csv(layers))
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
