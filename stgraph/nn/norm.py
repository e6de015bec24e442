r"""Batch normalisation over a global batch split across processes, on any backend (gloo on CPU, NCCL).

When data-parallel ranks each encode a slice of one global batch (spot batching across slides), a backbone's
``BatchNorm`` would otherwise normalise each slice by its own statistics, and N processes would no longer take
the steps one process takes on the same global batch. :class:`GlobalBatchNorm` normalises by the statistics
of the whole global batch, gathered with differentiable all-reduces, as ``torch.nn.SyncBatchNorm`` does
(which runs on GPUs only):

.. math::
    \mu_c = \frac{1}{M}\sum_{r}\sum_{i \in r} x_{ic}, \qquad
    \sigma^2_c = \frac{1}{M}\sum_{r}\sum_{i \in r} (x_{ic} - \mu_c)^2, \qquad
    y_{ic} = \gamma_c \frac{x_{ic} - \mu_c}{\sqrt{\sigma^2_c + \epsilon}} + \beta_c

with :math:`M` the rows (× spatial positions) of all ranks; running statistics are updated with the unbiased
:math:`\sigma^2_c M / (M - 1)` exactly as one process would, so they agree on every rank. The backward
sums the statistics' gradients over ranks (the all-reduce's own backward). Outside training, or without a
process group, it is a plain ``BatchNorm``; its state dict is a ``BatchNorm``'s, so a run trained with it
loads into the usual model.

When each rank runs whole jobs instead (slide batching, ``within_slide``), every job is normalised by its own
batch, as one process accumulating the same jobs does: those runs keep the plain ``BatchNorm``
(:meth:`stgraph.training.Trainer` converts only for row slices).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["GlobalBatchNorm", "convert_global_batchnorm"]


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """``BatchNorm{1,2,3}d`` whose training statistics are those of the global batch over all ranks."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float32, device=x.device)
        total = all_reduce(torch.cat([xf.sum(dims), count]))
        m = total[-1]
        mean = total[:-1] / m
        var = all_reduce((xf - mean.view(shape)).pow(2).sum(dims)) / m  # two passes: no E[x²] − E[x]² loss
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach().to(self.running_mean.dtype))
                unbiased = var.detach() * m / torch.clamp(m - 1, min=1)
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.to(self.running_var.dtype))
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_global_batchnorm(module: nn.Module) -> tuple[nn.Module, int]:
    """Replace every trainable-mode ``BatchNorm`` under ``module`` by a :class:`GlobalBatchNorm` holding the
    *same* parameter and buffer objects (an optimizer built before keeps working). Returns the module (a new
    one when ``module`` itself was a ``BatchNorm``) and how many were replaced."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        for name in ("weight", "bias"):
            if getattr(module, name, None) is not None:
                setattr(new, name, getattr(module, name))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            if getattr(module, name, None) is not None:
                new._buffers[name] = getattr(module, name)
        new.train(module.training)
        return new, 1
    count = 0
    for name, child in list(module.named_children()):
        new, n = convert_global_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
        count += n
    return module, count
