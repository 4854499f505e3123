"""Layer discovery and model parameter randomization (adebayo2018, sections 2.2 and 3, appendix B).

* :func:`discover_layers` lists a model's parameterized layers in forward (execution) order;
  :func:`format_layers` prints them (``sanitas layers MODEL``).
* :func:`group_layers` groups them into blocks (by module-name prefix or an explicit list).
* :data:`INIT_SCHEMES`: ``truncated_normal`` (the paper's default), ``uniform``, ``default``
  (the layer's ``reset_parameters``) and ``permute``; BatchNorm running statistics follow
  ``bn_stats`` (``"auto"``, ``"keep"``, ``"reset"``).
* :func:`cascading` and :func:`independent` yield the stages of the randomization test, each a
  randomized copy of the model in eval mode; :func:`randomize` makes one randomized copy.
"""

from sanitas.randomize.blocks import Block, group_layers
from sanitas.randomize.init import (BN_STATS, INIT_SCHEMES, Default, InitScheme, Permute, TruncatedNormal, Uniform,
                                    layer_seed, randomize_module, resolve_init)
from sanitas.randomize.layers import LayerInfo, discover_layers, format_layers
from sanitas.randomize.variants import (LAYER_ORDERS, Stage, StageSequence, cascading, count_stages, independent,
                                        randomize)

__all__ = ["LayerInfo", "discover_layers", "format_layers", "Block", "group_layers", "INIT_SCHEMES", "InitScheme",
           "TruncatedNormal", "Uniform", "Default", "Permute", "BN_STATS", "layer_seed", "randomize_module",
           "resolve_init", "Stage", "StageSequence", "cascading", "independent", "count_stages", "randomize",
           "LAYER_ORDERS"]
