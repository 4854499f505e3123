"""Layer-wise relevance propagation (epsilon, z+, alpha-beta) and DeepLIFT (Rescale rule).

Both are implemented as "input times modified gradient": the rules change the backward pass
of each op (see :mod:`sanitas.explain.rules`) so that ``x * grad`` is the propagated relevance
(LRP) or the contribution ``(x - x_ref) * multiplier`` (DeepLIFT).

LRP relevance starts as the target logit and is conserved layer by layer (up to the
stabiliser epsilon and the biases' share). Rules: ``lrp_epsilon`` applies the epsilon rule to
every affine op (conv, linear, batch norm, average pooling, additions of two activations);
``lrp_zplus`` and ``lrp_alpha_beta`` apply their rule to conv and linear layers and the
epsilon rule elsewhere. ReLUs and max-pooling pass relevance as the gradient does (winner
takes all). ``Flatten``/reshapes need no rule. Other non-linearities raise
``UnsupportedLayerError`` naming the layer.
"""

from __future__ import annotations

import torch

from sanitas.errors import ConfigError
from sanitas.explain._core import logits_of
from sanitas.explain.base import Explainer
from sanitas.explain.gradients import input_gradients, make_baseline
from sanitas.explain.rules import ReferenceRecord, RuleMode, rule_mode
from sanitas.utils.validation import finite_option, real


def _stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    sign = torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))
    return z + eps * sign


def _split_args(args, kwargs):
    a = args[0]
    w = args[1] if len(args) > 1 else kwargs["weight"]
    rest = list(args[3:])
    kw = {k: v for k, v in kwargs.items() if k not in ("weight", "bias")}
    return a, w, rest, kw


class LRPEpsilon(Explainer):
    """LRP-epsilon (Bach et al. 2015): R_j = sum_k a_j w_jk / (z_k + eps sign(z_k)) R_k."""

    name = "lrp_epsilon"
    per_image = True
    defaults = {"epsilon": 1e-6}

    def validate(self):
        real(self.epsilon, f"{self.name}: epsilon", minimum=0)

    def mode(self) -> RuleMode:
        return RuleMode(self.name, relu="gradient", affine_eps=float(self.epsilon))

    def attribute(self, model, x, G):
        return x.unsqueeze(0) * input_gradients(model, x, G, self.mode())


class LRPAlphaBeta(LRPEpsilon):
    """LRP-alpha-beta on conv/linear layers: R_j = sum_k (alpha a_j w+_jk / z+_k - beta a_j w-_jk / z-_k) R_k.

    Requires alpha - beta = 1. The rule assumes non-negative layer inputs (true after ReLUs);
    the first layer sees the raw pixels. Other affine layers use the epsilon rule.
    """

    name = "lrp_alpha_beta"
    defaults = {"alpha": 2.0, "beta": 1.0, "epsilon": 1e-6}

    def validate(self):
        super().validate()
        alpha, beta = real(self.alpha, f"{self.name}: alpha"), real(self.beta, f"{self.name}: beta")
        if abs(alpha - beta - 1) > 1e-9 or beta < 0:
            raise ConfigError(f"{self.name}: need alpha - beta = 1 and beta >= 0, got alpha={self.alpha}, "
                              f"beta={self.beta}")

    def _linear_rule(self, func, args, kwargs, z, mode):
        a, w, rest, kw = _split_args(args, kwargs)
        eps = float(self.epsilon)
        zp = func(a, w.clamp_min(0), None, *rest, **kw)
        out = float(self.alpha) * zp * (z / _stab(zp, eps)).detach()
        if float(self.beta):
            zn = func(a, w.clamp_max(0), None, *rest, **kw)
            out = out - float(self.beta) * zn * (z / _stab(zn, eps)).detach()
        return out + (z - out).detach()

    def mode(self) -> RuleMode:
        return RuleMode(self.name, relu="gradient", linear=self._linear_rule, affine_eps=float(self.epsilon))


class LRPZPlus(LRPAlphaBeta):
    """LRP-z+ on conv/linear layers (= alpha-beta with alpha=1, beta=0)."""

    name = "lrp_zplus"
    defaults = {"epsilon": 1e-6}
    alpha, beta = 1.0, 0.0


class DeepLift(Explainer):
    """DeepLIFT with the Rescale rule (Shrikumar et al. 2017), baseline as for IG.

    Every ReLU (also sigmoid/tanh) gets the multiplier (f(x) - f(r)) / (x - r); max-pooling
    splits each window's change between the winners of input and reference. Summation to delta
    holds: sum(map) = f(x) - f(baseline). Works with reused and functional ReLUs (the
    reference activations are matched by call order).
    """

    name = "deeplift"
    complete = True
    defaults = {"baseline": "zeros", "eps": 1e-10, "seed": 0}

    def validate(self):
        finite_option(self.baseline, f"{self.name}: baseline")
        real(self.eps, f"{self.name}: eps", minimum=0)

    def attribute(self, model, x, G):
        base = make_baseline(self.baseline, x, self.seed)
        record = ReferenceRecord(eps=float(self.eps))
        with torch.no_grad(), rule_mode(model, RuleMode(self.name, record=record)) as recording:
            logits_of(model, recording.mark(base))
        record.rewind()
        grads = input_gradients(model, x, G, RuleMode(self.name, relu="rescale", reference=record))
        return (x - base).unsqueeze(0) * grads
