"""Spot graphs per slide (radius / k-NN / self loops) and their PyTorch Geometric form."""
from .spatial import (
    DEFAULT_RADIUS_FACTOR,
    median_spacing,
    radius_adjacency,
    slide_to_pyg,
    spatial_graph,
    to_edge_index,
    to_pyg_data,
)

__all__ = ["DEFAULT_RADIUS_FACTOR", "median_spacing", "radius_adjacency", "spatial_graph", "to_edge_index", "slide_to_pyg", "to_pyg_data"]
