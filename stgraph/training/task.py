r"""The training task: model and objective in one module, whose forward returns the loss.

As open_clip's ``TrainingTask``: the module that ``torch.nn.parallel.DistributedDataParallel`` wraps holds
the model and its (parameter-free) objective, and its forward computes every loss term, so every trainable
parameter a term depends on (the DGI discriminators included) is reached from the forward's output and
DDP's reducer can average its gradient while the backward runs.

Shapes: ``forward(batch, epoch=None, sizes=None) -> (total (), logs {term: float})``; ``batch`` is a
:class:`~stgraph.models.ContrastiveSTModel` batch; ``sizes`` (one row count per rank) gathers the branch
outputs of a global batch split into rows over ranks (:func:`~stgraph.training.distributed.gather_rows`).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Optional, Sequence

import torch
from torch import nn

from ..losses import CompositeLoss, Objective
from .distributed import gather_rows

__all__ = ["TrainingTask", "map_branch"]


def map_branch(out, fn, fields=None):
    """``out`` (a :class:`~stgraph.models.contrastive.BranchOutput`) with ``fn`` applied to the tensors of
    ``fields`` (default all; tuples such as the DGI triple element-wise)."""
    def apply(t):
        if isinstance(t, torch.Tensor):
            return fn(t)
        if isinstance(t, tuple):
            return tuple(apply(x) for x in t)
        return t

    names = fields or [f.name for f in dataclasses.fields(out)]
    return dataclasses.replace(out, **{name: apply(getattr(out, name)) for name in names})


class TrainingTask(nn.Module):
    """A two-branch model and its objective; ``forward`` gives the weighted loss of one batch.

    Parameters
    ----------
    model
        The :class:`~stgraph.models.ContrastiveSTModel` (its parameters are the task's parameters).
    objective
        :class:`~stgraph.losses.Objective`: term names, weights, DGI pre-training schedule (no parameters).
    amp_dtype
        ``torch.bfloat16`` / ``torch.float16``: autocast of the model's forward (losses in float32); ``None``.
    channels_last
        NHWC patch batches (cuDNN's fast path when fine-tuning on a GPU).
    """

    def __init__(self, model: nn.Module, objective: Objective, amp_dtype: Optional[torch.dtype] = None,
                 channels_last: bool = False):
        super().__init__()
        self.model = model
        self.objective = objective
        self.amp_dtype = amp_dtype
        self.channels_last = channels_last

    def _autocast(self, device: torch.device):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.amp_dtype)

    def outputs(self, batch: dict, sizes: Optional[Sequence[int]] = None):
        """The two branches' outputs in float32; with ``sizes``, gathered over ranks (gradient into this
        rank's rows only)."""
        if self.channels_last and "patch" in batch:
            batch["patch"] = batch["patch"].contiguous(memory_format=torch.channels_last)
        device = batch["spot_input"].device
        with self._autocast(device):
            image, spot = self.model(batch)
        if self.amp_dtype is not None:
            # The losses (softmax over similarities, HSIC kernels) are taken in float32.
            image, spot = (map_branch(b, lambda t: t.float() if t.is_floating_point() else t)
                           for b in (image, spot))
        if sizes is not None:
            image, spot = (map_branch(b, lambda t: gather_rows(t, sizes), ("inputs", "hidden", "emb"))
                           for b in (image, spot))
        return image, spot

    def forward(self, batch: dict, epoch: Optional[int] = None,
                sizes: Optional[Sequence[int]] = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted total and per-term logs of one batch, with the weights of training ``epoch`` (the DGI
        pre-training schedule; ``None``: every weight, as for validation)."""
        image, spot = self.outputs(batch, sizes)
        terms = self.objective.terms_from(image, spot, batch.get("loss_index"))
        return CompositeLoss(self.objective.weights(epoch))(terms)
