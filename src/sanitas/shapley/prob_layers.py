"""The probabilistic layers: each maps ``(mean, var) -> (mean, var)`` (the rules are in
:mod:`sanitas.shapley.probabilistic`), holding a reference to the user's module, never a copy."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sanitas.errors import UnsupportedLayerError
from sanitas.shapley.moments import Moments, _max_finite, max_moments, relu_moments


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


class _NoConstant(ProbLayer):
    """A linear layer without a constant (``y = A x``): its linear part is the layer itself."""

    affine = True

    def linear(self, x):
        return self.deterministic(x)


class _Rearrange(_NoConstant):
    """Moves values without combining them (flatten, reshape, identity): mean and variance move alike."""

    def forward(self, mean, var):
        return self.deterministic(mean), self.deterministic(var)


class ProbAvgPool2d(_NoConstant):
    """Average pooling: each output is ``sum_w x_w / divisor``, so its variance is ``sum_w v_w / divisor^2``."""

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


class ProbAdaptiveAvgPool2d(_NoConstant):
    """Adaptive average pooling: window ``[floor(i n / o), ceil((i+1) n / o))`` along each axis."""

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


class ProbFlatten(_Rearrange):
    def deterministic(self, x):
        return self.module(x)


class ProbReshape(_Rearrange):
    """A reshape done in ``forward`` outside any module (``x.view(len(x), -1)``), found by tracing."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__(nn.Identity())
        self.shape = tuple(shape)  # per-sample shape

    def deterministic(self, x):
        return x.reshape(x.shape[0], *self.shape)

    def __repr__(self):
        return f"ProbReshape({self.shape})"


class ProbIdentity(_Rearrange):
    """``Identity`` and ``Dropout`` (identity at evaluation: DASP explains the eval-mode model)."""

    def deterministic(self, x):
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
