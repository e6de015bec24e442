"""Patch batches for fine-tuning: cut, resized and augmented on the CPU by data-loader workers.

A training step that fine-tunes the backbone needs its patches as a normalised float batch (N, 3, s, s).
With ``train.num_workers = 0`` the trainer builds it in the training process (on its device); with more,
a :class:`torch.utils.data.DataLoader` builds the epoch's batches in worker processes while the model
trains on the previous ones, and hands them over in page-locked memory (``train.pin_memory``) for an
asynchronous copy to the GPU.

Each batch's random flips/rotations and colour jitter are drawn from a generator seeded by
``(seed, epoch, rank, step)``, so the augmentations do not depend on the number of workers.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..data.transforms import normalize_batch, patch_batch, random_flip_rotate

__all__ = ["patch_images", "PatchBatches", "step_seed"]


def step_seed(seed: int, epoch: int, rank: int, step: int, stream: int = 0) -> int:
    """A 63-bit seed for one step's draws: ``stream`` 0 the patch augmentations, 1 the model's own
    (dropout masks, DGI corruption, feature-map flips)."""
    entropy = [seed, epoch, rank, step] + ([stream] if stream else [])
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


def patch_images(parts: Sequence[tuple[torch.Tensor, np.ndarray]], input_size: Optional[int], device,
                 augment: bool = False, color_jitter: float = 0.0, seed: Optional[int] = None) -> torch.Tensor:
    """uint8 patches of several slides → one normalised float batch (N, 3, s, s) on ``device``.

    Parameters
    ----------
    parts
        ``(patches (n_spots, S, S, 3) uint8, rows)`` per slide, concatenated in this order.
    input_size
        Backbone input side s (resized bilinearly with antialiasing when it differs from S).
    augment
        A random element of D4 (flip, then 0/90/180/270°) per patch.
    color_jitter
        Brightness/contrast/saturation jitter strength per patch (0: off).
    seed
        Seed of the augmentations (``None``: torch's global generator).
    """
    x = torch.cat([patch_batch(p[torch.as_tensor(rows)], input_size, device) for p, rows in parts])
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    if augment:
        x = random_flip_rotate(x, generator)
    if color_jitter > 0:
        from torchvision.transforms import ColorJitter

        jitter = ColorJitter(color_jitter, color_jitter, color_jitter)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            x = torch.stack([jitter(xi) for xi in x])
    return normalize_batch(x)


class PatchBatches(torch.utils.data.Dataset):
    """One epoch's patch batches of this rank, item ``j`` = step ``j``'s images (built on the CPU).

    Parameters
    ----------
    patches
        Each slide's uint8 patches (n_spots, S, S, 3), indexed by slide number.
    steps
        Per step, the ``(slide number, rows)`` parts of its batch.
    seeds
        Per step, the augmentation seed (:func:`step_seed`).
    """

    def __init__(self, patches: Sequence[torch.Tensor], steps: Sequence[Sequence[tuple[int, np.ndarray]]],
                 seeds: Sequence[int], input_size: Optional[int], augment: bool, color_jitter: float):
        self.patches = list(patches)
        self.steps = list(steps)
        self.seeds = list(seeds)
        self.input_size, self.augment, self.color_jitter = input_size, augment, color_jitter

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, j: int) -> torch.Tensor:
        parts = [(self.patches[i], rows) for i, rows in self.steps[j]]
        return patch_images(parts, self.input_size, "cpu", self.augment, self.color_jitter, self.seeds[j])

    def loader(self, num_workers: int, pin_memory: bool) -> torch.utils.data.DataLoader:
        """Batches in step order, built ``num_workers`` steps ahead."""
        return torch.utils.data.DataLoader(self, batch_size=None, shuffle=False, num_workers=num_workers,
                                           pin_memory=pin_memory, persistent_workers=False,
                                           prefetch_factor=2 if num_workers else None)
