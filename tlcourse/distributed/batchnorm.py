"""BatchNorm across processes: which layers train, and a synchronised BatchNorm for the CPU (gloo)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; its gradient is the sum of every rank's gradient (of the sum of their losses)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover the global batch, for CPU tensors over gloo.

    PyTorch's ``nn.SyncBatchNorm`` runs on CUDA only (and DDP refuses it in a CPU module). This is
    the same computation written with two differentiable all-reduces: mean, then biased variance
    over every rank's images; running statistics get the unbiased variance, as ``BatchNorm`` does.
    DDP averages the parameter gradients over ranks, so a step equals one process's step on the
    whole batch. In eval mode, or in one process, it is plain ``BatchNorm``.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = torch.tensor([input.numel() // input.size(1)], dtype=torch.float64)
        dist.all_reduce(count)
        n = count.item()
        # Sums in float64, as PyTorch's CPU BatchNorm accumulates: a float32 sum over a whole batch
        # loses enough digits to change the gradient of the first layers by ~1e-3.
        wide = input.double()
        mean = _AllReduceSum.apply(wide.sum(dims)) / n
        centred = wide - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / n
        out = (centred * torch.rsqrt(var + self.eps).view(shape)).to(input.dtype)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                unbiased = var.detach() * (n / max(n - 1, 1))
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return out


def training_batchnorms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """BatchNorm layers that run in training mode after ``model.train()`` (frozen ones with bn_eval do not)."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.train()
        return [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.training]
    finally:
        for m, mode in modes.items():
            m.training = mode
