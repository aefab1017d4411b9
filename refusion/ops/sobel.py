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
    """Pure-PyTorch Sobel responses (the reference the kernels are tested against).

    Computed separably, ``Sx = Hdiff(Vsmooth(x))`` and ``Sy = Hsmooth(Vdiff(x))``, in the
    kernels' order of operations: each response is a difference of two sums of identical
    shape, so wherever the pixels it reads are equal it is exactly 0. A 3x3 convolution
    (oneDNN's summation order) leaves float residues of about 1e-8 there instead, and since
    the losses take ``|Sx|``, the sign of that residue decided the subgradient in flat regions
    and made training diverge from the kernels' (measured in a two-process run: 9e-6 apart
    after 4 steps where the kernels stay within 2e-8).

    Shape:
        - Input: :math:`(B, C, H, W)`
        - Output: two tensors :math:`(B, C, H, W)`
    """
    _check(x)
    b, c, h, w = x.shape
    if x.numel() == 0:  # replicate padding refuses a zero H or W; the kernels return empties
        return x * 0, x * 0  # (empty; products keep the autograd graph)
    p = F.pad(x.reshape(b * c, 1, h, w), (1, 1, 1, 1), mode="replicate")[:, 0]
    up, mid, dn = p[:, :-2], p[:, 1:-1], p[:, 2:]  # (B*C, H, W+2)
    smooth = up + 2 * mid + dn
    diff = dn - up
    sx = smooth[..., 2:] - smooth[..., :-2]
    sy = diff[..., :-2] + 2 * diff[..., 1:-1] + diff[..., 2:]
    return sx.reshape(b, c, h, w), sy.reshape(b, c, h, w)


def _pad_adjoint(full: Tensor, dim: int) -> Tensor:
    """Adjoint of replicate padding by one along ``dim``: the border taps fold onto the edges."""
    n = full.shape[dim] - 2
    out = full.narrow(dim, 1, n).clone()
    out.narrow(dim, 0, 1).add_(full.narrow(dim, 0, 1))
    out.narrow(dim, n - 1, 1).add_(full.narrow(dim, n + 1, 1))
    return out


def sobel_xy_transpose_reference(gx: Tensor, gy: Tensor) -> Tensor:
    """Pure-PyTorch transposed Sobel ``Sx^T gx + Sy^T gy`` (the backward of :func:`sobel_xy`).

    The adjoint of :func:`sobel_xy_reference` step by step: the transposed horizontal filters
    onto the column-padded grid, the adjoint of column padding, the transposed vertical filters
    onto the row-padded grid, the adjoint of row padding.

    Shape:
        - Input: two tensors :math:`(B, C, H, W)`
        - Output: :math:`(B, C, H, W)`
    """
    _check(gx)
    if gx.shape != gy.shape:
        raise ValueError(f"gradient shapes differ: {tuple(gx.shape)} vs {tuple(gy.shape)}")
    b, c, h, w = gx.shape
    if gx.numel() == 0:
        return (gx + gy) * 0
    gx, gy = gx.reshape(b * c, h, w), gy.reshape(b * c, h, w)
    # Transposed horizontal pass: sx = smooth[j+1] - smooth[j-1] sends +gx to column j+1 and
    # -gx to j-1 of the (W+2)-wide grid; sy = diff[j-1] + 2 diff[j] + diff[j+1] sends 1, 2, 1.
    z = gx.new_zeros(b * c, h, 2)
    g_smooth = torch.cat((z, gx), -1) - torch.cat((gx, z), -1)
    g_diff = torch.cat((gy, z), -1) + 2 * torch.cat((z[..., :1], gy, z[..., :1]), -1) + torch.cat(
        (z, gy), -1
    )
    # The vertical pass reads the column-padded image; fold its padding before going on.
    g_smooth, g_diff = _pad_adjoint(g_smooth, -1), _pad_adjoint(g_diff, -1)
    # Transposed vertical pass: smooth = up + 2 mid + dn, diff = dn - up, rows of the
    # (H+2)-tall grid at offsets 0, 1, 2.
    z = gx.new_zeros(b * c, 2, w)
    g_up = g_smooth - g_diff
    full = torch.cat((g_up, z), -2) + 2 * torch.cat((z[:, :1], g_smooth, z[:, :1]), -2)
    full = full + torch.cat((z, g_smooth + g_diff), -2)
    return _pad_adjoint(full, -2).reshape(b, c, h, w)


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
