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
"""
from __future__ import annotations

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
from ..losses import CompositeLoss, Objective
from ..utils import atomic_path, resolve_device, seed_everything
from .monitor import TermMonitor
from ..data.transforms import normalize_batch, patch_batch
from ..run.folder import CheckpointError, load_checkpoint  # noqa: F401 (re-exported)
from ..run.prepare import PreparedSlide

__all__ = ["Trainer", "TrainResult", "CheckpointError", "load_checkpoint"]


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
    """

    def __init__(self, model, config, slides: Sequence[PreparedSlide], run_dir: Optional[str | Path] = None,
                 objective: Optional[Objective] = None):
        self.config = config
        self.objective = objective if objective is not None else Objective.from_config(config)
        self.tcfg = config.train
        self.device = resolve_device(self.tcfg.device)
        self.model = model.to(self.device)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        seed_everything(self.tcfg.seed)
        self.generator = torch.Generator().manual_seed(self.tcfg.seed)
        self.rng = np.random.default_rng(self.tcfg.seed)
        for s in slides:
            if s.spot_input is None:
                raise ValueError(f"training slide {s.slide_id!r} has no expression")
        #: (train rows, validation rows) of each slide
        self.splits = [self._split(self._val_mask(s)) for s in slides]
        self.slides = [s.to_tensors(self.device) for s in slides]
        if not any(len(train_rows) for train_rows, _ in self.splits):
            raise ValueError("no training spots left after the validation split")
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt_cls = torch.optim.AdamW if self.tcfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(params, lr=self.tcfg.lr, weight_decay=self.tcfg.weight_decay)
        self.history: list[dict] = []
        self.start_epoch = 0
        self.best_val = math.inf
        self.best_epoch = -1
        self.monitor = TermMonitor()

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
    def _images(self, s: PreparedSlide, rows: np.ndarray, train: bool) -> dict:
        if s.features is not None:
            return {"features": s.features[rows]}
        if s.stage_input is not None:
            x = s.stage_input[torch.as_tensor(rows, device=s.stage_input.device)]
            if train and self.tcfg.augment and x.dim() == 4:
                # Flips/rotations of the cached feature maps stand in for those of the patches.
                x = random_flip_rotate(x, self.generator)
            return {"stage_input": x}
        if s.patches is None:
            raise ValueError(f"slide {s.slide_id!r} has neither features nor patches")
        x = patch_batch(s.patches[torch.as_tensor(rows)], self.config.model.image_encoder.input_size, self.device)
        if train and self.tcfg.augment:
            x = random_flip_rotate(x, self.generator)
        if train and self.tcfg.color_jitter > 0:
            from torchvision.transforms import ColorJitter

            jitter = ColorJitter(self.tcfg.color_jitter, self.tcfg.color_jitter, self.tcfg.color_jitter)
            x = torch.stack([jitter(xi) for xi in x])
        return {"patch": normalize_batch(x)}

    def _spot_batch(self, parts: list[tuple[PreparedSlide, np.ndarray]], train: bool) -> dict:
        pieces = []
        for s, rows in parts:
            idx = torch.as_tensor(rows, device=self.device)
            piece = {"spot_input": s.spot_input[idx], "coords": s.coords[idx]}
            piece.update(self._images(s, rows, train))
            pieces.append(piece)
        return {k: torch.cat([p[k] for p in pieces]) for k in pieces[0]}

    def _slide_batch(self, s: PreparedSlide, loss_rows: np.ndarray, train: bool) -> dict:
        batch = self._spot_batch([(s, np.arange(s.n_spots))], train)
        batch["edge_index"] = s.edge_index
        batch["loss_index"] = torch.as_tensor(loss_rows, device=self.device)
        return batch

    def _chunks(self, rows: np.ndarray, shuffle: bool) -> list[np.ndarray]:
        rows = self.rng.permutation(rows) if shuffle else rows
        bs = self.tcfg.batch_size
        return [rows[i : i + bs] for i in range(0, len(rows), bs) if len(rows[i : i + bs]) > 1]

    def _batches(self, train: bool) -> Iterator[dict]:
        rows = [split[0] if train else split[1] for split in self.splits]
        repeats = 2 if (train and self.tcfg.paired_augment) else 1
        if self.tcfg.batching == "slide":
            order = self.rng.permutation(len(self.slides)) if train else range(len(self.slides))
            for i in order:
                for chunk in self._chunks(np.tile(rows[i], repeats), shuffle=train):
                    yield self._slide_batch(self.slides[i], chunk, train)
            return
        if self.tcfg.within_slide or not train:
            jobs = [(s, chunk) for s, r in zip(self.slides, rows)
                    for chunk in self._chunks(np.tile(r, repeats), shuffle=train)]
            order = self.rng.permutation(len(jobs)) if train else range(len(jobs))
            for j in order:
                yield self._spot_batch([jobs[j]], train)
            return
        pairs = np.concatenate([np.stack([np.full(len(r), i), r], 1) for i, r in enumerate(rows)])
        pairs = np.tile(pairs, (repeats, 1))
        for chunk in self._chunks(np.arange(len(pairs)), shuffle=True):
            sel = pairs[chunk]
            parts = [(self.slides[i], sel[sel[:, 0] == i, 1]) for i in np.unique(sel[:, 0])]
            yield self._spot_batch(parts, train)

    # ------------------------------------------------------------------------------------- one epoch
    def _run_epoch(self, epoch: int, train: bool) -> dict[str, float]:
        self.model.train(train)
        weighted = CompositeLoss(self.objective.weights(epoch if train else None))
        sums: dict[str, float] = {}
        n_batches = 0
        with torch.set_grad_enabled(train):
            for batch in self._batches(train):
                total, logs = weighted(self.objective.terms(self.model, batch))
                if train:
                    self.optimizer.zero_grad(set_to_none=True)
                    total.backward()
                    if self.tcfg.grad_clip:
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tcfg.grad_clip)
                    self.optimizer.step()
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v
                n_batches += 1
        return {k: v / n_batches for k, v in sums.items()} if n_batches else {}

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
            "rng": {"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state(),
                    "generator": self.generator.get_state()},
        }

    def _save(self, name: str, state: dict) -> None:
        if self.run_dir is None:
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

    def _write_log(self) -> None:
        if self.run_dir is None or not self.history:
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
        has_val = any(len(val_rows) for _, val_rows in self.splits)
        best_state = None
        bar = tqdm(range(self.start_epoch, self.tcfg.epochs), desc="train", disable=not self.tcfg.progress,
                   initial=self.start_epoch, total=self.tcfg.epochs)
        for epoch in bar:
            t0 = time.perf_counter()
            train_logs = self._run_epoch(epoch, train=True)
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
