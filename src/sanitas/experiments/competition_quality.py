"""Competition keeps the trained model's map, and blanks a random one's (gupta2019 figure 4, section 4).

gupta2019 figure 4 / section 5.1: "applying competition does not visibly degrade the map" of a trained
model; section 4: on a randomized net "each pixel is equally likely to receive its highest score from each
label", so "the saliency map would be expected to become almost blank".

Check ``competition_quality`` (figure 4) measures the maps instead of looking at them: each base method's
map of the predicted class and its competitive version (computed from the same all-class maps), both scored
by grabska2020's decision-flip metric (:func:`sanitas.evaluate.perturbation.perturbation_scores`: pixels
removed in the map's order until the decision flips; ``e_minus`` the signal removed least-salient first,
``delta_e_minus`` its gain over maps of other images, the shuffled-map baseline). Rows: method, variant
``trained``, stage 0, every metric of ``perturbation_scores``, per image; figure ``quality.png`` (images,
plain and competitive maps, in the layout of figure 4) and ``quality_scores.png``.

Check ``competition_random_net`` (section 4) fully randomizes the model (every layer, ``init``), computes the
base method's maps of all K classes and, for each ``K'`` of ``classes`` (the competition among the first
``K'`` logits, i.e. a head of ``K'`` classes; the dataset's K included), the fraction of the elements with a
non-zero vote that the competitive map of the image's label (modulo K') keeps (metric
``surviving_fraction``, variant ``random, K=<K'>``; the trained model's as variant ``trained, K=<K>`` at
stage 0). For independent symmetric votes a pixel survives when the chosen label's vote is positive and the
largest or negative and the smallest: ``2/K (1 - 2^-K)`` (scalars ``random_vote_survivors/K=<K'>``;
:func:`sanitas.similarity.calibration.competitive_random_votes`); the paper's "zero with probability
1 - 1/k" counts one sign only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sanitas.experiments.competition_maps import (_rows, _summary, base_methods, chosen_maps, compete_all,
                                                  competitive_name)
from sanitas.experiments.runner_base import study_outcome
from sanitas.experiments.runners import Outcome, _data, model_call, runner

if TYPE_CHECKING:
    import torch


def random_vote_survivors(k: int) -> float:
    """Expected fraction of elements the competition keeps when K labels' votes are i.i.d. and symmetric."""
    return 2.0 / k * (1.0 - 2.0 ** -k)


def surviving_fraction(maps: torch.Tensor, classes: int, target: torch.Tensor) -> torch.Tensor:
    """Per image: the fraction of elements with a non-zero vote (among the first ``classes`` labels) that
    the competitive map of label ``target % classes`` keeps. ``maps``: ``(N, K, ...)``, ``target``: ``(N,)``.

    One label per image, chosen without looking at the network (its class label): averaged over all labels
    the fraction would be a count of sign patterns, 2/K on any network (each element survives in the
    map of its positive maximum and of its negative minimum).
    """
    sub = maps[:, :classes]
    kept = chosen_maps(compete_all(sub), target.to(sub.device).long() % classes) != 0
    voted = (sub != 0).any(1).flatten(1).sum(1).double()
    return kept.flatten(1).sum(1).double().cpu() / voted.clamp_min(1).cpu()


