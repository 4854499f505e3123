"""Moments of a rectified Gaussian and of the max of two Gaussians: what DASP's probabilistic ReLU and
max-pooling layers propagate (:mod:`sanitas.shapley.probabilistic`)."""

from __future__ import annotations

import math

import torch

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
