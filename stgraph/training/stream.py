"""Spot batches streamed from the feature store: a cohort's frozen features and expression are read by
``DataLoader`` workers, a few row blocks at a time, instead of living in memory.

Shuffling by blocks (the shuffle buffer of webdataset / tf.data, here over HDF5 chunks): the training rows of
every slide are cut into blocks of ``block_rows`` consecutive spots (one HDF5 chunk each), the blocks are
shuffled, and each run of ``buffer_blocks`` blocks is read in one go (every chunk once per epoch, in
contiguous reads) and cut into batches after shuffling its rows. A batch thus mixes spots of up to
``buffer_blocks`` slides (its contrastive negatives), which uniform shuffling over the whole cohort would
only do at the price of one random chunk read per spot.

Validation holds out whole blocks (``train.val_fraction`` of them, drawn once from ``train.seed``), so it
reads only its own chunks; ``train.val_slide`` holds out that slide.

Several processes: each rank streams its own shard of slides
(:meth:`~stgraph.data.LazySlideCollection.shard`); a global batch is one local batch of
``batch_size // world_size`` rows per rank, gathered for the loss as in the in-memory trainer, and every rank
runs the same number of steps (the smallest shard's).
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from ..preprocess.cohort import StoredSlide

__all__ = ["BlockBatches", "CohortSource", "block_plan", "buffer_batches"]


def block_plan(blocks: Sequence[tuple[int, int, int]], batch_size: int, buffer_blocks: int,
               rng: np.random.Generator, shuffle: bool, drop_last: bool) -> list[tuple[list, list]]:
    """An epoch's reads and batches: ``[(buffer blocks [(slide, start, stop)], batches [positions])]``.

    Positions index the rows of the buffer's blocks concatenated in order. ``drop_last``: every batch has
    exactly ``batch_size`` rows (a buffer's remainder is dropped); otherwise each buffer's rows are split
    into ``round(rows / batch_size)`` near-equal batches (every row used; at least 2 rows a batch).
    """
    order = rng.permutation(len(blocks)) if shuffle else np.arange(len(blocks))
    plan = []
    for start in range(0, len(order), buffer_blocks):
        chosen = [blocks[i] for i in order[start:start + buffer_blocks]]
        n = sum(b - a for _, a, b in chosen)
        pos = rng.permutation(n) if shuffle else np.arange(n)
        if drop_last:
            batches = [pos[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
        else:
            k = max(1, int(round(n / batch_size)))
            batches = [p for p in np.array_split(pos, k) if len(p) >= 2]
        if batches:
            plan.append((chosen, batches))
    return plan


class BlockBatches(torch.utils.data.Dataset):
    """Item ``j`` = buffer ``j`` of a :func:`block_plan`, read from the store and kept as compact as stored
    (what crosses from a worker to the training process): ``features`` (n, F) in the stored dtype (e.g.
    float16), the spot input as ``spot_input`` (n, P) float32 when dense or ``spot_csr`` (indptr, indices,
    data, width) when it is the sparse expression, ``coords`` (n, 2) long, and ``batches``, the row
    positions of each batch. :func:`buffer_batches` cuts the model's batches from it."""

    def __init__(self, slides: Sequence[StoredSlide], plan: list):
        self.slides, self.plan = list(slides), plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, j: int) -> dict:
        import scipy.sparse as sp

        blocks, batches = self.plan[j]
        f0 = self.slides[blocks[0][0]].features
        feats = torch.empty((sum(b - a for _, a, b in blocks),) + tuple(f0.shape[1:]),
                            dtype=getattr(torch, f0.dtype.name))
        if torch.utils.data.get_worker_info() is not None:
            feats.share_memory_()  # filled in place: the hand-over to the training process copies nothing
        view, pos = feats.numpy(), 0
        spots, coords = [], []
        for i, a, b in blocks:
            s = self.slides[i]
            s.features.read_range(a, b, out=view[pos:pos + b - a])  # straight into the batch buffer
            pos += b - a
            spots.append(s.spot_input.read_range(a, b))
            coords.append(s.coords[a:b])
        item = {"features": feats,
                "coords": torch.from_numpy(np.concatenate(coords).astype(np.int64, copy=False)),
                "batches": [torch.as_tensor(p, dtype=torch.long) for p in batches]}
        if sp.issparse(spots[0]):
            # The blocks' CSR parts joined by hand (cheaper than sp.vstack's checks): indptr offsets add up.
            offsets = np.cumsum([0] + [m.nnz for m in spots[:-1]])
            indptr = np.concatenate([[0]] + [m.indptr[1:].astype(np.int64) + o for m, o in zip(spots, offsets)])
            item["spot_csr"] = (torch.from_numpy(indptr), torch.from_numpy(np.concatenate([m.indices for m in spots])),
                                torch.from_numpy(np.concatenate([m.data for m in spots])), spots[0].shape[1])
        else:
            item["spot_input"] = torch.from_numpy(np.concatenate(spots).astype(np.float32, copy=False))
        return item


