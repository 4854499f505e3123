"""Init schemes: how one layer's weights are re-initialized, deterministically.

Every scheme changes only the parameters a layer owns (its direct parameters, not its
children's) and draws from a private generator seeded by :func:`layer_seed` ``(seed, layer
name)``: the same layer gets the same random weights whether it is randomized alone
(independent), as part of a cascade, or in a re-run. The caller's global RNG is never reseeded.

Registered schemes (:data:`INIT_SCHEMES`):

``truncated_normal``
    Normal(0, 0.01) cut at 2 standard deviations (values in [-0.02, 0.02]), for weights and
    biases: the paper's scheme (adebayo2018, appendix B). The resulting standard deviation is
    0.01 x 0.8796 = 0.0088.
``uniform``
    Uniform on [-0.02, 0.02]: the same support as ``truncated_normal`` (the paper reports a
    uniform distribution "as well" without giving its range; std 0.0115).
``default``
    The layer's own ``reset_parameters()`` (PyTorch's default init: Kaiming-uniform for conv and
    linear, ones/zeros for BatchNorm, ...), run with the global RNG temporarily seeded by
    :func:`layer_seed` and restored afterwards. This is what Quantus' MPRT does. A module
    without ``reset_parameters`` raises :class:`UnsupportedLayerError` before any stage runs.
    Anything else that ``reset_parameters`` touches (a child's parameters) is restored. It draws
    on the parameter's device, so CPU and GPU give different (each reproducible) weights; the
    other schemes draw on the CPU and give the same weights on every device. For BatchNorm,
    LayerNorm and PReLU it is not random at all (ones/zeros, 0.25).
``permute``
    A random permutation of each trained parameter tensor's entries (all entries of the tensor
    shuffled together): keeps each tensor's distribution of values, destroys its structure.

Build a scheme with other constants directly, e.g. ``TruncatedNormal(std=0.05)`` or
``Uniform(-0.1, 0.1)``, and pass it wherever a scheme name is accepted.

BatchNorm running statistics (``bn_stats``)
-------------------------------------------
A norm layer with running statistics (BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm with
``track_running_stats``) has ``weight``/``bias`` (randomized by the scheme like any parameter)
and the buffers ``running_mean``/``running_var``/``num_batches_tracked``:

* ``"keep"``: keep the trained running statistics. The original release (TensorFlow)
  re-initialized trainable variables only, so this reproduces the paper.
* ``"reset"``: mean 0, variance 1, count 0, as ``reset_running_stats()`` does.
* ``"auto"`` (the default): the scheme's own choice: ``"reset"`` for ``default`` (exactly what
  ``reset_parameters()`` does, and what Quantus does) and ``"keep"`` for ``truncated_normal``,
  ``uniform`` and ``permute`` (the paper's protocol).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from sanitas.errors import ConfigError, UnsupportedLayerError
from sanitas.registry import Registry
from sanitas.utils.seed import isolated_rng, make_generator

BN_STATS = ("auto", "keep", "reset")
_STAT_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def layer_seed(seed: int, name: str) -> int:
    """A 63-bit seed for one layer, from a stable hash (SHA-256) of ``(seed, layer name)``.

    Stable across processes and Python versions (unlike ``hash()``), so resumed runs and the
    cascading / independent variants randomize a given layer identically.
    """
    digest = hashlib.sha256(f"sanitas.randomize:{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class InitScheme:
    """Base class: re-initialize the named direct parameters of one module, in place.

    Subclasses implement :meth:`apply`. ``bn_stats_default`` is what ``bn_stats="auto"`` means
    for this scheme. Draws must come from ``generator`` (or, for code that uses the global RNG,
    from inside ``isolated_rng(seed)``) so that results depend only on ``(seed, layer name)``.
    """

    name: ClassVar[str] = ""
    bn_stats_default: ClassVar[str] = "keep"

    def apply(self, module: nn.Module, param_names: Sequence[str], generator: torch.Generator,
              seed: int) -> None:
        raise NotImplementedError

    def check(self, module: nn.Module, name: str) -> None:
        """Raise :class:`UnsupportedLayerError` if this scheme cannot randomize ``module`` (checked up front)."""

    def config(self) -> dict:
        """The scheme and its constants, for ``meta.json``."""
        fields = dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}
        return {"name": self.name, **fields}


def _fill(param: torch.Tensor, values: torch.Tensor) -> None:
    param.copy_(values.reshape(param.shape).to(device=param.device, dtype=param.dtype))


@dataclass(frozen=True)
class TruncatedNormal(InitScheme):
    """Normal(mean, std) truncated at ``cutoff`` standard deviations (paper default: 0, 0.01, 2)."""

    mean: float = 0.0
    std: float = 0.01
    cutoff: float = 2.0
    name: ClassVar[str] = "truncated_normal"

    def __post_init__(self):
        if not (self.std > 0 and self.cutoff > 0):
            raise ConfigError(f"truncated_normal needs std > 0 and cutoff > 0, got std={self.std}, "
                              f"cutoff={self.cutoff}")

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        # Inverse-CDF sampling in float64 (on CPU, so the weights do not depend on the device).
        cdf = lambda z: 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))  # noqa: E731
        lo, hi = cdf(-self.cutoff), cdf(self.cutoff)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        z = math.sqrt(2.0) * torch.erfinv(2.0 * (lo + (hi - lo) * u) - 1.0)
        return self.mean + self.std * z.clamp_(-self.cutoff, self.cutoff)

    def apply(self, module, param_names, generator, seed):
        for pn in param_names:
            p = getattr(module, pn)
            _fill(p, self.sample(p.numel(), generator))


@dataclass(frozen=True)
class Uniform(InitScheme):
    """Uniform on [low, high] (default [-0.02, 0.02], the support of ``truncated_normal``)."""

    low: float = -0.02
    high: float = 0.02
    name: ClassVar[str] = "uniform"

    def __post_init__(self):
        if not self.low < self.high:
            raise ConfigError(f"uniform needs low < high, got [{self.low}, {self.high}]")

    def apply(self, module, param_names, generator, seed):
        for pn in param_names:
            p = getattr(module, pn)
            u = torch.rand(p.numel(), generator=generator, dtype=torch.float64)
            _fill(p, self.low + (self.high - self.low) * u)


@dataclass(frozen=True)
class Default(InitScheme):
    """The layer's own ``reset_parameters()`` under a private seed (PyTorch's default init)."""

    name: ClassVar[str] = "default"
    bn_stats_default: ClassVar[str] = "reset"

    @staticmethod
    def _reset(module: nn.Module):
        # nn.MultiheadAttention names it _reset_parameters
        for attr in ("reset_parameters", "_reset_parameters"):
            if callable(getattr(module, attr, None)):
                return getattr(module, attr)
        return None

    def check(self, module, name):
        if self._reset(module) is None:
            raise UnsupportedLayerError(
                f"init scheme 'default' calls the layer's reset_parameters(), which layer {name or '(model)'!r} "
                f"({type(module).__name__}) does not have. Use init='truncated_normal', 'uniform' or 'permute'")

    def apply(self, module, param_names, generator, seed):
        self.check(module, type(module).__name__)
        reset = self._reset(module)
        owned = set(param_names)
        # reset_parameters may touch more than the owned parameters (a child's, a tied one): restore those.
        keep = {k: v.detach().clone() for k, v in _state(module) if k not in owned}
        with isolated_rng(seed):
            reset()
        for k, v in _state(module):
            if k in keep:
                v.copy_(keep[k])


@dataclass(frozen=True)
class Permute(InitScheme):
    """Shuffle the entries of each trained parameter tensor (keeps the values, loses the structure)."""

    name: ClassVar[str] = "permute"

    def apply(self, module, param_names, generator, seed):
        for pn in param_names:
            p = getattr(module, pn)
            perm = torch.randperm(p.numel(), generator=generator).to(p.device)
            p.copy_(p.detach().reshape(-1)[perm].reshape(p.shape))


def _state(module: nn.Module):
    """(qualified name, tensor) for every parameter and buffer of ``module`` (direct names unqualified)."""
    yield from module.named_parameters(remove_duplicate=False)
    yield from ((k, b) for k, b in module.named_buffers(remove_duplicate=False) if b is not None)


INIT_SCHEMES: Registry[InitScheme] = Registry("init scheme")
INIT_SCHEMES.register("truncated_normal", TruncatedNormal(), aliases=("trunc_normal", "truncnorm"))
INIT_SCHEMES.register("uniform", Uniform())
INIT_SCHEMES.register("default", Default(), aliases=("reset_parameters", "pytorch"))
INIT_SCHEMES.register("permute", Permute(), aliases=("shuffle", "permutation"))


def resolve_init(init: str | InitScheme) -> InitScheme:
    """A scheme from a registered name (did-you-mean on typos) or an :class:`InitScheme` instance."""
    if isinstance(init, InitScheme):
        return init
    if not isinstance(init, str):
        raise ConfigError(f"init must be a scheme name ({', '.join(INIT_SCHEMES.names())}) or an InitScheme, "
                          f"got {type(init).__name__}")
    return INIT_SCHEMES.get(init)


def resolve_bn_stats(bn_stats: str, scheme: InitScheme) -> str:
    """``"keep"`` or ``"reset"``: the effective BatchNorm running-statistics policy for ``scheme``."""
    policy = str(bn_stats).strip().lower()
    if policy not in BN_STATS:
        raise ConfigError(f"bn_stats must be one of {', '.join(BN_STATS)}, got {bn_stats!r}")
    return scheme.bn_stats_default if policy == "auto" else policy


def has_running_stats(module: nn.Module) -> bool:
    return callable(getattr(module, "reset_running_stats", None)) and \
        isinstance(getattr(module, "running_mean", None), torch.Tensor)


@torch.no_grad()
def randomize_module(module: nn.Module, name: str, *, init: str | InitScheme = "truncated_normal", seed: int = 0,
                     bn_stats: str = "auto", param_names: Sequence[str] | None = None) -> None:
    """Re-initialize one module **in place**, deterministically given ``(seed, name)``.

    ``name`` is the layer's dotted name (it selects the random stream, see :func:`layer_seed`);
    ``param_names`` the direct parameters to change (default: all of them). Running statistics
    of a norm layer follow ``bn_stats`` (see the module docstring).
    """
    scheme = resolve_init(init)
    policy = resolve_bn_stats(bn_stats, scheme)
    if param_names is None:
        param_names = [pn for pn, _ in module.named_parameters(recurse=False)]
    s = layer_seed(seed, name)
    stats = has_running_stats(module)
    saved = {k: getattr(module, k).clone() for k in _STAT_BUFFERS
             if stats and isinstance(getattr(module, k, None), torch.Tensor)}
    scheme.apply(module, list(param_names), make_generator(s), s)
    if stats:
        if policy == "reset":
            module.reset_running_stats()
        else:
            for k, v in saved.items():
                getattr(module, k).copy_(v)
