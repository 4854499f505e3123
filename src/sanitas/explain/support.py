"""Which attribution methods work on a given model: each is run on a couple of inputs and either
gives finite maps of the input's shape or a :class:`~sanitas.errors.SanitasError` saying why not.

``sanitas methods --model MODEL`` prints this table; the README's support table is generated from
the same function over the test suite's zoo of architectures (``scripts/support_table.py``, checked
by ``tests/test_contract.py``), never written by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from sanitas.errors import SanitasError

#: every registered method with options that keep a support check fast (the verdict is the same
#: with the defaults: options change sample counts, not which layers a method can pass)
CHECK_OPTIONS: dict[str, str] = {
    "gradient": "gradient",
    "input_x_gradient": "input_x_gradient",
    "integrated_gradients": "integrated_gradients(steps=4)",
    "smoothgrad": "smoothgrad(gradient, samples=2)",
    "vargrad": "vargrad(gradient, samples=2)",
    "guided_backprop": "guided_backprop",
    "deconvnet": "deconvnet",
    "gradcam": "gradcam",
    "guided_gradcam": "guided_gradcam",
    "lrp_epsilon": "lrp_epsilon",
    "lrp_zplus": "lrp_zplus",
    "lrp_alpha_beta": "lrp_alpha_beta",
    "deeplift": "deeplift",
    "fullgrad": "fullgrad",
    "activity": "activity",
    "bias": "bias",
    "dasp": "dasp(n_sizes=2)",
    "competitive": "competitive(input_x_gradient)",
    "sobel": "sobel",
    "canny": "canny",
    "random": "random",
}


@dataclass(frozen=True)
class Support:
    method: str
    works: bool
    reason: str = ""  # why not, in a few words (the full message is ``detail``)
    detail: str = ""


def short_reason(exc: Exception) -> str:
    """A few words from an error message: 'no rule for layer_norm', 'needs a convolutional layer', ..."""
    msg = str(exc)
    m = re.search(r"has no rule for ([\w.]+)", msg)
    if m:
        return f"no rule for {m.group(1)}"
    for pattern, words in (("needs a convolutional layer", "needs a convolutional layer"),
                           ("needs images", "needs images (N, C, H, W)"),
                           ("needs inputs with a spatial layout", "needs spatial inputs"),
                           ("needs inputs \\(N, C, H, W\\) or \\(N, C, L\\)", "needs spatial inputs"),
                           ("no layer to attribute", "needs convolutional layers"),
                           ("convolutional layer with a", "needs convolutional layers"),
                           ("has no probabilistic version", "layer without a probabilistic twin"),
                           ("registration order expects|is not the output of|not the output of its last layer",
                            "needs a chain of modules (no residuals, reuse, functional ops)")):
        if re.search(pattern, msg):
            return words
    first = re.split(r"[;:]", msg, maxsplit=1)[0]
    return first[:60]


def check_support(model: nn.Module, x: torch.Tensor, methods: list[str] | None = None, target=0,
                  output=None) -> list[Support]:
    """Run each method on ``x`` (use one or two inputs) and report whether it works on ``model``."""
    from sanitas.explain.registry import EXPLAINERS, get_explainer

    names = methods if methods is not None else list(EXPLAINERS.names())
    out = []
    for name in names:
        try:
            result = get_explainer(check_spec(name, x))(model, x, target, output=output)
        except SanitasError as exc:
            result = exc
        out.append(support_of(name, result, x))
    return out


def check_spec(method: str, x: torch.Tensor) -> str:
    """The method name with the options a support check runs it with."""
    if method == "dasp" and x.dim() == 4:  # patches keep the check fast on images
        return f"dasp(n_sizes=2, feature_groups={max(1, min(x.shape[-2:]) // 4)})"
    return CHECK_OPTIONS.get(method, method)


def support_of(method: str, result, x: torch.Tensor) -> Support:
    """A :class:`Support` row from what a method returned (maps) or raised (a SanitasError)."""
    if isinstance(result, SanitasError):
        return Support(method, False, short_reason(result), str(result))
    if result.shape != x.shape or not bool(torch.isfinite(result).all()):
        return Support(method, False, "non-finite or misshaped maps",
                       f"shape {tuple(result.shape)}, finite: {bool(torch.isfinite(result).all())}")
    return Support(method, True)


def support_markdown(rows: dict[str, list[Support]], families: dict[str, str]) -> str:
    """A Markdown table: methods x models ('yes', or a letter that the legend below explains)."""
    models = list(rows)
    methods = [r.method for r in rows[models[0]]]
    reasons: dict[str, str] = {}
    cells = {}
    for model in models:
        for r in rows[model]:
            if r.works:
                cells[r.method, model] = "yes"
            else:
                letter = reasons.setdefault(r.reason, "abcdefghijklmnopqrstuvwxyz"[len(reasons)])
                cells[r.method, model] = f"no ({letter})"
    lines = ["| method | " + " | ".join(f"{m}<br>*{families[m]}*" for m in models) + " |",
             "| --- |" + " --- |" * len(models)]
    lines += [f"| `{meth}` | " + " | ".join(cells[meth, m] for m in models) + " |" for meth in methods]
    lines.append("")
    lines += [f"({letter}) {reason}  " for reason, letter in reasons.items()]
    return "\n".join(lines)


def format_support(rows: list[Support]) -> str:
    width = max(len(r.method) for r in rows)
    return "\n".join(f"{r.method:<{width}}  {'works' if r.works else 'no   '}  {r.reason}" for r in rows)
