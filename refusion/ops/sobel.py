"""Sobel gradients: the one gradient operator used by the losses, P's input and the metrics.

Definition (used everywhere in this project):

* ``Sx`` is the cross-correlation with ``[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]`` (positive to the
  right), ``Sy`` with ``[[-1, -2, -1], [0, 0, 0], [1, 2, 1]]`` (positive downwards);
* borders are replicated (the image is extended by its edge pixels), so the output has the
  input's size and a constant image has zero gradient everywhere, including its border;
* the gradient magnitude is ``|Sx| + |Sy|`` (L1 form, unnormalised).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_KX = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
_KY = ((-1.0, -2.0, -1.0), (0.0, 0.0, 0.0), (1.0, 2.0, 1.0))


def _check(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got {x.dtype}")


def sobel_xy_reference(x: Tensor) -> tuple[Tensor, Tensor]:
    """Pure-PyTorch Sobel responses (the reference the kernels are tested against)."""
    _check(x)
    b, c, h, w = x.shape
    weight = torch.tensor((_KX, _KY), dtype=x.dtype, device=x.device).unsqueeze(1)
    padded = F.pad(x.reshape(b * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    out = F.conv2d(padded, weight)
    return out[:, 0].reshape(b, c, h, w), out[:, 1].reshape(b, c, h, w)


def sobel_xy_transpose_reference(gx: Tensor, gy: Tensor) -> Tensor:
    """Pure-PyTorch transposed Sobel ``Sx^T gx + Sy^T gy`` (the backward of :func:`sobel_xy`).

    The forward is ``conv2d(pad_replicate(x))``; its adjoint is the transposed convolution onto
    the padded (H+2, W+2) grid followed by the adjoint of replicate padding, which adds what
    landed on the replicated border rows/columns back onto the edge pixels.

    Shape:
        - Input: two tensors :math:`(B, C, H, W)`
        - Output: :math:`(B, C, H, W)`
    """
    _check(gx)
    if gx.shape != gy.shape:
        raise ValueError(f"gradient shapes differ: {tuple(gx.shape)} vs {tuple(gy.shape)}")
    b, c, h, w = gx.shape
    weight = torch.tensor((_KX, _KY), dtype=gx.dtype, device=gx.device).unsqueeze(1)
    g = torch.stack((gx.reshape(b * c, h, w), gy.reshape(b * c, h, w)), dim=1)
    full = F.conv_transpose2d(g, weight)[:, 0]  # (B*C, H+2, W+2)
    # Fold columns, then rows; for W == 1 (H == 1) both folds land on the single column (row).
    cols = full[:, :, 1:-1].clone()
    cols[:, :, :1] += full[:, :, :1]
    cols[:, :, -1:] += full[:, :, -1:]
    out = cols[:, 1:-1].clone()
    out[:, :1] += cols[:, :1]
    out[:, -1:] += cols[:, -1:]
    return out.reshape(b, c, h, w)


def sobel_xy(x: Tensor) -> tuple[Tensor, Tensor]:
    """Horizontal and vertical Sobel responses with replicated borders.

    Args:
        x: images, any float dtype.

    Returns:
        ``(sx, sy)``, each of ``x``'s shape.

    Shape:
        - Input: :math:`(B, C, H, W)`
        - Output: two tensors :math:`(B, C, H, W)`

    Example:
        >>> sx, sy = sobel_xy(torch.rand(2, 1, 5, 7))
        >>> sx.shape
        torch.Size([2, 1, 5, 7])
    """
    from refusion.ops import _kernels

    return _kernels.sobel_xy(x)


def sobel_grad(x: Tensor) -> Tensor:
    """Gradient magnitude ``|Sx| + |Sy|`` with replicated borders (see module docstring).

    Shape:
        - Input: :math:`(B, C, H, W)`
        - Output: :math:`(B, C, H, W)`
    """
    sx, sy = sobel_xy(x)
    return sx.abs() + sy.abs()


class SobelGrad(nn.Module):
    """Module form of :func:`sobel_grad`."""

    def forward(self, x: Tensor) -> Tensor:
        return sobel_grad(x)