def _quality_figure(x, shown: dict, path: Path, n: int = 4) -> Path:
    from sanitas.report.figures import new_figure, save_figure

    n = min(n, len(x))
    fig = new_figure(figsize=(1.3 * (len(shown) + 1) + 0.3, 1.35 * n + 0.5))
    fig.set_layout_engine("constrained", w_pad=0.01, h_pad=0.01, wspace=0.01, hspace=0.01)
    axes = fig.subplots(n, len(shown) + 1, squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(x[i].float().mean(0).cpu().numpy(), cmap="gray")
        for j, (name, maps) in enumerate(shown.items(), start=1):
            img = maps[i].float().sum(0).cpu().numpy()
            vmax = float(np.abs(img).max()) or 1.0
            axes[i, j].imshow(img, cmap="bwr", vmin=-vmax, vmax=vmax)
            if i == 0:
                axes[0, j].set_title(name.replace("competitive(", "competitive(\n"), fontsize=7)
    axes[0, 0].set_title("input", fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("maps of the predicted class (gupta2019 fig. 4)", fontsize=8)
    return save_figure(fig, path, dpi=120)


def _scores_figure(table: pd.DataFrame, path: Path) -> Path:
    from sanitas.report.figures import new_figure, save_figure

    metrics = [m for m in ("e_minus", "e_minus_xi", "e_plus", "e_plus_xi") if m in set(table["metric"])]
    methods = list(dict.fromkeys(table["method"]))
    fig = new_figure(figsize=(max(4.5, 1.2 + 1.5 * len(methods)), 3.6))
    ax = fig.subplots()
    width = 0.8 / len(metrics)
    for j, metric in enumerate(metrics):
        part = table[table["metric"] == metric].groupby("method")["value"]
        mean, sem = part.mean().reindex(methods), part.sem().reindex(methods)
        ax.bar(np.arange(len(methods)) + (j - (len(metrics) - 1) / 2) * width, mean, width, yerr=1.96 * sem,
               color=f"C{j // 2}", alpha=1.0 if j % 2 == 0 else 0.45, capsize=2,
               label=metric.replace("_xi", " (shuffled maps)"))
    ax.set_xticks(np.arange(len(methods)), [m.replace("competitive(", "competitive(\n") for m in methods], fontsize=7)
    ax.set_ylabel("signal removed at the decision flip, e", fontsize=8)
    ax.legend(fontsize=6)
    ax.set_title("decision-flip metric (grabska2020), mean and 95% CI\n"
                 "e_minus: higher is better; e_plus: lower is better", fontsize=8)
    return save_figure(fig, path, dpi=110, tight=True)


@runner("competition_quality")
def run_quality(spec: dict, out: Path, quiet: bool) -> Outcome:
    """Plain and competitive maps of the trained model under the decision-flip metric (module docs)."""
    from sanitas.engine import constant_maps
    from sanitas.evaluate.perturbation import perturbation_scores
    from sanitas.utils.forward import inference_logits

    t0 = time.perf_counter()
    src, net, ds = _data(spec, quiet)
    methods = base_methods(spec, ["input_x_gradient"])
    maps, const = {}, {}
    with model_call(output=src.output):
        pred = inference_logits(net, ds.x).argmax(1)
        for name, explainer in methods.items():
            plain = explainer(net, ds.x, "all").detach()
            maps[name] = chosen_maps(plain, pred)
            maps[competitive_name(name)] = chosen_maps(compete_all(plain), pred)
        scores = perturbation_scores(net, ds.x, maps, n_shuffles=int(spec.get("n_shuffles", 10)),
                                     seed=int(spec["seed"]), quiet=quiet)
    for name, m in maps.items():
        const[name] = constant_maps(m.flatten(1)).cpu().numpy()
    table = scores.assign(variant="trained", stage=0)
    table["constant_map"] = [bool(const[m][i]) for m, i in zip(table["method"], table["image"])]
    table = table[["method", "variant", "stage", "metric", "image", "value", "constant_map"]]
    figs = [_quality_figure(ds.x, maps, out / "figures" / "quality.png"),
            _scores_figure(table, out / "figures" / "quality_scores.png")]
    summary = _summary(table)
    scalars = {f"mean/{r['metric']}/{r['method']}": float(r["mean"]) for r in summary.to_dict("records")}
    perturbation = {k: v for k, v in scores.attrs.get("sanitas", {}).items() if k != "xi_index"}
    return study_outcome(
        out, spec, t0, table, summary, figs, "sanitas: competition and the quality of the map (gupta2019 figure 4)",
        scalars=scalars, meta={"perturbation": perturbation},
        text=("Each method's map of the predicted class and its competitive version, scored by the decision-flip "
              "metric of grabska2020 (e_minus: signal removed, least salient first, before the decision flips; "
              "delta_e_minus: e_minus minus that of maps of other images, the shuffled-map baseline)."))


@runner("competition_random_net")
def run_random_net(spec: dict, out: Path, quiet: bool) -> Outcome:
    """The fraction of pixels competition keeps on a fully randomized model, per number of classes."""
    import torch

    from sanitas.randomize import randomize

    t0 = time.perf_counter()
    src, net, ds = _data(spec, quiet)
    name, explainer = next(iter(base_methods(spec, ["input_x_gradient"]).items()))
    with model_call(output=src.output):
        rand = randomize(net, ds.x[:1], init=spec.get("init", "truncated_normal"), seed=int(spec["seed"]))
        trained = explainer(net, ds.x, "all").detach()
        random = explainer(rand, ds.x, "all").detach()
    k = trained.shape[1]
    y = torch.as_tensor(ds.y)
    compared = spec.get("classes_compared", [2, 3, 5])
    ks = sorted({int(c) for c in (compared if isinstance(compared, list) else [compared])} | {k})
    if ks[0] < 2 or ks[-1] > k:
        from sanitas.errors import ConfigError

        raise ConfigError(f"classes_compared must lie in 2..{k} (the model's classes), got {ks}")
    none = np.zeros(len(ds.x), dtype=bool)
    cname = competitive_name(name)
    parts = [_rows(cname, f"trained, K={k}", 0, {"surviving_fraction": surviving_fraction(trained, k, y).numpy()},
                   none)]
    parts += [_rows(cname, f"random, K={c}", i, {"surviving_fraction": surviving_fraction(random, c, y).numpy()},
                    none) for i, c in enumerate(ks, start=1)]
    table = pd.concat(parts, ignore_index=True)
    scalars = {f"random_vote_survivors/K={c}": random_vote_survivors(c) for c in ks}
    scalars["num_classes"] = float(k)
    figs = [_survival_figure(table, ks, out / "figures" / "random_net_survivors.png")]
    summary = table.groupby(["variant"], sort=False)["value"].agg(["mean", "std", "count"]).reset_index()
    summary["expected_random_votes"] = [float("nan")] + [random_vote_survivors(c) for c in ks]
    return study_outcome(
        out, spec, t0, table, summary, figs, "sanitas: competition on a randomized network (gupta2019 section 4)",
        scalars=scalars,
        text=("The fraction of the elements with a non-zero vote that the competitive map keeps, on the fully "
              "randomized model with the competition among the first K' logits, against 2/K' (1 - 2^-K'), "
              "the fraction for independent symmetric votes; the trained model's for comparison."))


def _survival_figure(table: pd.DataFrame, ks: list[int], path: Path) -> Path:
    from sanitas.report.figures import new_figure, save_figure

    fig = new_figure(figsize=(5.2, 3.4))
    ax = fig.subplots()
    grid = np.arange(2, max(ks) + 1)
    ax.plot(grid, [random_vote_survivors(int(c)) for c in grid], color="k", lw=1, label="2/K (1 - 2^-K): random votes")
    rand = table[table["variant"].str.startswith("random")]
    g = rand.groupby("variant", sort=False)["value"]
    ax.errorbar(ks, g.mean().to_numpy(), yerr=1.96 * g.sem().to_numpy(), fmt="o", color="C3", capsize=3,
                label="randomized network (mean, 95% CI)")
    tr = table[table["variant"].str.startswith("trained")]["value"]
    ax.scatter([max(ks)], [tr.mean()], marker="s", color="C0", label="trained network")
    ax.set_xlabel("number of competing classes K")
    ax.set_ylabel("fraction of voted elements kept")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("competition on a randomized network (gupta2019 section 4)", fontsize=9)
    return save_figure(fig, path, dpi=110, tight=True)
