"""Competition for pixels (gupta2019, section 3): the competitive version of any method.

For the chosen label y and every element i of the map, with S_c the base method's map for
class c:

* a positive score S_y[i] survives only if it is the maximum over all labels (ties keep it);
* a negative score S_y[i] survives only if it is the minimum over all labels (ties keep it);
* everything else becomes 0.

``channels="element"`` (default) runs the competition per input element (each channel
separately); ``channels="pixel"`` decides per pixel on the channel sums and keeps or zeroes
all channels of that pixel together.

The K maps come from the base method's batched all-class path. For large heads, classes are
processed in chunks of ``class_chunk`` (running max/min, so memory is bounded by the chunk),
and ``top_classes=M`` restricts the competitors to the M highest-scoring classes of each image
(plus the chosen one): an explicit approximation, off by default.
"""

from __future__ import annotations

import torch

from sanitas.errors import ConfigError
from sanitas.explain._core import chunks, logits_of
from sanitas.explain.base import WrapperExplainer


def competition_mask(chosen: torch.Tensor, max_all: torch.Tensor, min_all: torch.Tensor) -> torch.Tensor:
    """Keep-mask of the rule given the chosen label's scores and the max/min over all labels."""
    return ((chosen > 0) & (chosen >= max_all)) | ((chosen < 0) & (chosen <= min_all))


class Competitive(WrapperExplainer):
    """Competitive version of a method (CGI = competitive(input_x_gradient), CLRP, ...), gupta2019."""

    name = "competitive"
    needs_num_classes = True  # every class competes
    defaults = {"base": "input_x_gradient", "base_options": None, "channels": "element", "class_chunk": None,
                "top_classes": None}

    def validate(self):
        if self.channels not in ("element", "pixel"):
            raise ConfigError(f"competitive: channels must be 'element' or 'pixel', got {self.channels!r}")
        if self.top_classes is not None and int(self.top_classes) < 1:
            raise ConfigError(f"competitive: top_classes must be >= 1, got {self.top_classes}")
        super().validate()
        if not self.inner.uses_model:
            raise ConfigError(f"competitive({self.inner.name}) makes no sense: {self.inner.name} ignores the model "
                              "and gives every class the same map")

    def _scores(self, maps: torch.Tensor) -> torch.Tensor:
        return maps.sum(-3, keepdim=True) if self.channels == "pixel" else maps

    def attribute(self, model, x, G):
        B, n, K = G.shape
        labels = G.argmax(2)
        if not torch.equal(G, torch.nn.functional.one_hot(labels, K).to(G.dtype)):
            raise ConfigError("competitive methods explain one class per map (one-hot targets)")
        if self.top_classes is not None:
            return self._top_classes(model, x, G, labels)
        chunk = int(self.class_chunk) if self.class_chunk else K
        eye = torch.eye(K, device=x.device, dtype=x.dtype)
        if chunk >= K:
            maps = self.inner.attribute(model, x, eye[:, None, :].expand(K, n, K))  # (K, N, C, H, W)
            s = self._scores(maps)
            mx, mn = s.max(0).values, s.min(0).values
            idx = labels.view(B, n, *([1] * (maps.dim() - 2)))
            chosen = torch.take_along_dim(maps, idx, dim=0)
            chosen_s = torch.take_along_dim(s, idx, dim=0)
            return chosen * competition_mask(chosen_s, mx, mn)
        classes = torch.arange(K, device=x.device)[:, None].expand(K, n)  # (R, N): competitor of each row
        return self._streamed(model, x, G, labels, classes, chunk)

    def _streamed(self, model, x, G, labels, competitors, chunk):
        """Competition against the classes ``competitors`` (R, N), R/``chunk`` passes of the base method.

        The chosen map comes from its own pass, so its own entry in a chunk may round differently:
        it is compared against the OTHER labels only (>= all others == maximal).
        """
        K = G.shape[2]
        chosen = self.inner.attribute(model, x, G)
        sc = self._scores(chosen)
        mx = torch.full_like(sc, float("-inf"))
        mn = torch.full_like(sc, float("inf"))
        for sl in chunks(competitors.shape[0], chunk):
            rows = torch.nn.functional.one_hot(competitors[sl], K).to(G.dtype)  # (r, N, K)
            mx, mn = self._update(mx, mn, self._scores(self.inner.attribute(model, x, rows)), competitors[sl], labels)
        return chosen * competition_mask(sc, mx, mn)

    @staticmethod
    def _update(mx, mn, s, row_classes, labels):
        """Fold competitor scores ``s`` (R, N, ...) of classes ``row_classes`` (R, N) into the running
        max/min (B, N, ...), skipping each target row's own label."""
        shape = (1,) + row_classes.shape + (1,) * (s.dim() - 2)
        own = (row_classes.unsqueeze(0) == labels.unsqueeze(1)).view(labels.shape[0], *shape[1:])  # (B, R, N, 1..)
        s = s.unsqueeze(0)
        mx = torch.maximum(mx, torch.where(own, float("-inf"), s).max(1).values)
        mn = torch.minimum(mn, torch.where(own, float("inf"), s).min(1).values)
        return mx, mn

    def _top_classes(self, model, x, G, labels):
        m = min(int(self.top_classes), G.shape[2])
        with torch.no_grad():
            top = logits_of(model, x).topk(m, dim=1).indices  # (N, M)
        return self._streamed(model, x, G, labels, top.T, int(self.class_chunk) if self.class_chunk else m)


def nonzero_fraction(maps: torch.Tensor, dims: int = 3) -> torch.Tensor:
    """Fraction of non-zero elements of each map (over its last ``dims`` axes)."""
    return (maps.flatten(-dims) != 0).to(torch.float32).mean(-1)
