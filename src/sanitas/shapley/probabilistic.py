"""Lightweight probabilistic layers: propagate a mean and a variance through a network.

Every activation is modelled as a Gaussian ``N(mean, var)`` and units are treated as
independent (the "lightweight probabilistic deep network" of Gast & Roth, 2018, used by DASP,
Ancona et al., ICML 2019). A layer maps ``(mean, var) -> (mean, var)``:

* affine layers (``Linear``, ``Conv2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d``, eval-mode
  ``BatchNorm``): ``mean' = A mean + c``, ``var' = (A*A) var`` (element-wise squared weights),
  exact for independent inputs;
* ``ReLU``: the first two moments of a rectified Gaussian (:func:`relu_moments`), exact;
* ``MaxPool2d``: the max of two Gaussians by moment matching (Clark, 1961;
  :func:`max_moments`), applied in sequence over the pooling window -- an approximation for
  windows of more than two elements (the max of a max is not Gaussian);
* ``Flatten``, ``Dropout`` (identity at eval), ``Identity``: shape only.

With zero variance every layer is exactly its deterministic counterpart (same ``torch``
operation on the mean). The probabilistic layers hold *references* to the user's modules:
weights are shared and read only, and nothing is registered as a submodule, so nothing done
to the twin (``eval()``, ``to()``) can reach the user's model.

:func:`to_probabilistic` builds the twin of an ``nn.Sequential``-like model: the leaf modules
in the order they are registered, recursing into containers, and (given an example input)
proves with forward hooks that this order *is* the model's forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from sanitas.errors import InputError, UnsupportedLayerError

Moments = tuple[torch.Tensor, torch.Tensor]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def relu_moments(mean: torch.Tensor, var: torch.Tensor) -> Moments:
    """Mean and variance of ``max(X, 0)`` for ``X ~ N(mean, var)``.

    With ``s = sqrt(var)``, ``z = mean / s``, ``Phi``/``phi`` the standard normal cdf/pdf and
    ``Q = 1 - Phi``::

        E[relu X]   = mean * Phi(z) + s * phi(z)
        Var[relu X] = var * (Phi(z) + (z Q(z) - phi(z)) * (z Phi(z) + phi(z)))

    The variance is ``E[relu(X)^2] - E[relu X]^2`` with ``E[relu(X)^2] = (mean^2 + var) Phi +
    mean s phi``, rearranged so that no large terms cancel (it is ``max_moments`` with ``X2 = 0``).
    ``var == 0`` gives ``relu(mean), 0`` exactly.
    """
    s = torch.sqrt(var)
    z = mean / s                     # +-inf or nan where var == 0; replaced below
    cdf = torch.special.ndtr(z)
    pdf = torch.exp(-0.5 * z * z).mul_(_INV_SQRT_2PI)
    m = torch.addcmul(s * pdf, mean, cdf)
    zcdf = z * cdf
    v = (z - zcdf).sub_(pdf).mul_(zcdf.add_(pdf)).add_(cdf).mul_(var)   # var (Phi + (zQ - phi)(zPhi + phi))
    pos = var > 0
    return torch.where(pos, m, torch.relu(mean)), torch.where(pos, v.clamp_min_(0), torch.zeros_like(v))


def max_moments(m1: torch.Tensor, v1: torch.Tensor, m2: torch.Tensor, v2: torch.Tensor) -> Moments:
    """Mean and variance of ``max(X1, X2)`` for independent ``Xj ~ N(mj, vj)`` (Clark, 1961).

    With ``theta = sqrt(v1 + v2)``, ``a = (m1 - m2) / theta``::

        E[max]   = m1 Phi(a) + m2 Phi(-a) + theta phi(a)
        Var[max] = v1 Phi(a) + v2 Phi(-a) + theta^2 (a Phi(-a) - phi(a)) (a Phi(a) + phi(a))

    (Clark's second moment ``(m1^2+v1) Phi(a) + (m2^2+v2) Phi(-a) + (m1+m2) theta phi(a)`` minus
    the squared mean, taken about the midpoint ``(m1+m2)/2`` so that no large terms cancel.)
    ``theta == 0`` gives the deterministic max; a mean of ``-inf`` (max-pool padding) loses.
    """
    lost1, lost2 = torch.isneginf(m1), torch.isneginf(m2)
    if not (bool(lost1.any()) or bool(lost2.any())):
        return _max_finite(m1, v1, m2, v2)
    m, v = _max_finite(m1.masked_fill(lost1, 0.0), v1, m2.masked_fill(lost2, 0.0), v2)
    m = torch.where(lost2, m1, torch.where(lost1, m2, m))
    v = torch.where(lost2, v1, torch.where(lost1, v2, v))
    return m, v


def _max_finite(m1, v1, m2, v2) -> Moments:
    t2 = v1 + v2
    theta = torch.sqrt(t2)
    a = (m1 - m2).div_(theta)        # +-inf or nan where theta == 0; replaced below
    cdf = torch.special.ndtr(a)
    sf = 1.0 - cdf
    pdf = torch.exp(-0.5 * a * a).mul_(_INV_SQRT_2PI)
    m = torch.addcmul(torch.addcmul(theta * pdf, m1, cdf), m2, sf)
    acdf = a * cdf
    v = (a * sf).sub_(pdf).mul_(acdf.add_(pdf)).mul_(t2)
    v = v.addcmul_(v1, cdf).addcmul_(v2, sf)
    pos = t2 > 0
    return torch.where(pos, m, torch.maximum(m1, m2)), torch.where(pos, v.clamp_min_(0), torch.zeros_like(v))


# ---------------------------------------------------------------------------------------------
# layers


class ProbLayer:
    """One probabilistic layer. ``affine`` layers also expose their linear part (no constant)."""

    affine: bool = False

    def __init__(self, module: nn.Module):
        self.module = module  # shared, read only; a plain attribute, not a registered submodule

    def __call__(self, mean: torch.Tensor, var: torch.Tensor) -> Moments:
        return self.forward(mean, var)

    def forward(self, mean: torch.Tensor, var: torch.Tensor) -> Moments:
        raise NotImplementedError

    def deterministic(self, x: torch.Tensor) -> torch.Tensor:
        """The layer itself on a point input (what the user's module computes at eval)."""
        return self.forward(x, torch.zeros_like(x))[0]

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` for an affine layer ``y = A x + c`` (only where ``affine`` is true)."""
        raise TypeError(f"{type(self).__name__} is not affine")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.module!r})"


class ProbLinear(ProbLayer):
    affine = True

    def forward(self, mean, var):
        w = self.module.weight
        return F.linear(mean, w, self.module.bias), F.linear(var, w * w)

    def deterministic(self, x):
        return F.linear(x, self.module.weight, self.module.bias)

    def linear(self, x):
        return F.linear(x, self.module.weight)


class ProbConv2d(ProbLayer):
    affine = True

    def __init__(self, module: nn.Conv2d):
        super().__init__(module)
        if module.padding_mode != "zeros":
            raise UnsupportedLayerError(f"Conv2d with padding_mode={module.padding_mode!r} is not supported by the "
                                        "probabilistic twin; only zero padding is")

    def _conv(self, x, w, b):
        c = self.module
        return F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups)

    def forward(self, mean, var):
        w = self.module.weight
        return self._conv(mean, w, self.module.bias), self._conv(var, w * w, None)

    def deterministic(self, x):
        return self._conv(x, self.module.weight, self.module.bias)

    def linear(self, x):
        return self._conv(x, self.module.weight, None)


class ProbReLU(ProbLayer):
    def forward(self, mean, var):
        return relu_moments(mean, var)

    def deterministic(self, x):
        return torch.relu(x)


class ProbMaxPool2d(ProbLayer):
    """Max-pooling: Clark's pairwise max applied in sequence over each window (row-major order)."""

    def __init__(self, module: nn.MaxPool2d):
        super().__init__(module)
        if module.return_indices:
            raise UnsupportedLayerError("MaxPool2d(return_indices=True) is not supported by the probabilistic twin")
        pair = nn.modules.utils._pair
        self.k, self.s = pair(module.kernel_size), pair(module.stride if module.stride is not None else
                                                         module.kernel_size)
        self.p, self.d = pair(module.padding), pair(module.dilation)

    def forward(self, mean, var):
        mod = self.module
        h, w = mean.shape[-2:]
        oh, ow = F.max_pool2d(mean.new_zeros(1, 1, h, w), self.k, self.s, self.p, self.d, mod.ceil_mode).shape[-2:]
        # pad so that every window (ceil_mode included) lies inside; padded means are -inf
        ext = [(o - 1) * s + d * (k - 1) + 1 for o, s, d, k in zip((oh, ow), self.s, self.d, self.k)]
        extra = [max(0, e - n - 2 * p) for e, n, p in zip(ext, (h, w), self.p)]
        pads = (self.p[1], self.p[1] + extra[1], self.p[0], self.p[0] + extra[0])
        if any(pads):
            mean = F.pad(mean, pads, value=float("-inf"))
            var = F.pad(var, pads, value=0.0)
        m = v = None
        for p in range(self.k[0]):
            for q in range(self.k[1]):
                r0, c0 = p * self.d[0], q * self.d[1]
                win = (..., slice(r0, r0 + (oh - 1) * self.s[0] + 1, self.s[0]),
                       slice(c0, c0 + (ow - 1) * self.s[1] + 1, self.s[1]))
                if m is None:
                    m, v = mean[win], var[win]
                else:
                    m, v = (max_moments if any(pads) else _max_finite)(m, v, mean[win], var[win])
        return m.contiguous(), v.contiguous()

    def deterministic(self, x):
        mod = self.module
        return F.max_pool2d(x, self.k, self.s, self.p, self.d, mod.ceil_mode)


class ProbAvgPool2d(ProbLayer):
    """Average pooling: each output is ``sum_w x_w / divisor``, so its variance is ``sum_w v_w / divisor^2``."""

    affine = True

    def _pool(self, x, **over):
        m = self.module
        opts = dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding, ceil_mode=m.ceil_mode,
                    count_include_pad=m.count_include_pad, divisor_override=m.divisor_override)
        opts.update(over)
        return F.avg_pool2d(x, **opts)

    def forward(self, mean, var):
        ones = mean.new_ones(1, 1, *mean.shape[-2:])
        # 1 / divisor at every output position: (sum / divisor) / sum, on a tensor of ones
        inv_div = self._pool(ones) / self._pool(ones, count_include_pad=True, divisor_override=1)
        return self._pool(mean), self._pool(var) * inv_div

    def deterministic(self, x):
        return self._pool(x)

    def linear(self, x):
        return self._pool(x)


class ProbAdaptiveAvgPool2d(ProbLayer):
    """Adaptive average pooling: window ``[floor(i n / o), ceil((i+1) n / o))`` along each axis."""

    affine = True

    def forward(self, mean, var):
        h, w = mean.shape[-2:]
        out = F.adaptive_avg_pool2d(mean, self.module.output_size)
        oh, ow = out.shape[-2:]

        def sizes(n, o):
            i = torch.arange(o, dtype=torch.float64)
            return (torch.ceil((i + 1) * n / o) - torch.floor(i * n / o)).to(mean.dtype).to(mean.device)

        count = sizes(h, oh)[:, None] * sizes(w, ow)[None, :]
        return out, F.adaptive_avg_pool2d(var, self.module.output_size) / count

    def deterministic(self, x):
        return F.adaptive_avg_pool2d(x, self.module.output_size)

    def linear(self, x):
        return F.adaptive_avg_pool2d(x, self.module.output_size)


class ProbBatchNorm(ProbLayer):
    """Eval-mode BatchNorm (running statistics): ``y = scale x + shift``, ``var' = scale^2 var``."""

    affine = True

    def __init__(self, module: nn.modules.batchnorm._BatchNorm):
        super().__init__(module)
        if module.running_mean is None or module.running_var is None:
            raise UnsupportedLayerError(f"{type(module).__name__}(track_running_stats=False) normalises with batch "
                                        "statistics even at eval; the probabilistic twin needs running statistics")

    def _scale(self, x):
        m = self.module
        scale = torch.rsqrt(m.running_var + m.eps)
        if m.weight is not None:
            scale = scale * m.weight
        return scale.reshape(-1, *([1] * (x.dim() - 2)))

    def forward(self, mean, var):
        return self.deterministic(mean), var * self._scale(var) ** 2

    def deterministic(self, x):
        m = self.module
        return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    def linear(self, x):
        return x * self._scale(x)


class ProbFlatten(ProbLayer):
    affine = True

    def forward(self, mean, var):
        return self.module(mean), self.module(var)

    def deterministic(self, x):
        return self.module(x)

    def linear(self, x):
        return self.module(x)


class ProbReshape(ProbLayer):
    """A reshape done in ``forward`` outside any module (``x.view(len(x), -1)``), found by tracing."""

    affine = True

    def __init__(self, shape: tuple[int, ...]):
        super().__init__(nn.Identity())
        self.shape = tuple(shape)  # per-sample shape

    def _r(self, x):
        return x.reshape(x.shape[0], *self.shape)

    def forward(self, mean, var):
        return self._r(mean), self._r(var)

    def deterministic(self, x):
        return self._r(x)

    def linear(self, x):
        return self._r(x)

    def __repr__(self):
        return f"ProbReshape({self.shape})"


class ProbIdentity(ProbLayer):
    """``Identity`` and ``Dropout`` (identity at evaluation: DASP explains the eval-mode model)."""

    affine = True

    def forward(self, mean, var):
        return mean, var

    def deterministic(self, x):
        return x

    def linear(self, x):
        return x


#: module type -> probabilistic layer. Subclasses of these types are *not* matched (a subclass may
#: override ``forward``); register them here explicitly if they are safe.
SUPPORTED: dict[type, Callable[[nn.Module], ProbLayer]] = {
    nn.Linear: ProbLinear,
    nn.Conv2d: ProbConv2d,
    nn.ReLU: ProbReLU,
    nn.MaxPool2d: ProbMaxPool2d,
    nn.AvgPool2d: ProbAvgPool2d,
    nn.AdaptiveAvgPool2d: ProbAdaptiveAvgPool2d,
    nn.BatchNorm1d: ProbBatchNorm,
    nn.BatchNorm2d: ProbBatchNorm,
    nn.Flatten: ProbFlatten,
    nn.Dropout: ProbIdentity,
    nn.Dropout2d: ProbIdentity,
    nn.Identity: ProbIdentity,
}

_CONTAINERS = (nn.Sequential,)


def supported_layers() -> list[str]:
    return sorted(t.__name__ for t in SUPPORTED)


# ---------------------------------------------------------------------------------------------
# the twin


class ProbabilisticNet:
    """The probabilistic twin of a sequential model: a list of ``(path, ProbLayer)`` in forward order."""

    def __init__(self, layers: list[tuple[str, ProbLayer]]):
        self.layers = list(layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[tuple[str, ProbLayer]]:
        return iter(self.layers)

    def __repr__(self) -> str:
        body = "\n".join(f"  ({p or '<root>'}): {layer!r}" for p, layer in self.layers)
        return f"ProbabilisticNet(\n{body}\n)"

    def __call__(self, mean: torch.Tensor, var: torch.Tensor, start: int = 0, stop: int | None = None) -> Moments:
        return self.forward(mean, var, start, stop)

    def forward(self, mean: torch.Tensor, var: torch.Tensor, start: int = 0, stop: int | None = None) -> Moments:
        """Propagate ``(mean, var)`` through layers ``start:stop``."""
        if mean.shape != var.shape:
            raise InputError(f"mean and variance must have one shape, got {tuple(mean.shape)} and {tuple(var.shape)}")
        for _, layer in self.layers[start:stop]:
            mean, var = layer(mean, var)
        return mean, var

    def deterministic(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The model's own forward pass, layer by layer (zero variance)."""
        for _, layer in self.layers[start:stop]:
            x = layer.deterministic(x)
        return x

    def linear(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The linear part ``A x`` of an affine stretch of layers (every layer in it must be affine)."""
        for _, layer in self.layers[start:stop]:
            x = layer.linear(x)
        return x

    def affine_prefix(self) -> int:
        """How many leading layers are affine (their composition is one affine map)."""
        n = 0
        for _, layer in self.layers:
            if not layer.affine:
                break
            n += 1
        return n


def _walk(module: nn.Module, path: str, out: list[tuple[str, nn.Module]]) -> None:
    factory = SUPPORTED.get(type(module))
    if factory is not None:
        out.append((path, module))
        return
    children = list(module.named_children())
    if not children:
        if isinstance(module, _CONTAINERS):
            return  # an empty Sequential is the identity
        raise UnsupportedLayerError(
            f"layer '{path or '<root>'}' ({type(module).__name__}) has no probabilistic version, so DASP cannot "
            f"propagate moments through it. Supported layers: {', '.join(supported_layers())}; containers are "
            "walked in registration order")
    for name, child in children:
        _walk(child, f"{path}.{name}" if path else name, out)


def to_probabilistic(model: nn.Module, example: torch.Tensor | None = None) -> ProbabilisticNet:
    """The probabilistic twin of ``model``, sharing its weights.

    The model's leaf modules are taken in registration order (``named_children``, recursively);
    each must be a supported layer (:data:`SUPPORTED`), else :class:`UnsupportedLayerError` names
    its path and type. This is the forward order for ``nn.Sequential`` and for the reference
    models (``PaperCNN.forward`` is ``output(relu3(fc1(flatten(features(x)))))``), but not for
    any ``nn.Module``; so when an ``example`` input is given (or the model records an
    ``input_shape``, as the reference models do) the model is run once with forward hooks and
    the twin is accepted only if that run calls exactly these modules, in this order, each on the
    previous one's output, and returns the last one's output. A reshape between two modules
    (``x.view(len(x), -1)`` in ``forward``) is added to the twin; anything else (a residual
    addition, a functional activation, a reused module) raises :class:`UnsupportedLayerError`
    naming the first layer where the data flow departs from the sequence.
    """
    leaves: list[tuple[str, nn.Module]] = []
    _walk(model, "", leaves)
    layers = [(p, SUPPORTED[type(m)](m)) for p, m in leaves]
    if example is None and hasattr(model, "input_shape"):
        g = torch.Generator().manual_seed(0)
        p0 = next(iter(model.parameters()), None)
        example = torch.rand(1, *model.input_shape, generator=g)
        if p0 is not None:
            example = example.to(device=p0.device, dtype=p0.dtype)
    if example is not None:
        layers = _verify(model, layers, example)
    return ProbabilisticNet(layers)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.shape == b.shape and bool(torch.equal(a, b)))


def _reshaped(prev: torch.Tensor, cur: torch.Tensor) -> bool:
    return (prev.shape[0] == cur.shape[0] and prev.numel() == cur.numel() and prev.shape != cur.shape
            and bool(torch.equal(prev.reshape(-1), cur.reshape(-1))))


def _verify(model: nn.Module, layers: list[tuple[str, ProbLayer]], example: torch.Tensor
            ) -> list[tuple[str, ProbLayer]]:
    """Trace one eval-mode forward pass and check that it is the sequence ``layers``."""
    calls: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []

    def hook(mod, inputs, output):
        calls.append((mod, inputs[0] if inputs else None, output))

    names = {id(layer.module): p for p, layer in layers}
    handles = [m.register_forward_hook(hook) for m in {id(layer.module): layer.module for _, layer in layers}.values()]
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            out = model(example)
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags:
            m.training = flag

    def where(i):
        return f"'{layers[i][0] or '<root>'}' ({type(layers[i][1].module).__name__})"

    fix = ("; DASP's probabilistic twin supports sequential models only (nn.Sequential, or modules whose forward "
           "applies their child modules once each, in registration order)")
    if len(calls) != len(layers) or any(c[0] is not layer.module for c, (_, layer) in zip(calls, layers)):
        for i, (c, (_, layer)) in enumerate(zip(calls, layers)):
            if c[0] is not layer.module:
                got = names.get(id(c[0]), type(c[0]).__name__)
                raise UnsupportedLayerError(f"the model's forward calls '{got}' where the registration order expects "
                                            f"{where(i)} (call {i + 1}){fix}")
        raise UnsupportedLayerError(f"the model's forward made {len(calls)} layer calls, but it has {len(layers)} "
                                    f"layers (a layer skipped or reused){fix}")
    result: list[tuple[str, ProbLayer]] = []
    prev = example
    for i, ((mod, inp, outp), (path, layer)) in enumerate(zip(calls, layers)):
        if not isinstance(inp, torch.Tensor) or not _same(prev, inp):
            if isinstance(inp, torch.Tensor) and _reshaped(prev, inp):
                result.append((f"{path}:reshape", ProbReshape(tuple(inp.shape[1:]))))
            else:
                src = "the model's input" if i == 0 else f"the output of {where(i - 1)}"
                raise UnsupportedLayerError(f"the input of layer {where(i)} is not {src}: the forward applies "
                                            "operations outside modules between them (a residual connection, a "
                                            f"functional call such as F.relu or torch.cat){fix}")
        result.append((path, layer))
        prev = outp
    if not isinstance(out, torch.Tensor) or not _same(prev, out):
        if isinstance(out, torch.Tensor) and _reshaped(prev, out):
            result.append(("<output>:reshape", ProbReshape(tuple(out.shape[1:]))))
        else:
            last = where(len(layers) - 1) if layers else "the input"
            raise UnsupportedLayerError(f"the model's output is not the output of its last layer {last}: the "
                                        "forward transforms it outside modules (e.g. a sum or a softmax in "
                                        f"forward){fix}")
    return result
