"""Torch datasets over slides: one item per spot (:class:`SpotDataset`) or per slide (:class:`SlideGraphDataset`).

Both take the slides (for coordinates) and per-slide arrays keyed by slide id: ``expr`` (n, G) float32,
``patches`` (n, S, S, 3) uint8 and/or ``features`` (n, F) float32.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional

import numpy as np
import torch
from anndata import AnnData
from torch.utils.data import Dataset, default_collate

from .collection import SlideCollection
from .patches import imagenet_normalize

__all__ = ["SpotDataset", "SlideGraphDataset", "array_coordinates", "spot_collate"]

#: Items of :class:`SpotDataset` are dicts of tensors; torch's default collate stacks them.
spot_collate = default_collate

ArrayDict = Optional[Mapping[str, np.ndarray]]


def _dense_rank(values: np.ndarray) -> np.ndarray:
    return np.unique(values, return_inverse=True)[1].astype(np.int64)


def array_coordinates(adata: AnnData) -> np.ndarray:
    """(n, 2) int64 grid coordinates ``(array_row, array_col)``.

    From ``obs`` when present; otherwise pixel ``y``/``x`` are binned to the median spot spacing
    (``round((v − min) / spacing)``) and rank-encoded, so the values are small consecutive integers usable as
    embedding indices.
    """
    if {"array_row", "array_col"} <= set(adata.obs.columns):
        return np.stack([adata.obs["array_row"].to_numpy(), adata.obs["array_col"].to_numpy()], 1).astype(np.int64)
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    if len(xy) < 2:
        return np.zeros((len(xy), 2), dtype=np.int64)
    from ..graph import median_spacing

    step = max(median_spacing(xy), 1e-9)
    binned = np.rint((xy - xy.min(0)) / step)
    return np.stack([_dense_rank(binned[:, 1]), _dense_rank(binned[:, 0])], 1)


def _slides_of(slides) -> SlideCollection:
    return slides if isinstance(slides, SlideCollection) else SlideCollection(slides)


def _check_arrays(name: str, arrays: ArrayDict, collection: SlideCollection, ndim: int,
                  dtype=None) -> Optional[dict]:
    """Validate a per-slide dict: one entry per slide, ``n_spots`` rows, ``ndim`` dims, same trailing shape."""
    if arrays is None:
        return None
    missing = [sid for sid in collection.ids if sid not in arrays]
    if missing:
        raise KeyError(f"{name} has no array for slide(s) {missing}; it has {list(arrays)}")
    out, trailing = {}, None
    for sid in collection.ids:
        a = np.asarray(arrays[sid]) if dtype is None else np.asarray(arrays[sid], dtype=dtype)
        n = collection[sid].n_obs
        if a.ndim != ndim or a.shape[0] != n:
            raise ValueError(f"{name}[{sid!r}] has shape {a.shape}; expected {ndim} dims with {n} rows (spots)")
        if trailing is not None and a.shape[1:] != trailing:
            raise ValueError(f"{name}[{sid!r}] has shape {a.shape}; other slides have (n, {', '.join(map(str, trailing))})")
        trailing = a.shape[1:]
        out[sid] = a
    return out


class SpotDataset(Dataset):
    """One item per spot, over several slides (per-spot mini-batches: BLEEP, HECLIP, mclSTExp).

    Parameters
    ----------
    slides
        AnnData list or :class:`SlideCollection` (coordinates and ids; their ``X`` is not read).
    expr
        slide id → (n, G) float32 targets (omit for query slides without expression).
    patches
        slide id → (n, S, S, 3) uint8.
    features
        slide id → (n, F) float32 precomputed image features.
    transform
        Applied to each normalised patch (3, S, S), e.g. :class:`~stgraph.data.patches.RandomFlipRotate`;
        leave it ``None`` for evaluation.

    Items
    -----
    dict with ``expr`` (G,) float32, ``patch`` (3, S, S) float32 ImageNet-normalised, ``features`` (F,),
    ``array_coords`` (2,) long (``array_row``, ``array_col``; see :func:`array_coordinates`), ``xy`` (2,)
    float32 pixels, ``slide`` (int, position of the slide), ``index`` (int, row within the slide). Keys of
    arrays that were not given are absent. Batches: ``DataLoader(ds, batch_size=…)`` (default collate).
    """

    def __init__(self, slides, expr: ArrayDict = None, patches: ArrayDict = None, features: ArrayDict = None,
                 transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        self.collection = _slides_of(slides)
        if len(self.collection) == 0:
            raise ValueError("SpotDataset needs at least one slide")
        self.slide_ids = self.collection.ids
        self.expr = _check_arrays("expr", expr, self.collection, 2, np.float32)
        self.patches = _check_arrays("patches", patches, self.collection, 4)
        if self.patches is not None:
            for sid, p in self.patches.items():
                if p.dtype != np.uint8 or p.shape[-1] != 3:
                    raise ValueError(f"patches[{sid!r}] must be (n, S, S, 3) uint8; got {p.shape} {p.dtype}")
        self.features = _check_arrays("features", features, self.collection, 2, np.float32)
        self.transform = transform
        self.coords = {sid: torch.as_tensor(array_coordinates(ad)) for sid, ad in self.collection.items()}
        self.xy = {sid: torch.as_tensor(np.asarray(ad.obsm["spatial"], dtype=np.float32))
                   for sid, ad in self.collection.items()}
        sizes = np.array([self.collection[sid].n_obs for sid in self.slide_ids])
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def n_genes(self) -> Optional[int]:
        return None if self.expr is None else int(next(iter(self.expr.values())).shape[1])

    def locate(self, item: int) -> tuple[int, int]:
        """Global item → (slide position, row within the slide)."""
        if not -len(self) <= item < len(self):
            raise IndexError(f"spot {item} out of range for {len(self)} spots")
        item = item % len(self)
        s = int(np.searchsorted(self.offsets, item, side="right") - 1)
        return s, int(item - self.offsets[s])

    def slide_indices(self, slide_id: str) -> range:
        """Global item indices of one slide (e.g. to sample per-slide batches)."""
        s = self.slide_ids.index(slide_id)
        return range(int(self.offsets[s]), int(self.offsets[s + 1]))

    def __getitem__(self, item: int) -> dict:
        s, i = self.locate(int(item))
        sid = self.slide_ids[s]
        out = {}
        if self.expr is not None:
            out["expr"] = torch.from_numpy(self.expr[sid][i])
        if self.patches is not None:
            patch = imagenet_normalize(self.patches[sid][i])
            out["patch"] = self.transform(patch) if self.transform is not None else patch
        if self.features is not None:
            out["features"] = torch.from_numpy(self.features[sid][i])
        out["array_coords"] = self.coords[sid][i]
        out["xy"] = self.xy[sid][i]
        out["slide"] = s
        out["index"] = i
        return out


class SlideGraphDataset(Dataset):
    """One item per slide: a :class:`torch_geometric.data.Data` graph (whole-slide batches: ST-GCHB).

    Parameters
    ----------
    slides, expr, patches, features, transform
        As in :class:`SpotDataset` (``transform`` acts on each node's normalised patch).
    radius, radius_factor, knn, self_loops
        Spot graph, see :func:`stgraph.graph.spatial_graph` (built once per slide, ``adata`` untouched).

    Items
    -----
    Data with ``x`` (n, G) expression when given, ``patch`` (n, 3, S, S), ``features`` (n, F), ``pos`` (n, 2)
    float32, ``array_coords`` (n, 2) long, ``edge_index`` (2, E), ``slide`` (1,) long, ``num_nodes`` n.
    Batch with :class:`torch_geometric.loader.DataLoader`.
    """

    def __init__(self, slides, expr: ArrayDict = None, patches: ArrayDict = None, features: ArrayDict = None,
                 radius: Optional[float] = None, radius_factor: Optional[float] = 1.5, knn: Optional[int] = None,
                 self_loops: bool = False, transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        from ..graph import spatial_graph, to_edge_index

        self.spots = SpotDataset(slides, expr=expr, patches=patches, features=features, transform=transform)
        self.slide_ids = self.spots.slide_ids
        self.edge_index = {
            sid: to_edge_index(spatial_graph(ad, radius=radius, radius_factor=radius_factor, knn=knn,
                                             self_loops=self_loops, copy=True))
            for sid, ad in self.spots.collection.items()
        }

    def __len__(self) -> int:
        return len(self.slide_ids)

    def __getitem__(self, item: int):
        from torch_geometric.data import Data

        sid = self.slide_ids[item]
        s = self.slide_ids.index(sid)
        ds = self.spots
        n = ds.collection[sid].n_obs
        data = Data(edge_index=self.edge_index[sid], pos=ds.xy[sid], array_coords=ds.coords[sid], num_nodes=n,
                    slide=torch.tensor([s], dtype=torch.long))
        if ds.expr is not None:
            data.x = torch.from_numpy(ds.expr[sid])
        if ds.patches is not None:
            patches = imagenet_normalize(ds.patches[sid])
            if ds.transform is not None:
                patches = torch.stack([ds.transform(p) for p in patches])
            data.patch = patches
        if ds.features is not None:
            data.features = torch.from_numpy(ds.features[sid])
        return data
