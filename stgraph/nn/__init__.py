"""Neural building blocks: projection head, MLP, mclSTExp's spot transformer and Deep Graph Infomax."""
from .dgi import GCNEncoder, GraphInfomax, mean_sigmoid_summary, shuffle_node_features
from .mlp import ACTIVATIONS, MLP, make_activation
from .proj_head import ProjHead
from .spot_transformer import FeedForward, SpotAttention, SpotTransformer, TransformerBlock

__all__ = [
    "ProjHead",
    "MLP",
    "ACTIVATIONS",
    "make_activation",
    "SpotTransformer",
    "SpotAttention",
    "FeedForward",
    "TransformerBlock",
    "GraphInfomax",
    "GCNEncoder",
    "mean_sigmoid_summary",
    "shuffle_node_features",
]