def buffer_batches(item: dict, device) -> Iterator[dict]:
    """The model's batches of one :class:`BlockBatches` item, on ``device``: ``features`` float32, dense
    ``spot_input`` float32, ``coords`` long."""
    import scipy.sparse as sp

    csr = None
    if "spot_csr" in item:
        indptr, indices, data, width = item["spot_csr"]
        csr = sp.csr_matrix((data.numpy(), indices.numpy(), indptr.numpy()), shape=(len(indptr) - 1, width))
    for p in item["batches"]:
        spot = torch.from_numpy(csr[p.numpy()].toarray()) if csr is not None else item["spot_input"][p]
        yield {"features": item["features"][p].to(device, non_blocking=True).float(),
               "spot_input": spot.to(device, non_blocking=True),
               "coords": item["coords"][p].to(device, non_blocking=True)}


class CohortSource:
    """This rank's batches of a streamed cohort, for :class:`~stgraph.training.Trainer` (``source=``).

    Parameters
    ----------
    slides
        This rank's :class:`~stgraph.preprocess.cohort.StoredSlide` handles.
    block_rows
        Rows per block (default: the feature store's chunk rows, so a block is one chunk).
    buffer_blocks
        Blocks read and shuffled together (the number of slides a batch can mix).
    """

    def __init__(self, slides: Sequence[StoredSlide], config, dist_env=None, device="cpu",
                 block_rows: Optional[int] = None, buffer_blocks: int = 8):
        from .distributed import DistEnv

        if not slides:
            raise ValueError("a streamed cohort source needs at least one slide")
        self.slides = list(slides)
        self.tcfg = config.train
        self.dist = dist_env if dist_env is not None else DistEnv()
        self.device = torch.device(device)
        self.block_rows = int(block_rows or self.slides[0].features.chunk_rows)
        self.buffer_blocks = int(buffer_blocks)
        blocks = [(i, a, min(a + self.block_rows, s.n_spots)) for i, s in enumerate(self.slides)
                  for a in range(0, s.n_spots, self.block_rows)]
        rng = np.random.default_rng(self.tcfg.seed)
        if self.tcfg.val_slide is not None:
            val = np.array([self.slides[i].slide_id == self.tcfg.val_slide for i, _, _ in blocks])
        else:
            val = np.zeros(len(blocks), bool)
            n_val = int(round(self.tcfg.val_fraction * len(blocks)))
            if n_val:
                val[rng.choice(len(blocks), size=min(n_val, len(blocks) - 1), replace=False)] = True
        self.train_blocks = [b for b, v in zip(blocks, val) if not v]
        self.val_blocks = [b for b, v in zip(blocks, val) if v]
        self.has_val = bool(self.val_blocks)
        world = self.dist.world_size
        self.local_batch = self.tcfg.batch_size // world if world > 1 else self.tcfg.batch_size
        if self.local_batch < 2 and world > 1:
            raise ValueError(f"train.batch_size {self.tcfg.batch_size} over {world} processes leaves fewer than "
                             "2 rows per process")

    def plan(self, train: bool, epoch: int) -> list:
        rng = np.random.default_rng([self.tcfg.seed, epoch, self.dist.rank, int(train)])
        return block_plan(self.train_blocks if train else self.val_blocks, self.local_batch, self.buffer_blocks,
                          rng, shuffle=train, drop_last=train and self.dist.world_size > 1)

    def loader(self, plan: list) -> torch.utils.data.DataLoader:
        workers = self.tcfg.num_workers
        return torch.utils.data.DataLoader(BlockBatches(self.slides, plan), batch_size=None, shuffle=False,
                                           num_workers=workers, prefetch_factor=2 if workers else None,
                                           pin_memory=self.tcfg.pin_memory and self.device.type == "cuda")

    def steps(self, train: bool, epoch: int) -> Iterator[tuple[dict, Optional[list[int]]]]:
        """``(batch on the device, sizes)`` as :meth:`Trainer._local_steps` yields them."""
        plan = self.plan(train, epoch)
        world = self.dist.world_size
        limit = None
        sizes = None
        if train and world > 1:
            import torch.distributed as dist

            n = torch.tensor([sum(len(b) for _, b in plan)])
            dist.all_reduce(n, op=dist.ReduceOp.MIN)  # every rank runs the same number of collective steps
            limit, sizes = int(n), [self.local_batch] * world
        done = 0
        for item in self.loader(plan):
            for batch in buffer_batches(item, self.device):
                if limit is not None and done >= limit:
                    return
                done += 1
                yield batch, sizes
