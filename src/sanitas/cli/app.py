"""The ``sanitas`` command group, its shared options and the helpers its commands share."""

from __future__ import annotations

import os

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


class _CountOrAll(_Validated):
    """A count, or ``all`` (kept as the string ``"all"``)."""

    name = "integer|all"

    def convert(self, value, param, ctx):
        return "all" if isinstance(value, str) and value.strip().lower() == "all" else super().convert(value, param,
                                                                                                      ctx)


COUNT_OR_ALL = _CountOrAll("count")

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

    out = []
    for name in names:
        outer, inner, options = parse_method(name)
        if EXPLAINERS.canonical(outer) == "competitive":
            options["top_classes"] = top_classes
            name = repr(get_explainer("competitive", **({"base": inner} if inner else {}), **options))
        out.append(name)
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


def _blocks(blocks):
    if blocks is None:
        return None
    return blocks if blocks.startswith("prefix:") or blocks == "auto" else _csv(blocks)


def _run_check(check: str, spec: dict, out, quiet, executor=None, address=None):
    """Run a check command as the config entry it is shorthand for (``check: NAME`` with the command's options,
    run by what runs that entry in ``sanitas run``); the entry's Outcome."""
    from pathlib import Path

    from sanitas.executors import use_executor
    from sanitas.experiments.runner_base import run_entry

    with use_executor(executor, address):
        return run_entry(check, spec, Path(out), quiet)


def _entry(model, dataset, classes, output, images, seed, methods, metrics, **options) -> dict:
    """The config entry of a check command: the common keys and the check's own."""
    return {"model": model, "dataset": dataset, "classes": _csv(classes) if classes else None, "images": images,
            "seed": seed, "methods": methods, "metrics": metrics, "output": _output(output), **options}


def _finish(res, out, report, metrics, table=None) -> None:
    """What every check command ends with: the means on stdout with the images each covers, what was left out
    and why (or ``table``, a DataFrame), the verdicts, and where the results and the report are."""
    from sanitas.report.tables import coverage_lines, mean_over, mean_table, stage_labels

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
        click.echo(f"\n{metric} (mean over {mean_over(summary, metric, res.table)}):")
        click.echo(mean_table(summary, metric, labels).round(3).to_string())
        for line in coverage_lines(summary, metric, labels):
            click.echo(f"  {line}")
    if table is not None:
        click.echo(table.round(3).to_string(index=False))
    if res.kind in ("model_randomization", "data_randomization"):
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


def _executor_options(command):
    """--executor and --address: where the cells of model randomization run (see sanitas.executors)."""
    command = click.option("--address", default=None,
                           help="with --executor ray: the cluster's address ('auto' after `ray start`)")(command)
    return click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                        help="run the cells here or as tasks on a Ray cluster (pip install 'sanitas[ray]')")(command)


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


def _exit_if_failed(runs) -> None:
    """Exit 1, naming each failed experiment and why, when any experiment of ``runs`` failed."""
    failed = [(r.paper, name, why) for r in runs for name, why in r.failed.items()]
    if failed:
        lines = "\n".join(f"  [{paper}] {name}: {why}" for paper, name, why in failed)
        click.echo(f"sanitas: error: {len(failed)} experiment(s) failed:\n{lines}", err=True)
        click.get_current_context().exit(1)


