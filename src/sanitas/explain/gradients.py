"""Gradient family: gradient, input x gradient, integrated gradients, SmoothGrad, VarGrad."""

from __future__ import annotations


import numpy as np
import torch

from sanitas.errors import ConfigError, InputError
from sanitas.explain._core import chunks, inputs_per_pass, logits_of, pass_shape, vjp
from sanitas.explain.forward import current_spec, image_rows, per_image
from sanitas.explain.base import Explainer, WrapperExplainer
from sanitas.explain.rules import RuleMode, rule_mode
from sanitas.utils.image import gaussian_blur
from sanitas.utils.seed import make_generator
from sanitas.utils.validation import count, finite_option, real


def input_gradients(model, x: torch.Tensor, G: torch.Tensor, mode: RuleMode | None = None) -> torch.Tensor:
    """``(B, N, ...)`` gradients of the selected logits w.r.t. ``x`` (one forward, one batched backward)."""
    xg = x.detach().clone().requires_grad_(True)
    if mode is None:
        out = logits_of(model, xg)
    else:
        with rule_mode(model, mode):
            out = logits_of(model, mode.mark(xg))
    (g,) = vjp(out, xg, G)
    return g


class Gradient(Explainer):
    """Signed gradient of the target logit w.r.t. the input (no abs: use postprocess.absolute)."""

    name = "gradient"
    per_image = True

    def attribute(self, model, x, G):
        return input_gradients(model, x, G)


class InputXGradient(Explainer):
    """Input times gradient (complete for bias-free ReLU networks)."""

    name = "input_x_gradient"
    per_image = True

    def attribute(self, model, x, G):
        return x.unsqueeze(0) * input_gradients(model, x, G)


# ----------------------------------------------------------------------------------------------
# baselines and integrated gradients
# ----------------------------------------------------------------------------------------------

def make_baseline(baseline, x: torch.Tensor, seed: int = 0, blur_sigma: float | None = None) -> torch.Tensor:
    """``0``/``"zeros"``, a number, a tensor broadcastable to ``x``, ``"blur"`` or ``"uniform"``."""
    if baseline is None or (isinstance(baseline, str) and baseline in ("zero", "zeros", "black")):
        return torch.zeros_like(x)
    if isinstance(baseline, (int, float)):
        return torch.full_like(x, float(baseline))
    if isinstance(baseline, str):
        if baseline == "uniform":
            lo, hi = float(x.min()), float(x.max())
            u = torch.rand(x.shape, generator=make_generator(seed), dtype=x.dtype)
            return (lo + (hi - lo) * u).to(x.device)
        if baseline == "blur":
            return gaussian_blur(x, blur_sigma if blur_sigma is not None else max(x.shape[-1] / 8.0, 1.0))
        raise ConfigError(f"unknown baseline {baseline!r}: use 'zeros', a number, a tensor, 'blur' or 'uniform'")
    packing = current_spec().packing
    if isinstance(baseline, (tuple, list)) and packing is not None:
        baseline = _pack_baselines(baseline, packing, x)
    b = per_image(torch.as_tensor(baseline, dtype=x.dtype, device=x.device))
    try:
        return b.expand_as(x).clone()
    except RuntimeError as exc:
        raise InputError(f"baseline of shape {tuple(b.shape)} does not broadcast to the inputs "
                         f"{tuple(x.shape)}") from exc


def _pack_baselines(baselines, packing, x: torch.Tensor) -> torch.Tensor:
    """One baseline per input of a tuple (each a number, one input's shape, or per image) -> ``(n, D)``."""
    if len(baselines) != len(packing.shapes):
        raise InputError(f"{len(baselines)} baselines for {len(packing.shapes)} inputs: give one per input")
    parts = []
    for b, shape in zip(baselines, packing.shapes):
        t = torch.as_tensor(b, dtype=x.dtype, device=x.device)
        try:
            parts.append(t.expand(*shape).unsqueeze(0) if t.dim() <= len(shape) else t.expand(t.shape[0], *shape))
        except RuntimeError as exc:
            raise InputError(f"a baseline of shape {tuple(t.shape)} does not broadcast to its input's shape "
                             f"(N, {', '.join(map(str, shape))})") from exc
    return packing.pack(parts)


