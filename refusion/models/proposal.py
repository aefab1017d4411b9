"""Loss proposal module P: per-pixel weights of the learnable fusion loss.

The paper specifies P's inputs and outputs but not its architecture. Our choice: a compact
fully-convolutional network (5,522 parameters at the default width) on the four maps
``(I_a, I_b, |grad I_a|, |grad I_b|)``: a 3x3 conv, then 3x3 convs with dilation 2 and 4 (a 15x15
receptive field, enough to judge local focus, exposure and contrast, the cues the weights must
encode), LeakyReLU between, and a 3x3 head with two logits ``z_W, z_V``. Then
``W_a = sigmoid(z_W)``, ``W_b = 1 - W_a`` (and the same for V), so ``W_a + W_b = 1`` and
``V_a + V_b = 1`` hold at every pixel by construction. The head is zero-initialised, so
training starts from the fixed loss ``W = V = 1/2`` (the paper's ablation baseline) and P learns
away from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from refusion.ops import sobel_grad


@dataclass
class ProposalConfig:
    """Width and dilations of P."""

    width: int = 16
    dilations: tuple[int, ...] = (1, 2, 4)

    def to_dict(self) -> dict:
        return {**asdict(self), "dilations": list(self.dilations)}


class LossWeights(NamedTuple):
    """Per-pixel weights, each ``(B, 1, H, W)``: intensity (W) and gradient (V) terms."""

    w_a: Tensor
    w_b: Tensor
    v_a: Tensor
    v_b: Tensor


class ProposalNet(nn.Module):
    """Loss proposal module P.

    Shape:
        - Inputs: ``a``, ``b`` :math:`(B, 1, H, W)` in [0, 1]
        - Output: :class:`LossWeights` of four :math:`(B, 1, H, W)` maps
    """

    def __init__(self, config: ProposalConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ProposalConfig()
        layers: list[nn.Module] = []
        cin = 4
        for d in config.dilations:
            layers += [nn.Conv2d(cin, config.width, 3, padding=d, dilation=d), nn.LeakyReLU(0.1)]
            cin = config.width
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(cin, 2, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, a: Tensor, b: Tensor) -> LossWeights:
        x = torch.cat([a, b, sobel_grad(a), sobel_grad(b)], dim=1)
        z = self.head(self.body(x))
        w_a = torch.sigmoid(z[:, :1])
        v_a = torch.sigmoid(z[:, 1:])
        return LossWeights(w_a, 1.0 - w_a, v_a, 1.0 - v_a)


def fixed_weights(a: Tensor) -> LossWeights:
    """``W = V = 1/2`` everywhere: the fixed-loss ablation (Table 4, configuration I)."""
    half = torch.full_like(a, 0.5)
    return LossWeights(half, half, half, half)


__all__ = ["LossWeights", "ProposalConfig", "ProposalNet", "fixed_weights"]
