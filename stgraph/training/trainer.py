"""The training loop: spot mini-batches or whole-slide graph batches, validation, checkpoints, resume.

Two batching schemes (``train.batching``):

- ``spot``: shuffled mini-batches of ``batch_size`` spots (``within_slide`` keeps each batch inside one
  slide, which the transformer spot encoder needs to attend across one slide's spots);
- ``slide``: one slide's whole spot graph per step, so graph encoders see every neighbour and spots of
  different slides never share a graph; the losses are taken over a random subset of ``batch_size`` of its
  training spots, and the slide is visited until all its training spots have been used once per epoch.

Validation: ``val_slide`` (a whole slide) or ``val_fraction`` of the training spots, held out of the loss.
The validation loss is the weighted sum of the terms that exist in eval mode (alignment and HSIC; the DGI
losses need corruption and are training-only). The checkpoint with the lowest validation loss is kept.

Several processes (``torchrun``, :mod:`stgraph.training.distributed`): the model and its objective form one
:class:`~stgraph.training.task.TrainingTask`, trained under ``torch.nn.parallel.DistributedDataParallel``
(DDP: parameters broadcast from rank 0 at the start, gradients averaged over ranks during the backward,
buffers broadcast from rank 0 at every forward). Every rank draws the same sequence of global batches from
the same seed. Spot batching across slides splits each global batch into one slice of rows per rank and
gathers the branch outputs, so the loss (and its negatives) is the whole global batch's; each rank's
backward then gives the gradient through its own rows, DDP averages them, and the loss is scaled by N
before the backward so that the average is their sum, the single-process gradient of the global loss.
Slide batching and ``within_slide`` give each rank whole jobs (one slide's step, ``train.accumulate`` of
them per step) and DDP averages the gradients, as one process accumulating the N jobs' mean loss would
(``train.accumulate: N`` in one process takes the same steps). During DGI pre-training the heads receive no
gradient: DDP runs with ``find_unused_parameters`` then, and leaves their ``.grad`` at ``None`` as one
process does, so AdamW's weight decay skips them in both. The model's random draws (dropout masks, DGI
corruption, feature-map flips) are seeded per job (per rank and step for row slices), so they do not depend
on which rank runs a job, nor on a resume. Validation is sharded by jobs and reduced, so every rank sees
the same validation loss and picks the same checkpoint; only rank 0 writes files.

Mixed precision (``train.precision``): ``bf16`` / ``fp16`` autocast of the forward pass (losses are taken
in float32), with a gradient scaler for ``fp16``.
"""
from __future__ import annotations

import contextlib
import logging
import dataclasses
import math
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..config import config_to_dict
from ..data.transforms import random_flip_rotate
from ..losses import Objective
from ..utils import atomic_path, resolve_device, seed_everything
from .distributed import DistEnv, all_reduce_mean
from .loader import PatchBatches, patch_images, step_seed
from .task import TrainingTask
from .monitor import TermMonitor
from ..runfolder import load_checkpoint
from ..preprocess.prepare import PreparedSlide

__all__ = ["Trainer", "TrainResult"]


@dataclasses.dataclass
class TrainResult:
    history: pd.DataFrame
    best_epoch: int
    best_val_loss: float


