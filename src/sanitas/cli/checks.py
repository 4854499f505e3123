"""The checks as commands: randomize, data-randomization, input-invariance, biases, quality."""

from __future__ import annotations

import copy
import sys

import click

from sanitas.cli.app import (COUNT, COUNT_OR_ALL, SEED, MODEL_HELP, _quiet_option, _output_option, _data_options, _dataset, main,
                             _csv, _methods, TOP_CLASSES_HELP, _output, _calls, _blocks, _finish, _entry,
                             _run_check, _executor_options)


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
@_executor_options
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
    entry = _entry(model, dataset, classes, output, images, seed, _methods(methods, top_classes), _csv(metrics),
                   mode=mode, init=init, target=target, order=order, blocks=_blocks(blocks), normalize=normalize,
                   draws=draws, model_seeds=model_seeds, ceiling_model=ceiling, resume=not no_resume)
    oc = _run_check("model_randomization", entry, out, quiet, executor, address)
    _finish(oc.result, out, oc.report, _csv(metrics)[:2])


@main.command("data-randomization", epilog=MODEL_HELP)
@click.argument("model")
@_data_options
@click.option("--methods", default="gradient,smoothgrad,input_x_gradient,integrated_gradients,guided_backprop,"
              "gradcam,competitive(input_x_gradient)", show_default=True)
@click.option("--metrics", default="spearman_abs,spearman,ssim,hog", show_default=True)
@click.option("--images", "-n", default=64, show_default=True, type=COUNT)
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--train-size", default="2000", show_default=True, type=COUNT_OR_ALL,
              help="training images of the permuted-label model: a seeded subset of this size, or all (the paper's "
                   "protocol: the cnn memorized 60,000 in 43 epochs, 49 min on a 2-core CPU, with --epochs 60)")
@click.option("--target-accuracy", default=0.95, show_default=True, type=float,
              help="stop permuted-label training at this training accuracy")
@click.option("--epochs", default=100, show_default=True, type=COUNT, help="epoch budget of permuted-label training")
@click.option("--lr", default=3e-4, show_default=True, type=float,
              help="learning rate of permuted-label training (1e-3 never leaves chance level for cnn)")
@click.option("--no-ceiling", is_flag=True, help="skip the second true-label model (model-seed ceiling)")
@click.option("--top-classes", type=click.IntRange(min=1), default=None, metavar="M", help=TOP_CLASSES_HELP)
@_output_option
@_executor_options
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False))
@_quiet_option
def data_randomization_cmd(model, dataset, classes, methods, metrics, images, seed, train_size, target_accuracy,
                           epochs, lr, no_ceiling, top_classes, output, executor, address, out, quiet):
    """Data randomization test: explanations of MODEL trained on true vs on permuted labels.

    MODEL's architecture is trained from a fresh initialisation on permuted labels (and, for the ceiling, on the
    true labels with seed + 1); the true-label model is MODEL itself when its spec has weights, else it is
    trained too.
    """
    from sanitas.checks import ceiling_verdicts

    entry = _entry(model, dataset, classes, output, images, seed, _methods(methods, top_classes), _csv(metrics),
                   train_size=train_size, target_accuracy=target_accuracy, epochs=epochs, lr=lr,
                   ceiling=not no_ceiling)
    oc = _run_check("data_randomization", entry, out, quiet, executor, address)
    res, pm = oc.result, oc.result.meta["permuted_training"]
    click.echo(f"permuted-label model: train accuracy {pm['train_accuracy']:.3f} (target {target_accuracy}, "
               f"{'reached' if pm['memorized'] else 'NOT reached'} in {pm['epochs_run']} epochs), "
               f"test accuracy {pm['test_accuracy']:.3f}")
    ceiling = not no_ceiling
    _finish(res, out, oc.report, [] if ceiling else _csv(metrics)[:1], ceiling_verdicts(res) if ceiling else None)


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
@_executor_options
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False))
@_quiet_option
def input_invariance_cmd(model, dataset, classes, methods, metrics, shift, shift_baselines, images, seed, output,
                         executor, address, out, quiet):
    """Input invariance (Kindermans et al.): are explanations unchanged by a compensated input shift?"""
    entry = _entry(model, dataset, classes, output, images, seed, _csv(methods), _csv(metrics), shift=shift,
                   shift_baselines=shift_baselines)
    oc = _run_check("input_invariance", entry, out, quiet, executor, address)
    click.echo(f"largest logit difference between the two models: {oc.result.meta['max_logit_difference']:.2e}")
    _finish(oc.result, out, oc.report, _csv(metrics))


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
    """The role of biases (grabska2020): accuracy with biases set to zero, f^{b=0} = alpha f + beta, and the
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


@main.command("quality", epilog=MODEL_HELP)
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
    """Quality of explanations by the decision flip (grabska2020): how much of the image can go, in the order
    each method's map gives, before MODEL changes its decision? (`sanitas evaluate` is its older name.)"""
    lay = None if layers is None else ("all" if layers.strip() == "all" else _csv(layers))
    entry = _entry(model, dataset, classes, output, images, seed, _csv(methods), None, layers=lay, target=target,
                   orders=_csv(order), removal=removal, n_shuffles=shuffles, interpolation=interpolation,
                   resume=not no_resume)
    res = _run_check("quality", entry, out, quiet).result
    n = res.table["image"].nunique()
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_rows", 500):
        click.echo(f"mean over {n} images (higher delta_e_minus / e_minus / delta_e_delta is better):")
        click.echo(res.pivot().round(4).to_string())
        v = res.verdicts()
        click.echo(f"\nverdict per method: {res.select_metric} against 0, the method's own maps of other images "
                   "(95% interval):")
        for r in v.to_dict("records"):
            click.echo(f"  {r['method']}: {r['verdict']}  {r['estimate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
                       f"  n={r['n']}")
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


# the older name of the command, still accepted (not listed)
_evaluate_alias = copy.copy(evaluate_cmd)
_evaluate_alias.hidden = True
main.add_command(_evaluate_alias, "evaluate")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
