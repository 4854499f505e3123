"""Model-free controls: edge detectors and random maps (adebayo2018 compares methods against them)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sanitas.errors import ConfigError, NotApplicableError
from sanitas.explain.base import Explainer
from sanitas.utils.seed import make_generator


def _broadcast(maps: torch.Tensor, G: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A model-free map is the same for every class: (N, C, H, W) -> (B, N, C, H, W)."""
    return maps.unsqueeze(0).expand(G.shape[0], *x.shape).contiguous()


class Sobel(Explainer):
    """Sobel gradient magnitude of the channel-mean image (replicated over channels)."""

    name = "sobel"
    uses_model = False

    def attribute(self, model, x, G):
        if x.dim() != 4:
            raise NotApplicableError(f"sobel needs images of shape (N, C, H, W); got shape {tuple(x.shape)}")
        grey = x.mean(1, keepdim=True)
        kx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], dtype=x.dtype, device=x.device)
        k = torch.stack([kx, kx.T]).unsqueeze(1) / 4
        g = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), k)
        mag = g.pow(2).sum(1, keepdim=True).sqrt()
        return _broadcast(mag.expand_as(x), G, x)


class Canny(Explainer):
    """Canny edge map (scikit-image) of the channel-mean image, 0/1, replicated over channels."""

    name = "canny"
    uses_model = False
    defaults = {"sigma": 1.0}

    def attribute(self, model, x, G):
        from skimage.feature import canny

        if x.dim() != 4:
            raise NotApplicableError(f"canny needs images of shape (N, C, H, W); got shape {tuple(x.shape)}")

        grey = x.mean(1).detach().cpu().numpy()
        edges = np.stack([canny(img, sigma=float(self.sigma)) for img in grey]).astype(np.float32)
        m = torch.from_numpy(edges).to(device=x.device, dtype=x.dtype).unsqueeze(1).expand_as(x)
        return _broadcast(m, G, x)


class RandomMap(Explainer):
    """Random maps: i.i.d. 'normal' (default) or 'uniform' values, seeded (independent of the model)."""

    name = "random"
    uses_model = False
    defaults = {"distribution": "normal", "seed": 0}

    def validate(self):
        if self.distribution not in ("normal", "uniform"):
            raise ConfigError(f"random: distribution must be 'normal' or 'uniform', got {self.distribution!r}")

    def attribute(self, model, x, G):
        rng = make_generator(self.seed)
        draw = torch.randn if self.distribution == "normal" else torch.rand
        m = draw(x.shape, generator=rng, dtype=x.dtype).to(x.device)
        return _broadcast(m, G, x)