def path_points(steps: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Interpolation coefficients alpha in [0, 1] and quadrature weights summing to 1."""
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    if rule in ("gausslegendre", "gauss_legendre", "gauss-legendre"):
        t, w = np.polynomial.legendre.leggauss(steps)
        return (t + 1) / 2, w / 2
    if rule in ("trapezoid", "riemann_trapezoid"):
        if steps < 2:
            raise ConfigError("the trapezoid rule needs steps >= 2")
        a = np.linspace(0, 1, steps)
        w = np.full(steps, 1 / (steps - 1))
        w[0] /= 2
        w[-1] /= 2
        return a, w
    if rule in ("left", "riemann_left"):
        return np.arange(steps) / steps, np.full(steps, 1 / steps)
    if rule in ("right", "riemann_right"):
        return np.arange(1, steps + 1) / steps, np.full(steps, 1 / steps)
    if rule in ("middle", "riemann_middle"):
        return (np.arange(steps) + 0.5) / steps, np.full(steps, 1 / steps)
    raise ConfigError(f"unknown integration rule {rule!r}: use 'gausslegendre', 'trapezoid', 'left', 'right' "
                      "or 'middle'")


def _check_batch_size(name: str, batch_size) -> None:
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"{name}: batch_size must be a positive number of inputs per pass (or None for the "
                          f"device's default), got {batch_size!r}")


class IntegratedGradients(Explainer):
    """Integrated gradients (Sundararajan et al. 2017) along the straight path from a baseline.

    ``rule``: ``"gausslegendre"`` (default) or ``"trapezoid"`` (a proper trapezoid rule whose
    weights sum to 1; Captum's ``riemann_trapezoid`` weights sum to (n-1)/n), ``left``/``right``/
    ``middle`` Riemann sums. ``batch_size`` bounds the number of path points per forward pass
    (default: 48 MiB of activations per pass on CPU, 1024 points on an accelerator; see ``inputs_per_pass``).
    :meth:`with_gap` returns the maps and the completeness gap sum(map) - (f(x) - f(baseline)).
    """

    name = "integrated_gradients"
    complete = True
    defaults = {"baseline": "zeros", "steps": 32, "rule": "gausslegendre", "batch_size": None, "seed": 0}

    def validate(self):
        gauss = self.rule in ("gausslegendre", "gauss_legendre", "gauss-legendre")
        # Gauss-Legendre nodes come from an n x n eigenproblem: past ~1000 steps it takes longer than the maps
        self.steps = count(self.steps, f"{self.name}: steps", maximum=1024 if gauss else 100_000)
        finite_option(self.baseline, f"{self.name}: baseline")
        path_points(self.steps, self.rule)
        _check_batch_size(self.name, self.batch_size)

    def attribute(self, model, x, G):
        base = make_baseline(self.baseline, x, self.seed)
        alphas, weights = path_points(self.steps, self.rule)
        total = torch.zeros((G.shape[0], *x.shape), dtype=x.dtype, device=x.device)
        images, per_pass = pass_shape(inputs_per_pass(self.batch_size, x, model), x.shape[0])
        shape = (-1,) + (1,) * x.dim()
        for im in chunks(x.shape[0], images):
            xi, bi, Gi = x[im], base[im], G[:, im]
            for sl in chunks(len(alphas), per_pass):
                a = torch.as_tensor(alphas[sl], dtype=x.dtype, device=x.device)
                w = torch.as_tensor(weights[sl], dtype=x.dtype, device=x.device)
                pts = (bi.unsqueeze(0) + a.view(shape) * (xi - bi).unsqueeze(0)).reshape(-1, *x.shape[1:])
                with image_rows(torch.arange(im.start, im.stop, device=x.device).repeat(len(a))):
                    g = input_gradients(model, pts, Gi.repeat(1, len(a), 1)).reshape(G.shape[0], len(a), *xi.shape)
                total[:, im] += (g * w.view((1, -1) + (1,) * x.dim())).sum(1)
        return total * (x - base).unsqueeze(0)

    def with_gap(self, model, x, target="predicted"):
        """``(maps, gap)``: gap per image (and class) = sum(map) - (f(x) - f(baseline))."""
        from sanitas.explain._core import eval_mode, resolve_target

        maps = self(model, x, target)
        with eval_mode(model), torch.no_grad():
            xd = x.detach().to(maps.device)
            fx = logits_of(model, xd)
            fb = logits_of(model, make_baseline(self.baseline, xd, self.seed))
            tgt = resolve_target(target, fx)
        diff = fx - fb
        if tgt is None:
            return maps, maps.flatten(2).sum(-1) - diff
        idx = torch.arange(x.shape[0], device=diff.device)
        return maps, maps.flatten(1).sum(-1) - diff[idx, tgt]


# ----------------------------------------------------------------------------------------------
# noise wrappers
# ----------------------------------------------------------------------------------------------

def _input_span(x: torch.Tensor) -> torch.Tensor:
    """Each image's value range (max - min), shaped to broadcast against ``x``; for packed tuple
    inputs, each input's own range."""
    packing = current_spec().packing
    if packing is None:
        flat = x.flatten(1)
        return (flat.max(1).values - flat.min(1).values).view((x.shape[0],) + (1,) * (x.dim() - 1))
    return torch.cat([(x[:, seg].max(1, keepdim=True).values - x[:, seg].min(1, keepdim=True).values)
                      .expand(-1, seg.stop - seg.start) for seg in packing.segments()], dim=1)


class _NoiseWrapper(WrapperExplainer):
    defaults = {"base": "gradient", "samples": 50, "sigma": 0.15, "seed": 0, "batch_size": None,
                "base_options": None, "noise_fn": None}

    def validate(self):
        count(self.samples, f"{self.name}: samples")
        real(self.sigma, f"{self.name}: sigma (a fraction of the input range)", minimum=0)
        _check_batch_size(self.name, self.batch_size)
        super().validate()

    def noisy_maps(self, model, x, G):
        """Yield ``(B, S_chunk, N, ...)`` maps of noisy copies; noise std = sigma * (max - min) per image."""
        n = x.shape[0]
        rng = make_generator(self.seed)
        span = _input_span(x)
        std = float(self.sigma) * span
        images, per_pass = pass_shape(inputs_per_pass(self.batch_size, x, model), n)
        for sl in chunks(int(self.samples), per_pass):
            s = sl.stop - sl.start
            # the noise of a chunk is drawn for all images at once, so the pass shape never changes it
            if self.noise_fn is None:
                noise = torch.randn((s, *x.shape), generator=rng, dtype=x.dtype).to(x.device)
            else:  # extension point: standard-normal noise of shape (s, N, ...) from elsewhere
                noise = torch.as_tensor(self.noise_fn(s, x)).to(device=x.device, dtype=x.dtype)
            noisy = x.unsqueeze(0) + noise * std.unsqueeze(0)
            parts = []
            for im in chunks(n, images):
                xs = noisy[:, im].reshape(-1, *x.shape[1:])
                with image_rows(torch.arange(im.start, im.stop, device=x.device).repeat(s)):
                    m = self.inner.attribute(model, xs, G[:, im].repeat(1, s, 1))
                parts.append(m.reshape(G.shape[0], s, im.stop - im.start, *x.shape[1:]))
            yield parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


class SmoothGrad(_NoiseWrapper):
    """SmoothGrad (Smilkov et al. 2017): the mean of any method's maps over noisy copies of the input.

    ``sigma`` is relative to each image's range (max - min), default 0.15; ``samples`` copies.
    """

    name = "smoothgrad"

    def attribute(self, model, x, G):
        total = None
        for m in self.noisy_maps(model, x, G):
            part = m.sum(1)
            total = part if total is None else total + part
        return total / int(self.samples)


class VarGrad(_NoiseWrapper):
    """VarGrad (Adebayo et al. 2018): the variance of any method's maps over noisy copies."""

    name = "vargrad"

    def attribute(self, model, x, G):
        s1 = s2 = None
        for m in self.noisy_maps(model, x, G):
            a, b = m.sum(1), (m * m).sum(1)
            s1 = a if s1 is None else s1 + a
            s2 = b if s2 is None else s2 + b
        k = int(self.samples)
        mean = s1 / k
        return (s2 / k - mean * mean).clamp_min(0)
