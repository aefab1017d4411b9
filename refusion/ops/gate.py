"""The GELU gate of the gated feed-forward blocks and of the fusion module.

``gelu_gate(x) = GELU(x[:, :C/2]) * x[:, C/2:]`` with the exact (erf) GELU.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def _check_pair(a: Tensor, b: Tensor) -> None:
    if a.dim() != 4 or b.dim() != 4:
        raise ValueError(
            f"expected (B, C, H, W) tensors, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape != b.shape:
        raise ValueError(f"gate halves differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")


def gelu_mul_reference(a: Tensor, b: Tensor) -> Tensor:
    """Pure-PyTorch ``GELU(a) * b`` (exact erf GELU)."""
    _check_pair(a, b)
    return F.gelu(a) * b


def gelu_mul(a: Tensor, b: Tensor) -> Tensor:
    """``GELU(a) * b`` with the exact (erf) GELU.

    Shape:
        - Input: two tensors :math:`(B, C, H, W)`
        - Output: :math:`(B, C, H, W)`
    """
    from refusion.ops import _kernels

    return _kernels.gelu_mul(a, b)


def gelu_gate(x: Tensor) -> Tensor:
    """``GELU(x[:, :C/2]) * x[:, C/2:]``.

    Shape:
        - Input: :math:`(B, 2C, H, W)`
        - Output: :math:`(B, C, H, W)`

    Example:
        >>> gelu_gate(torch.randn(1, 8, 4, 4)).shape
        torch.Size([1, 4, 4, 4])
    """
    from refusion.ops import _kernels

    # One op on the whole tensor: its backward writes a single (B, 2C, H, W) gradient instead of
    # two half-size ones that autograd would then copy together.
    return _kernels.gelu_gate(x)


class GeluGate(nn.Module):
    """Module form of :func:`gelu_gate`."""

    def forward(self, x: Tensor) -> Tensor:
        return gelu_gate(x)
