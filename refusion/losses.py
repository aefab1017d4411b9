"""The fusion loss L_f (learnable, Eqs. 1-3) and the reconstruction loss L_r (Eqs. 4-6).

Notation: ``I_a, I_b`` sources, ``I_f`` fused, ``R_a, R_b`` reconstructions, all ``(B, 1, H, W)``
in [0, 1]; ``grad`` is :func:`refusion.ops.sobel_grad` (``|Sx| + |Sy|``, replicated borders), the
same operator as P's input and the metrics; ``mean`` averages over batch and pixels (the
paper's ``1/HW`` sums, averaged over the batch).

* ``L_f^int  = mean(W_a |I_f - I_a| + W_b |I_f - I_b|)``
* ``L_f^grad = mean(V_a |grad I_f - grad I_a| + V_b |grad I_f - grad I_b|)``
* ``L_f = L_f^int + alpha1 L_f^grad``
* ``L_r^int  = mean(|R_a - I_a|) + mean(|R_b - I_b|)``
* ``L_r^grad = mean(|grad R_a - grad I_a|) + mean(|grad R_b - grad I_b|)``
* ``L_r = L_r^int + alpha2 L_r^grad``

With ``W = V = 1/2`` everywhere ``L_f`` is the fixed-loss ablation of Table 4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor, nn

from refusion.models.proposal import LossWeights
from refusion.ops import sobel_grad


@dataclass
class LossConfig:
    """Weights of the gradient terms (the paper uses 1 for both)."""

    alpha1: float = 1.0
    alpha2: float = 1.0


class LossTerms(NamedTuple):
    """A loss and its two terms (for logging)."""

    total: Tensor
    intensity: Tensor
    gradient: Tensor


def _check(*xs: Tensor) -> None:
    shape = xs[0].shape
    for x in xs:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"expected (B, 1, H, W) tensors, got {tuple(x.shape)}")
        if x.shape != shape:
            raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(shape)}")


def fusion_loss(
    fused: Tensor, a: Tensor, b: Tensor, weights: LossWeights, alpha1: float = 1.0
) -> LossTerms:
    """Learnable fusion loss ``L_f`` (Eqs. 1-3).

    Args:
        fused: ``I_f``; a, b: sources; weights: ``W_a, W_b, V_a, V_b`` from P (or fixed).
        alpha1: weight of the gradient term.

    Shape:
        all images :math:`(B, 1, H, W)`; returns scalars.
    """
    _check(fused, a, b, *weights)
    g_f, g_a, g_b = sobel_grad(fused), sobel_grad(a), sobel_grad(b)
    intensity = (weights.w_a * (fused - a).abs() + weights.w_b * (fused - b).abs()).mean()
    gradient = (weights.v_a * (g_f - g_a).abs() + weights.v_b * (g_f - g_b).abs()).mean()
    return LossTerms(intensity + alpha1 * gradient, intensity, gradient)


def reconstruction_loss(
    rec_a: Tensor, rec_b: Tensor, a: Tensor, b: Tensor, alpha2: float = 1.0
) -> LossTerms:
    """Reconstruction loss ``L_r`` (Eqs. 4-6).

    Shape:
        all images :math:`(B, 1, H, W)`; returns scalars.
    """
    _check(rec_a, rec_b, a, b)
    intensity = (rec_a - a).abs().mean() + (rec_b - b).abs().mean()
    gradient = (sobel_grad(rec_a) - sobel_grad(a)).abs().mean() + (
        sobel_grad(rec_b) - sobel_grad(b)
    ).abs().mean()
    return LossTerms(intensity + alpha2 * gradient, intensity, gradient)


class FusionLoss(nn.Module):
    """Module form of :func:`fusion_loss`."""

    def __init__(self, alpha1: float = 1.0) -> None:
        super().__init__()
        self.alpha1 = alpha1

    def forward(self, fused: Tensor, a: Tensor, b: Tensor, weights: LossWeights) -> LossTerms:
        return fusion_loss(fused, a, b, weights, self.alpha1)


class ReconstructionLoss(nn.Module):
    """Module form of :func:`reconstruction_loss`."""

    def __init__(self, alpha2: float = 1.0) -> None:
        super().__init__()
        self.alpha2 = alpha2

    def forward(self, rec_a: Tensor, rec_b: Tensor, a: Tensor, b: Tensor) -> LossTerms:
        return reconstruction_loss(rec_a, rec_b, a, b, self.alpha2)