class Trainer:
    """Train a :class:`~stgraph.models.ContrastiveSTModel` on prepared slides.

    Parameters
    ----------
    model
        The model (``create_model``).
    config
        The full :class:`~stgraph.config.Config`.
    slides
        Training slides (:class:`PreparedSlide` with ``spot_input``, and ``features`` or ``patches``).
    run_dir
        Folder for ``checkpoints/``, ``log.csv`` and the loss curve; ``None`` keeps everything in memory.
    objective
        The loss terms, weights and DGI pre-training schedule (default :meth:`Objective.from_config`).
    source
        Batches streamed from disk instead of ``slides`` (:class:`~stgraph.training.stream.CohortSource`,
        with ``slides=[]``): its ``steps(train, epoch)`` yields this rank's ``(batch, sizes)``.
    """

    def __init__(self, model, config, slides: Sequence[PreparedSlide], run_dir: Optional[str | Path] = None,
                 objective: Optional[Objective] = None, dist_env: Optional[DistEnv] = None,
                 device: Optional[torch.device] = None, source=None):
        self.source = source
        self.config = config
        self.objective = objective if objective is not None else Objective.from_config(config)
        self.tcfg = config.train
        self.dist = dist_env if dist_env is not None else DistEnv()
        self.device = device if device is not None else resolve_device(self.tcfg.device)
        self.model = model.to(self.device)
        #: ``rows``: each rank encodes a slice of every global batch (outputs gathered); ``jobs``: whole steps.
        self.shard = "jobs" if (self.tcfg.batching == "slide" or self.tcfg.within_slide) else "rows"
        self.amp_dtype = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.tcfg.precision]
        self.accumulate = int(self.tcfg.accumulate) if self.shard == "jobs" else 1
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        s0 = slides[0] if slides else None
        #: Batches are cut from uint8 patches (fine-tuning the backbone), not cached features / stage inputs.
        self.from_patches = (s0 is not None and s0.features is None and s0.stage_input is None
                             and s0.patches is not None)
        # NHWC convolutions are the fast path of cuDNN (tensor cores); on a CPU they rarely help.
        self.channels_last = bool(self.tcfg.channels_last and self.from_patches and self.device.type == "cuda")
        if self.channels_last:
            self.model.image_encoder.to(memory_format=torch.channels_last)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        #: model + objective; its forward is the loss. ``self.ddp`` wraps it when there are several ranks.
        self.task = TrainingTask(self.model, self.objective, self.amp_dtype, self.channels_last)
        self.ddp = self._wrap(self.task) if self.dist.enabled else None
        # Batch order (self.rng) is the same on every rank; the model's draws are reseeded per job.
        seed_everything(self.tcfg.seed + self.dist.rank)
        self.generator = torch.Generator().manual_seed(self.tcfg.seed + self.dist.rank)
        self.rng = np.random.default_rng(self.tcfg.seed)
        for s in slides:
            if s.spot_input is None:
                raise ValueError(f"training slide {s.slide_id!r} has no expression")
        #: (train rows, validation rows) of each slide
        self.splits = [self._split(self._val_mask(s)) for s in slides]
        self.slides = [s.to_tensors(self.device) for s in slides]
        if source is None and not any(len(train_rows) for train_rows, _ in self.splits):
            raise ValueError("no training spots left after the validation split")
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt_cls = torch.optim.AdamW if self.tcfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(params, lr=self.tcfg.lr, weight_decay=self.tcfg.weight_decay)
        self.history: list[dict] = []
        self.start_epoch = 0
        self.best_val = math.inf
        self.best_epoch = -1
        self.monitor = TermMonitor()

    def _wrap(self, task: TrainingTask) -> torch.nn.parallel.DistributedDataParallel:
        """``task`` under DDP. ``find_unused_parameters`` only when terms switch by epoch (DGI pre-training
        leaves the heads out of the loss): DDP then marks the parameters no term reached as ready without a
        gradient, so their ``.grad`` stays ``None`` on every rank, as in one process."""
        switches = any(n > 0 for n in self.objective.dgi_pretrain_epochs.values())
        if self.shard == "rows":
            # Each rank encodes a slice of the global batch: BatchNorm must see the whole batch, as in one
            # process (jobs keep per-job statistics, which is what one process accumulating them computes).
            from ..nn.norm import convert_global_batchnorm

            _, n = convert_global_batchnorm(self.model)
            if n:
                logging.getLogger(__name__).debug("%d BatchNorm layer(s) normalise over the global batch", n)
        device_ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(task, device_ids=device_ids,
                                                         find_unused_parameters=switches)

    # ------------------------------------------------------------------------------------ data split
    def _val_mask(self, slide: PreparedSlide) -> np.ndarray:
        mask = np.zeros(slide.n_spots, dtype=bool)
        if self.tcfg.val_slide is not None:
            mask[:] = slide.slide_id == self.tcfg.val_slide
        elif self.tcfg.val_fraction > 0 and slide.n_spots > 1:
            n_val = int(round(self.tcfg.val_fraction * slide.n_spots))
            mask[self.rng.choice(slide.n_spots, size=min(n_val, slide.n_spots - 1), replace=False)] = True
        return mask

    @staticmethod
    def _split(val_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.flatnonzero(~val_mask), np.flatnonzero(val_mask)

    # --------------------------------------------------------------------------------------- batches
    def _images(self, parts: list[tuple[PreparedSlide, np.ndarray]], train: bool, seed: Optional[int]) -> dict:
        s0 = parts[0][0]
        if s0.features is not None:
            return {"features": torch.cat([s.features[rows] for s, rows in parts])}
        if s0.stage_input is not None:
            x = torch.cat([s.stage_input[torch.as_tensor(rows, device=s.stage_input.device)] for s, rows in parts])
            if train and self.tcfg.augment and x.dim() == 4:
                # Flips/rotations of the cached feature maps stand in for those of the patches.
                x = random_flip_rotate(x, self.generator)
            return {"stage_input": x}
        if s0.patches is None:
            raise ValueError(f"slide {s0.slide_id!r} has neither features nor patches")
        return {"patch": patch_images([(s.patches, rows) for s, rows in parts],
                                      self.config.model.image_encoder.input_size, self.device,
                                      augment=train and self.tcfg.augment,
                                      color_jitter=self.tcfg.color_jitter if train else 0.0, seed=seed)}

    def _spot_batch(self, parts: list[tuple[PreparedSlide, np.ndarray]], train: bool, seed: Optional[int] = None,
                    images: Optional[torch.Tensor] = None) -> dict:
        idx = [torch.as_tensor(rows, device=self.device) for _, rows in parts]
        batch = {key: torch.cat([getattr(s, key)[i] for (s, _), i in zip(parts, idx)])
                 for key in ("spot_input", "coords")}
        if images is not None:  # built by a data-loader worker
            batch["patch"] = images.to(self.device, non_blocking=True)
        else:
            batch.update(self._images(parts, train, seed))
        return batch

    def _slide_batch(self, s: PreparedSlide, loss_rows: np.ndarray, train: bool, seed: Optional[int] = None,
                     images: Optional[torch.Tensor] = None) -> dict:
        batch = self._spot_batch([(s, np.arange(s.n_spots))], train, seed, images)
        batch["edge_index"] = s.edge_index
        batch["loss_index"] = torch.as_tensor(loss_rows, device=self.device)
        return batch

    def _chunks(self, rows: np.ndarray, shuffle: bool, min_rows: int = 2) -> list[np.ndarray]:
        rows = self.rng.permutation(rows) if shuffle else rows
        bs = self.tcfg.batch_size
        return [rows[i : i + bs] for i in range(0, len(rows), bs) if len(rows[i : i + bs]) >= min_rows]

    def _jobs(self, train: bool) -> list[tuple]:
        """The epoch's steps, in order, the same on every rank (one shared seed).

        ``("slide", i, loss_rows)``: slide ``i``'s whole graph, loss over ``loss_rows``;
        ``("spots", pairs)``: the spots ``pairs`` (M, 2) of (slide index, row), grouped by slide.
        """
        rows = [split[0] if train else split[1] for split in self.splits]
        repeats = 2 if (train and self.tcfg.paired_augment) else 1
        if self.tcfg.batching == "slide":
            order = self.rng.permutation(len(self.slides)) if train else range(len(self.slides))
            return [("slide", i, chunk) for i in order
                    for chunk in self._chunks(np.tile(rows[i], repeats), shuffle=train)]
        if self.tcfg.within_slide or not train:
            jobs = [("spots", np.stack([np.full(len(chunk), i), chunk], 1))
                    for i, r in enumerate(rows) for chunk in self._chunks(np.tile(r, repeats), shuffle=train)]
            order = self.rng.permutation(len(jobs)) if train else range(len(jobs))
            return [jobs[j] for j in order]
        pairs = np.concatenate([np.stack([np.full(len(r), i), r], 1) for i, r in enumerate(rows)])
        pairs = np.tile(pairs, (repeats, 1))
        jobs = []
        # Every rank needs at least one row of a global batch.
        for chunk in self._chunks(np.arange(len(pairs)), shuffle=True, min_rows=max(2, self.dist.world_size)):
            sel = pairs[chunk]
            jobs.append(("spots", sel[np.argsort(sel[:, 0], kind="stable")]))
        return jobs

    @staticmethod
    def _parts(job: tuple) -> list[tuple[int, np.ndarray]]:
        """The ``(slide number, rows)`` whose images a job needs."""
        if job[0] == "slide":
            return [(job[1], None)]
        pairs = job[1]
        return [(int(i), pairs[pairs[:, 0] == i, 1]) for i in np.unique(pairs[:, 0])]

    def _materialise(self, job: tuple, train: bool, seed: Optional[int] = None,
                     images: Optional[torch.Tensor] = None) -> dict:
        if job[0] == "slide":
            return self._slide_batch(self.slides[job[1]], job[2], train, seed, images)
        parts = [(self.slides[i], rows) for i, rows in self._parts(job)]
        return self._spot_batch(parts, train, seed, images)

    def _local_jobs(self, train: bool) -> list[tuple[tuple, Optional[list[int]], tuple[int, int], bool]]:
        """This rank's micro-batches: ``(job, sizes, key, last)``. ``sizes``: every rank's row count in the
        gathered (``rows``) mode, ``None`` for whole jobs; ``key``: ``(rank, job number)`` that seeds the
        job's random draws (rank 0 for whole jobs: a job draws the same wherever it runs); ``last``: the
        micro-batch that ends an optimisation step."""
        jobs = self._jobs(train)
        world, rank, acc = self.dist.world_size, self.dist.rank, self.accumulate
        if not train:
            # Validation: whole jobs, strided over ranks; the epoch's sums are reduced afterwards.
            return [(jobs[j], None, (0, j), True) for j in range(rank, len(jobs), world)]
        if self.shard == "rows":
            if world == 1:
                return [(job, None, (0, j), True) for j, job in enumerate(jobs)]
            out = []
            for j, job in enumerate(jobs):
                pieces = np.array_split(job[1], world)
                out.append((("spots", pieces[rank]), [len(p) for p in pieces], (rank, j), True))
            return out
        # Whole jobs, N × accumulate per global step (rank r takes the r-th run of `accumulate`); the last
        # step is padded with jobs from the epoch's start, the same way for any N.
        per = world * acc
        out = []
        for start in range(0, len(jobs), per):
            for m in range(acc):
                j = start + rank * acc + m
                out.append((jobs[j % len(jobs)], None, (0, j), m == acc - 1))
        return out

    def _local_steps(self, train: bool, epoch: int = 0
                     ) -> Iterator[tuple[dict, Optional[list[int]], int, bool]]:
        """This rank's batches, ``(batch, sizes, seed of the model's draws, last)`` (see :meth:`_local_jobs`)."""
        if self.source is not None:
            # A streamed cohort: one optimisation step per batch; the draws are seeded per (rank, step).
            for j, (batch, sizes) in enumerate(self.source.steps(train, epoch)):
                yield batch, sizes, step_seed(self.tcfg.seed, epoch, self.dist.rank, j, stream=1), True
            return
        local = self._local_jobs(train)
        seeds = [step_seed(self.tcfg.seed, epoch, r, j) for _, _, (r, j), _ in local]
        draws = [step_seed(self.tcfg.seed, epoch, r, j, stream=1) for _, _, (r, j), _ in local]
        if not (self.from_patches and self.tcfg.num_workers > 0 and local):
            for (job, sizes, _, last), seed, draw in zip(local, seeds, draws):
                yield self._materialise(job, train, seed), sizes, draw, last
            return
        steps = [[(i, np.arange(self.slides[i].n_spots) if rows is None else rows) for i, rows in self._parts(job)]
                 for job, *_ in local]
        dataset = PatchBatches([s.patches for s in self.slides], steps, seeds,
                               self.config.model.image_encoder.input_size, augment=train and self.tcfg.augment,
                               color_jitter=self.tcfg.color_jitter if train else 0.0)
        pin = self.tcfg.pin_memory and self.device.type == "cuda"
        for (job, sizes, _, last), seed, draw, images in zip(local, seeds, draws,
                                                              dataset.loader(self.tcfg.num_workers, pin)):
            yield self._materialise(job, train, seed, images), sizes, draw, last

    def _reseed(self, seed: int) -> None:
        # Dropout masks, the DGI corruption (torch's global generator) and feature-map flips of this job.
        torch.manual_seed(seed)
        self.generator.manual_seed(seed)

    # ------------------------------------------------------------------------------------- one epoch
    def _run_epoch(self, epoch: int, train: bool) -> dict[str, float]:
        self.model.train(train)
        sums: dict[str, float] = {}
        n_batches = 0
        # Validation runs unwrapped: ranks may hold different numbers of validation jobs, and DDP's forward
        # is a collective (buffer broadcast).
        task = self.ddp if (train and self.ddp is not None) else self.task
        # Rows mode: every rank's loss is the global batch's and its backward reaches its own rows only;
        # DDP averages over N ranks, so N × loss makes the average the sum, the single-process gradient.
        # Jobs mode: the mean over the step's jobs (DDP averages over ranks, 1/accumulate here).
        scale = float(self.dist.world_size) if self.shard == "rows" else 1.0 / self.accumulate
        if train:
            self.optimizer.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(train):
            for batch, sizes, draw, last in self._local_steps(train, epoch):
                if train:
                    self._reseed(draw)
                # Accumulated micro-batches: gradients stay local until the step's last one.
                sync = self.ddp.no_sync() if (train and self.ddp is not None and not last) else contextlib.nullcontext()
                with sync:
                    total, logs = task(batch, epoch if train else None, sizes)
                    if train:
                        self.scaler.scale(total * scale).backward()
                if train and last:
                    if self.tcfg.grad_clip:
                        self.scaler.unscale_(self.optimizer)
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tcfg.grad_clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v
                n_batches += 1
        if self.dist.enabled:
            if not train or self.shard == "jobs":
                # Every rank takes part in the reduction, also one that had no validation job.
                return self._reduce_logs({k: v / n_batches for k, v in sums.items()} if n_batches else {},
                                         n_batches)
        return {k: v / n_batches for k, v in sums.items()} if n_batches else {}

    def _reduce_logs(self, means: dict[str, float], n_batches: int) -> dict[str, float]:
        """Batch-weighted means over ranks (the single-process epoch mean over all jobs)."""
        import torch.distributed as dist

        counts = [None] * self.dist.world_size
        dist.all_gather_object(counts, (n_batches, sorted(means)))
        total = sum(c for c, _ in counts)
        if total == 0:
            return {}
        keys = sorted({k for c, ks in counts if c for k in ks})
        return all_reduce_mean({k: means.get(k, 0.0) for k in keys}, weight=float(n_batches))

    # ---------------------------------------------------------------------------------- checkpoints
    def _checkpoint_state(self, epoch: int) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": epoch,
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "config": config_to_dict(self.config),
            "scaler": self.scaler.state_dict(),
            "world_size": self.dist.world_size,
            "rng": {"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state(),
                    "generator": self.generator.get_state()},
        }

    def _save(self, name: str, state: dict) -> None:
        if self.run_dir is None or not self.dist.is_main:
            return
        with atomic_path(self.run_dir / "checkpoints" / name) as tmp:
            torch.save(state, tmp)

    def _resume(self) -> None:
        state = load_checkpoint(self.run_dir / "checkpoints" / "last.pt", map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_epoch = int(state["epoch"]) + 1
        self.best_val, self.best_epoch = float(state["best_val"]), int(state["best_epoch"])
        self.history = list(state["history"])
        self.rng.bit_generator.state = state["rng"]["numpy"]
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["generator"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def _write_log(self) -> None:
        if self.run_dir is None or not self.history or not self.dist.is_main:
            return
        frame = pd.DataFrame(self.history)
        with atomic_path(self.run_dir / "log.csv") as tmp:
            frame.to_csv(tmp, index=False)

    # ------------------------------------------------------------------------------------------ fit
    def fit(self, resume: bool = False) -> TrainResult:
        """Train for ``train.epochs`` epochs (continuing from ``checkpoints/last.pt`` when ``resume``).

        Returns the per-epoch history (one row per epoch and split, one column per loss term) and the
        best epoch; the model is left holding the best weights.
        """
        if resume:
            if self.run_dir is None:
                raise ValueError("resume needs a run folder")
            self._resume()
        has_val = self.source.has_val if self.source is not None else any(len(v) for _, v in self.splits)
        best_state = None
        bar = tqdm(range(self.start_epoch, self.tcfg.epochs), desc="train", disable=not (self.tcfg.progress and self.dist.is_main),
                   initial=self.start_epoch, total=self.tcfg.epochs)
        for epoch in bar:
            t0 = time.perf_counter()
            train_logs = self._run_epoch(epoch, train=True)
            if self.dist.is_main:
                self.monitor.update(epoch, train_logs)
            self.history.append({"epoch": epoch, "split": "train", **train_logs,
                                 "seconds": time.perf_counter() - t0})
            val_logs = self._run_epoch(epoch, train=False) if has_val else {}
            if val_logs:
                self.history.append({"epoch": epoch, "split": "val", **val_logs})
            score = val_logs.get("total", train_logs.get("total", math.inf))
            if score < self.best_val:
                self.best_val, self.best_epoch = score, epoch
                best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                self._save("best.pt", {**self._checkpoint_state(epoch), "model": best_state})
            self._save("last.pt", self._checkpoint_state(epoch))
            self._write_log()
            bar.set_postfix({k: f"{v:.3f}" for k, v in train_logs.items()} |
                            ({"val": f"{val_logs['total']:.3f}"} if val_logs else {}))
        if best_state is not None:
            self.model.load_state_dict(best_state)
        elif resume and self.run_dir is not None and (self.run_dir / "checkpoints" / "best.pt").is_file():
            self.model.load_state_dict(load_checkpoint(self.run_dir / "checkpoints" / "best.pt")["model"])
        self.model.eval()
        return TrainResult(pd.DataFrame(self.history), self.best_epoch, self.best_val)
