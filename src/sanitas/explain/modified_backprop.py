"""Guided backpropagation and deconvnet: ReLU backward rules, for modules and functional calls."""

from __future__ import annotations

from sanitas.explain.base import Explainer
from sanitas.explain.gradients import input_gradients
from sanitas.explain.rules import RuleMode


class GuidedBackprop(Explainer):
    """Guided backpropagation (Springenberg et al. 2014): at every ReLU pass only positive
    gradients through units that were active in the forward pass."""

    name = "guided_backprop"
    per_image = True

    def attribute(self, model, x, G):
        return input_gradients(model, x, G, RuleMode(self.name, relu="guided"))


class Deconvnet(Explainer):
    """Deconvnet (Zeiler & Fergus 2014): at every ReLU pass the rectified gradient, ignoring the
    forward activation pattern."""

    name = "deconvnet"
    per_image = True

    def attribute(self, model, x, G):
        return input_gradients(model, x, G, RuleMode(self.name, relu="deconv"))
