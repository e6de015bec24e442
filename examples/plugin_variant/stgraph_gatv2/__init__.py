"""stgraph_gatv2: an stgraph variant outside stgraph itself.

Importing the package registers three components, one file and one decorator each:

- spot encoder ``gatv2`` (:mod:`.encoder`): graph attention (GATv2) over each slide's spot graph;
- loss ``margin`` (:mod:`.loss`): a hinge ranking loss between paired image and spot embeddings;
- aggregation ``gaussian_kernel`` (:mod:`.aggregation`): neighbours weighted by a Gaussian of their distance.

stgraph imports it through the ``stgraph.plugins`` entry point (when installed), a config's
``plugins: [stgraph_gatv2]``, or ``stgraph --plugin stgraph_gatv2``.
"""
from . import aggregation, encoder, loss  # noqa: F401  (importing registers the components)

__all__ = ["aggregation", "encoder", "loss"]
