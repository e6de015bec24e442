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

import collections
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from ..preprocess.cohort import StoredSlide

__all__ = ["BlockBatches", "CohortSource", "StreamBufferReused", "block_plan", "buffer_batches", "item_arrays"]


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


#: Prefetched items per ``DataLoader`` worker (its ``prefetch_factor``).
PREFETCH = 2
#: Output buffers each worker cycles through. In order and dealt round-robin, a worker has at most ``PREFETCH``
#: items dispatched and not yet taken (the one it is filling among them) besides the one the training process is
#: cutting into batches: ``PREFETCH + 1`` in use, one slot more as a margin.
RING_SLOTS = PREFETCH + 2


class BlockBatches(torch.utils.data.Dataset):
    """Item ``j`` = buffer ``j`` of a :func:`block_plan`, read from the store into one byte buffer as compact as
    stored (what crosses from a worker to the training process): ``item["buffer"]`` holds, at the offsets of
    ``item["layout"]`` ({name: (offset, shape, dtype)}), ``features`` (n, F) in the stored dtype (e.g.
    float16), ``coords`` (n, 2) int64, the spot input as ``spot_input`` (n, P) float32 when dense or
    ``indptr``/``indices``/``data`` (CSR of width ``item["width"]``) when it is the sparse expression, all in
    read order, and ``order``, the plan's batch positions: batch ``i`` is rows ``order[bounds[i]:bounds[i +
    1]]``. :func:`item_arrays` reads the arrays back, :func:`buffer_batches` cuts the model's batches.

    Where the time goes (``benchmarks/cohort_memory.py``): the rows are read straight into the buffer, and
    in a worker the buffer is one of :data:`RING_SLOTS` shared-memory buffers that the worker reuses, so the
    training process maps each once and receives one handle per item. Faulting in fresh pages for every item
    (in the worker, and again when the training process maps them) cost more than reading the rows. The
    buffer's first 8 bytes hold the item's sequence number (``item["seq"]``), written before any data;
    :func:`buffer_batches` checks it is unchanged once it has cut the item's batches, so a buffer refilled too
    early fails loudly instead of training on mixed rows."""

    def __init__(self, slides: Sequence[StoredSlide], plan: list):
        self.slides, self.plan = list(slides), plan

    def __len__(self) -> int:
        return len(self.plan)

    def _buffer(self, nbytes: int) -> tuple[torch.Tensor, int]:
        """A byte buffer of at least ``nbytes`` and the item's sequence number (-1 outside a worker): fresh in
        this process, or the next shared-memory slot of this worker's ring (grown when too small), its first
        8 bytes already holding the number."""
        if torch.utils.data.get_worker_info() is None:
            return torch.from_numpy(np.empty(nbytes, np.uint8)), -1
        ring = self.__dict__.setdefault("_ring", {"slots": [None] * RING_SLOTS, "seq": 0})
        seq = ring["seq"]
        ring["seq"] += 1
        slot = ring["slots"][seq % RING_SLOTS]
        if slot is None or len(slot) < nbytes:
            slot = ring["slots"][seq % RING_SLOTS] = _shared_bytes(nbytes + nbytes // 8)
        slot[:_HEADER].view(torch.int64)[0] = seq  # before any data: see the class's note
        return slot, seq

    def __getitem__(self, j: int) -> dict:
        import scipy.sparse as sp

        blocks, batches = self.plan[j]
        f0 = self.slides[blocks[0][0]].features
        row_shape = tuple(f0.shape[1:])
        n = sum(b - a for _, a, b in blocks)
        spots = [self.slides[i].spot_input.read_range(a, b) for i, a, b in blocks]
        specs = {"features": ((n,) + row_shape, f0.dtype), "coords": ((n, 2), np.dtype(np.int64)),
                 "order": ((sum(len(p) for p in batches),), np.dtype(np.int64))}
        if sp.issparse(spots[0]):
            nnz = sum(m.nnz for m in spots)
            specs.update(indptr=((n + 1,), np.dtype(np.int64)), indices=((nnz,), spots[0].indices.dtype),
                         data=((nnz,), np.result_type(*(m.data for m in spots))))
        else:
            specs["spot_input"] = ((n,) + spots[0].shape[1:], np.dtype(np.float32))
        layout, nbytes = _layout(specs)
        buffer, seq = self._buffer(nbytes)
        item = {"buffer": buffer, "layout": layout, "seq": seq,
                "bounds": np.cumsum([0] + [len(p) for p in batches]).tolist()}
        out = {name: a.numpy() for name, a in item_arrays(item).items()}
        np.concatenate(batches, out=out["order"])
        pos = nz = 0
        for (i, a, b), m in zip(blocks, spots):
            s = self.slides[i]
            s.features.read_range(a, b, out=out["features"][pos:pos + b - a])  # straight into the buffer
            out["coords"][pos:pos + b - a] = s.coords[a:b]
            if "indptr" in out:
                # The blocks' CSR parts joined in place (cheaper than sp.vstack's checks): offsets add up.
                ptr = out["indptr"][pos + 1:pos + b - a + 1]
                ptr[:] = m.indptr[1:]  # widened to int64 first: a block's own int32 offsets plus nz could wrap
                ptr += nz
                out["indices"][nz:nz + m.nnz] = m.indices
                out["data"][nz:nz + m.nnz] = m.data
                nz += m.nnz
            else:
                out["spot_input"][pos:pos + b - a] = m
            pos += b - a
        if "indptr" in out:
            out["indptr"][0] = 0
            item["width"] = spots[0].shape[1]
        return item


_HEADER = 64  # bytes before the first array: the sequence number, and the arrays' alignment


def _layout(specs: dict) -> tuple[dict, int]:
    """Offsets of the arrays in ``specs`` ({name: (shape, dtype)}) in one buffer, each 64-byte aligned."""
    layout, offset = {}, _HEADER
    for name, (shape, dtype) in specs.items():
        layout[name] = (offset, tuple(int(x) for x in shape), np.dtype(dtype).str)
        offset += -(-int(np.prod(shape)) * np.dtype(dtype).itemsize // _HEADER) * _HEADER
    return layout, offset


def item_arrays(item: dict) -> dict:
    """The arrays of a :class:`BlockBatches` item, as tensors viewing its buffer."""
    buffer, out = item["buffer"], {}
    for name, (offset, shape, dtype) in item["layout"].items():
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        out[name] = buffer[offset:offset + nbytes].view(torch.from_numpy(np.empty(0, dtype)).dtype).view(shape)
    return out


def _shared_bytes(nbytes: int) -> torch.Tensor:
    """An uninitialised byte tensor in shared memory (``share_memory_`` on an ordinary tensor would copy it)."""
    storage = torch.empty(0, dtype=torch.uint8)._typed_storage()._new_shared(max(int(nbytes), 1))
    return torch.empty(0, dtype=torch.uint8).set_(storage._untyped_storage, 0, (max(int(nbytes), 1),))


def _csr_rows(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, width: int):
    """``rows -> dense float32 (len(rows), width)`` of a CSR matrix given by its arrays: scipy's own C++ row
    gather and densification (``scipy.sparse._sparsetools``) without the per-call checks of ``csr[rows]
    .toarray()``, which cost as much as the work on batch-sized calls; the public path where those are
    missing."""
    import scipy.sparse as sp

    try:
        from scipy.sparse import _sparsetools

        row_index, todense = _sparsetools.csr_row_index, _sparsetools.csr_todense
    except (ImportError, AttributeError):  # pragma: no cover - another scipy layout
        csr = sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, width))
        return lambda rows: csr[rows].toarray().astype(np.float32, copy=False)
    index = np.int64 if len(data) >= 2 ** 31 - 1 else np.int32
    indptr, indices = indptr.astype(index, copy=False), indices.astype(index, copy=False)
    data = data.astype(np.float32, copy=False)

    def dense(rows: np.ndarray) -> np.ndarray:
        rows = rows.astype(index, copy=False)
        ptr = np.zeros(len(rows) + 1, index)
        np.cumsum(indptr[rows + 1] - indptr[rows], out=ptr[1:])
        cols, vals = np.empty(ptr[-1], index), np.empty(ptr[-1], np.float32)
        row_index(len(rows), rows, indptr, indices, data, cols, vals)
        out = np.zeros((len(rows), width), np.float32)
        todense(len(rows), width, ptr, cols, vals, out)
        return out

    return dense


