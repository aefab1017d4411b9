"""Fusion module F of ReFusion: two Restormer encoders, the adaptive fusion module, a decoder.

Architecture (defaults are the published network, 59,856 parameters): a 3x3 stem per source
(1 -> dim), ``blocks`` Restormer blocks per source, the adaptive fusion module (AFM:
cross-attention in both directions, then GELU gating of each source's features), ``blocks``
Restormer blocks at ``2*dim``, then 3x3 conv -> LeakyReLU(0.01) -> 3x3 conv -> sigmoid.
No convolution has a bias. Any ``H x W`` works without padding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refusion.models.restormer import (
    RestormerBlock,
    channel_attention,
    conv1x1,
    dwconv3x3,
)
from refusion.ops import gelu_mul


@dataclass
class FusionConfig:
    """Width, depth and heads of F. The defaults are the paper's network.

    Attributes:
        dim: channels of each encoder (the decoder runs at ``2*dim``).
        blocks: Restormer blocks per encoder and in the decoder.
        heads: attention heads everywhere (must divide ``dim``).
        ffn_expansion: hidden width factor of the gated feed-forward networks.
        afm_expansion: hidden width factor of the AFM gating branches.
    """

    dim: int = 16
    blocks: int = 2
    heads: int = 8
    ffn_expansion: float = 2.0
    afm_expansion: int = 4

    def to_dict(self) -> dict:
        return asdict(self)


class AdaptiveFusionModule(nn.Module):
    """AFM: bidirectional cross-attention, residual mixing, then GELU gating per source.

    Stream ``a`` attends with queries from ``b`` over keys/values of ``a`` (and vice versa);
    the gates come from both streams together, the gated values from each stream alone.

    Shape:
        - Inputs: two :math:`(B, C, H, W)` maps
        - Output: :math:`(B, 2C, H, W)`
    """

    def __init__(self, dim: int, heads: int, expansion: int) -> None:
        super().__init__()
        hidden = expansion * dim
        self.heads = heads
        self.temperature_a = nn.Parameter(torch.ones(heads, 1, 1))
        self.temperature_b = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv_a, self.qkv_a_dw = conv1x1(dim, 3 * dim), dwconv3x3(3 * dim)
        self.qkv_b, self.qkv_b_dw = conv1x1(dim, 3 * dim), dwconv3x3(3 * dim)
        self.mid_a, self.mid_b = conv1x1(dim, dim), conv1x1(dim, dim)
        self.gate, self.gate_dw = conv1x1(2 * dim, 2 * hidden), dwconv3x3(2 * hidden)
        self.value_a, self.value_a_dw = conv1x1(dim, hidden), dwconv3x3(hidden)
        self.value_b, self.value_b_dw = conv1x1(dim, hidden), dwconv3x3(hidden)
        self.out_a, self.out_b = conv1x1(hidden, 2 * dim), conv1x1(hidden, 2 * dim)

    def forward(self, xa: Tensor, xb: Tensor) -> Tensor:
        qa, ka, va = self.qkv_a_dw(self.qkv_a(xa)).chunk(3, dim=1)
        qb, kb, vb = self.qkv_b_dw(self.qkv_b(xb)).chunk(3, dim=1)
        xa = xa + self.mid_a(channel_attention(qb, ka, va, self.temperature_a, self.heads))
        xb = xb + self.mid_b(channel_attention(qa, kb, vb, self.temperature_b, self.heads))
        mixed = torch.cat([xa, xb], dim=1)
        ga, gb = self.gate_dw(self.gate(mixed)).chunk(2, dim=1)
        ya = gelu_mul(ga, self.value_a_dw(self.value_a(xa)))
        yb = gelu_mul(gb, self.value_b_dw(self.value_b(xb)))
        return mixed + self.out_a(ya) + self.out_b(yb)


class FusionNet(nn.Module):
    """ReFusion's fusion module F.

    Args:
        config: architecture; ``FusionConfig()`` is the published network.

    Shape:
        - Input: :math:`(B, 2, H, W)`, channel 0 = source a (infrared, CT/PET/SPECT, near focus,
          under-exposed), channel 1 = source b, luma in [0, 1]
        - Output: :math:`(B, 1, H, W)` fused luma in (0, 1)

    Example:
        >>> net = FusionNet()
        >>> net(torch.rand(1, 2, 33, 47)).shape
        torch.Size([1, 1, 33, 47])
    """

    def __init__(self, config: FusionConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or FusionConfig()
        d = config.dim

        def stack(width: int) -> nn.ModuleList:
            return nn.ModuleList(
                RestormerBlock(width, config.heads, config.ffn_expansion)
                for _ in range(config.blocks)
            )

        self.stem_a = nn.Conv2d(1, d, 3, padding=1, bias=False)
        self.stem_b = nn.Conv2d(1, d, 3, padding=1, bias=False)
        self.encoder_a = stack(d)
        self.encoder_b = stack(d)
        self.afm = AdaptiveFusionModule(d, config.heads, config.afm_expansion)
        self.decoder = stack(2 * d)
        self.head_conv1 = nn.Conv2d(2 * d, d, 3, padding=1, bias=False)
        self.head_conv2 = nn.Conv2d(d, 1, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 2:
            raise ValueError(f"FusionNet expects a (B, 2, H, W) input, got {tuple(x.shape)}")
        xa = self.stem_a(x[:, :1])
        xb = self.stem_b(x[:, 1:])
        for blk in self.encoder_a:
            xa = blk(xa)
        for blk in self.encoder_b:
            xb = blk(xb)
        y = self.afm(xa, xb)
        for blk in self.decoder:
            y = blk(y)
        y = F.leaky_relu(self.head_conv1(y), 0.01)
        return torch.sigmoid(self.head_conv2(y))

    def fuse(self, a: Tensor, b: Tensor) -> Tensor:
        """Fuse two ``(B, 1, H, W)`` luma batches; returns ``(B, 1, H, W)``."""
        return self(torch.cat([a, b], dim=1))


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters."""
    return sum(p.numel() for p in model.parameters())


def macs_per_pixel(model: nn.Module) -> int:
    """Multiply-adds per output pixel: every convolution plus the attention products.

    Each convolution costs ``out * in/groups * k*k`` per pixel; each transposed attention costs
    ``2 * C^2 / heads`` per pixel (``q k^T`` and ``attn v``; the ``c x c`` softmax is
    resolution-independent and not counted).
    """
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total += m.out_channels * (m.in_channels // m.groups) * kh * kw
    cfg: FusionConfig = model.config  # type: ignore[assignment]
    d, h = cfg.dim, cfg.heads
    per_attn = lambda c: 2 * c * c // h  # noqa: E731
    total += 2 * cfg.blocks * per_attn(d)  # encoders
    total += 2 * per_attn(d)  # AFM, both directions
    total += cfg.blocks * per_attn(2 * d)  # decoder
    return total
