"""Attribution methods behind one batched API.

>>> from sanitas.explain import explain, get_explainer
>>> maps = explain(model, x, y, method="guided_backprop")          # (N, C, H, W), raw and signed
>>> all_classes = explain(model, x, "all", method="input_x_gradient")   # (N, K, C, H, W)
>>> sg = get_explainer("smoothgrad(integrated_gradients)", samples=20)
"""

from sanitas.explain import postprocess
from sanitas.explain.base import CallableExplainer, Explainer
from sanitas.explain.competition import Competitive, competition_mask, nonzero_fraction
from sanitas.explain.cam import GradCAM, GuidedGradCAM
from sanitas.explain.controls import Canny, RandomMap, Sobel
from sanitas.explain.gradients import Gradient, InputXGradient, IntegratedGradients, SmoothGrad, VarGrad
from sanitas.explain.layers import Activity, Bias, FullGrad, layer_attributions, layer_decomposition
from sanitas.explain.modified_backprop import Deconvnet, GuidedBackprop
from sanitas.explain.registry import EXPLAINERS, explain, get_explainer, list_methods, register
from sanitas.explain.shapley import DASP
from sanitas.explain.relevance import DeepLift, LRPAlphaBeta, LRPEpsilon, LRPZPlus

register(Gradient, aliases=("saliency", "vanilla_gradient"))
register(InputXGradient, aliases=("gradient_x_input", "x_gradient"))
register(IntegratedGradients, aliases=("ig",))
register(SmoothGrad, wrapper=True)
register(VarGrad, wrapper=True)
register(GuidedBackprop, aliases=("gbp", "guided_backpropagation"))
register(Deconvnet, aliases=("deconvolution",))
register(GradCAM, aliases=("grad_cam",))
register(GuidedGradCAM, aliases=("guided_grad_cam",))
register(LRPEpsilon, aliases=("lrp",))
register(LRPZPlus)
register(LRPAlphaBeta)
register(DeepLift)
register(FullGrad, aliases=("full_grad",))
register(Activity)
register(Bias)
register(DASP)
register(Competitive, wrapper=True)
register(Sobel)
register(Canny)
register(RandomMap)

__all__ = ["explain", "get_explainer", "list_methods", "register", "EXPLAINERS", "Explainer", "CallableExplainer",
           "postprocess", "layer_attributions", "layer_decomposition", "Gradient", "InputXGradient",
           "IntegratedGradients", "SmoothGrad", "VarGrad", "GuidedBackprop", "Deconvnet", "GradCAM", "GuidedGradCAM",
           "LRPEpsilon", "LRPZPlus", "LRPAlphaBeta", "DeepLift", "FullGrad", "Activity", "Bias", "Sobel", "Canny",
           "RandomMap", "DASP", "Competitive", "competition_mask", "nonzero_fraction"]