class StreamBufferReused(RuntimeError):
    """A worker refilled a stream buffer while its batches were still being cut (a ring too small)."""


def buffer_batches(item: dict, device, pin: bool = False) -> Iterator[dict]:
    """The model's batches of one :class:`BlockBatches` item, on ``device``: ``features`` float32, dense
    ``spot_input`` float32, ``coords`` long. Each batch's rows are gathered out of the item (a worker's
    buffer is refilled later, so nothing yielded views it) in their stored width and widened on the device
    (float16 features cross to a GPU at half the bytes); ``pin``: the gathered rows go through page-locked
    memory (``train.pin_memory`` on a GPU)."""

    def move(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x)
        return (t.pin_memory() if pin else t).to(device, non_blocking=True)

    arrays = item_arrays(item)
    dense_rows = None
    if "indptr" in arrays:
        dense_rows = _csr_rows(arrays["indptr"].numpy(), arrays["indices"].numpy(), arrays["data"].numpy(),
                               item["width"])
    features, coords, order = arrays["features"].numpy(), arrays["coords"].numpy(), arrays["order"].numpy()
    bounds = item["bounds"]
    for a, b in zip(bounds[:-1], bounds[1:]):
        rows = order[a:b]
        spot = (dense_rows(rows) if dense_rows is not None
                else np.take(arrays["spot_input"].numpy(), rows, axis=0, mode="clip"))
        feats = move(np.take(features, rows, axis=0, mode="clip"))
        yield {"features": feats.float() if feats.dtype != torch.float32 else feats,
               "spot_input": move(spot),
               "coords": move(np.take(coords, rows, axis=0, mode="clip"))}
    if item["seq"] >= 0:
        now = int(item["buffer"][:_HEADER].view(torch.int64)[0])
        if now != item["seq"]:
            raise StreamBufferReused(f"stream buffer of item {item['seq']} was refilled (item {now}) before its "
                                     "batches were cut: the worker ring is smaller than the items in flight")


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
                                           num_workers=workers, prefetch_factor=PREFETCH if workers else None,
                                           # no pinning of items: it would copy every ring buffer out of
                                           # its shared slot (and defeat the reuse); batches are gathered
                                           # into ordinary memory anyway
                                           pin_memory=False)

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
        # The last items of every worker stay referenced: a worker's ring buffer arriving again is then the
        # mapping this process already has (torch's shared-memory cache holds them weakly), not a new one.
        recent = collections.deque(maxlen=RING_SLOTS * self.tcfg.num_workers)
        pin = bool(self.tcfg.pin_memory) and self.device.type == "cuda"
        for item in self.loader(plan):
            recent.append(item)
            for batch in buffer_batches(item, self.device, pin=pin):
                if limit is not None and done >= limit:
                    return
                done += 1
                yield batch, sizes
