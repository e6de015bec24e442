"""Array-level transforms shared by every stage: ImageNet normalisation, patch batches, D4 augmentation,
array hashing and integer grid coordinates (one copy of each).

Patches are uint8 (N, S, S, 3); model inputs are float (N, 3, s, s) ImageNet-normalised,
``(x / 255 − mean) / std`` per channel.
"""
from __future__ import annotations

import hashlib
from typing import Optional

import numpy as np
import torch
from anndata import AnnData
from ..keys import Key

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "imagenet_normalize",
    "patch_batch",
    "normalize_batch",
    "random_flip_rotate",
    "RandomFlipRotate",
    "hash_array",
    "array_coordinates",
    "grid_coordinates",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def hash_array(a) -> str:
    """Short content hash (blake2b, 8 bytes, hex) of an array's bytes; cache keys use it."""
    return hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=8).hexdigest()


def imagenet_normalize(patches) -> torch.Tensor:
    """uint8 RGB patches → ImageNet-normalised float tensor.

    ``out = (patch / 255 − mean) / std`` per channel with :data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`.

    Parameters
    ----------
    patches
        (N, H, W, 3) or (H, W, 3) uint8, numpy array or tensor.

    Returns
    -------
    (N, 3, H, W) float32 tensor ((3, H, W) for a single patch).
    """
    t = torch.as_tensor(np.asarray(patches) if not isinstance(patches, torch.Tensor) else patches)
    if t.dtype != torch.uint8:
        raise TypeError(f"imagenet_normalize expects uint8 patches, got {t.dtype}")
    if t.ndim not in (3, 4) or t.shape[-1] != 3:
        raise ValueError(f"patches must be (N, H, W, 3) or (H, W, 3); got shape {tuple(t.shape)}")
    return normalize_batch(t.movedim(-1, -3).float().div_(255.0))


def random_flip_rotate(tensor: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random element of the dihedral group D4 (a flip or not, then 0/90/180/270° rotation).

    Parameters
    ----------
    tensor
        (C, H, W) one image, or (N, C, H, W) a batch (each image gets its own transform; needs H = W).
    generator
        Torch generator for reproducible draws.

    Returns
    -------
    Tensor of the same shape.
    """
    if tensor.ndim == 3:
        flip, k = torch.randint(0, 2, (1,), generator=generator).item(), torch.randint(0, 4, (1,), generator=generator).item()
        out = tensor.flip(-1) if flip else tensor
        return torch.rot90(out, int(k), dims=(-2, -1))
    if tensor.ndim != 4:
        raise ValueError(f"expected (C, H, W) or (N, C, H, W), got shape {tuple(tensor.shape)}")
    if tensor.shape[-1] != tensor.shape[-2]:
        raise ValueError(f"batched rotation needs square images, got {tuple(tensor.shape[-2:])}")
    return torch.stack([random_flip_rotate(t, generator) for t in tensor])


class RandomFlipRotate:
    """Callable form of :func:`random_flip_rotate` (a per-image transform)."""

    def __init__(self, seed: Optional[int] = None):
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return random_flip_rotate(tensor, self.generator)


def patch_batch(patches, input_size: Optional[int] = None, device="cpu") -> torch.Tensor:
    """uint8 patches (N, S, S, 3) (numpy or tensor) → float (N, 3, s, s) in [0, 1] on ``device``, resized
    (bilinear, antialiased) to ``s = input_size`` when it differs from S."""
    t = patches if isinstance(patches, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(patches))
    x = t.to(device).permute(0, 3, 1, 2).float().div_(255.0)
    if input_size is not None and x.shape[-1] != input_size:
        x = torch.nn.functional.interpolate(x, size=(input_size, input_size), mode="bilinear",
                                            align_corners=False, antialias=True)
    return x


def normalize_batch(x: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of (N, 3, H, W) or (3, H, W) images in [0, 1]: ``(x − mean) / std`` per channel."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def _dense_rank(values: np.ndarray) -> np.ndarray:
    return np.unique(values, return_inverse=True)[1].astype(np.int64)


def array_coordinates(adata: AnnData) -> np.ndarray:
    """(n, 2) int64 grid coordinates ``(array_row, array_col)``.

    From ``obs`` when present; otherwise pixel ``y``/``x`` are binned to the median spot spacing
    (``round((v − min) / spacing)``) and rank-encoded, so the values are small consecutive integers usable as
    embedding indices.
    """
    if {"array_row", "array_col"} <= set(adata.obs.columns):
        return np.stack([adata.obs[Key.obs.array_row].to_numpy(), adata.obs[Key.obs.array_col].to_numpy()], 1).astype(np.int64)
    xy = np.asarray(adata.obsm[Key.obsm.spatial], dtype=np.float64)
    if len(xy) < 2:
        return np.zeros((len(xy), 2), dtype=np.int64)
    from ..graph import median_spacing

    step = max(median_spacing(xy), 1e-9)
    binned = np.rint((xy - xy.min(0)) / step)
    return np.stack([_dense_rank(binned[:, 1]), _dense_rank(binned[:, 0])], 1)


def grid_coordinates(adata: AnnData) -> np.ndarray:
    """(n, 2) int64 ``[x, y]`` grid coordinates (``array_col``, ``array_row``), shifted to start at 0.

    The data layer's :func:`array_coordinates` gives ``(row, col)`` (binning pixel
    positions by the spot spacing when the format has no array coordinates); the spot encoders index
    ``[x, y]``.
    """
    grid = array_coordinates(adata)[:, ::-1]
    return np.ascontiguousarray(grid - grid.min(0))
