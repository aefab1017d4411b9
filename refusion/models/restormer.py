"""Restormer building blocks used by the fusion module F.

Blocks first, as in timm: channel LayerNorm, transposed (channel-wise) multi-head attention,
the GELU-gated depthwise feed-forward network and the transformer block that chains them.
All convolutions are bias-free, as in the authors' network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refusion.ops import gelu_gate


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a ``(B, C, H, W)`` map (biased variance, eps 1e-5).

    Implemented with :func:`torch.nn.functional.layer_norm` on a channels-last view, so ONNX
    export emits a real ``LayerNormalization`` node and half-precision inputs get float32
    statistics from the kernel.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


def l2_normalize_tokens(x: Tensor, eps: float = 1e-12) -> Tensor:
    """L2-normalise over the last (token, ``H*W``) axis without FP16 overflow.

    The authors' ``F.normalize`` squares and sums ``H*W`` values in the input precision; in FP16
    the sum exceeds 65504 above roughly 185x185 pixels and attention silently collapses. Here
    the norm is accumulated in float32 whatever the input dtype (mathematically identical,
    ``x / max(||x||, eps)``), then applied in the input dtype.
    """
    acc = torch.promote_types(x.dtype, torch.float32)
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=acc)
    return x / norm.clamp_min(eps).to(x.dtype)


def channel_attention(q: Tensor, k: Tensor, v: Tensor, temperature: Tensor, heads: int) -> Tensor:
    """Transposed attention: a ``(C/heads x C/heads)`` attention map per head over ``H*W``.

    Args:
        q, k, v: feature maps of one shape.
        temperature: learnt scale per head, shape ``(heads, 1, 1)``.
        heads: number of heads; must divide ``C``.

    Shape:
        - q, k, v: :math:`(B, C, H, W)`
        - Output: :math:`(B, C, H, W)`
    """
    b, c, h, w = q.shape
    q = l2_normalize_tokens(q.reshape(b, heads, c // heads, h * w))
    k = l2_normalize_tokens(k.reshape(b, heads, c // heads, h * w))
    v = v.reshape(b, heads, c // heads, h * w)
    attn = torch.softmax((q @ k.transpose(-2, -1)) * temperature, dim=-1)
    return (attn @ v).reshape(b, c, h, w)


def conv1x1(cin: int, cout: int) -> nn.Conv2d:
    """Bias-free pointwise convolution."""
    return nn.Conv2d(cin, cout, 1, bias=False)


def dwconv3x3(channels: int) -> nn.Conv2d:
    """Bias-free depthwise 3x3 convolution with zero padding 1."""
    return nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)


class TransposedAttention(nn.Module):
    """Multi-Dconv head transposed self-attention (MDTA) of Restormer.

    Shape:
        - Input: :math:`(B, C, H, W)`; Output: :math:`(B, C, H, W)`
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = conv1x1(dim, 3 * dim)
        self.qkv_dw = dwconv3x3(3 * dim)
        self.proj = conv1x1(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv_dw(self.qkv(x)).chunk(3, dim=1)
        return self.proj(channel_attention(q, k, v, self.temperature, self.heads))


class GatedFeedForward(nn.Module):
    """Gated-Dconv feed-forward network (GDFN): 1x1 up, depthwise 3x3, GELU gate, 1x1 down.

    Shape:
        - Input: :math:`(B, C, H, W)`; Output: :math:`(B, C, H, W)`
    """

    def __init__(self, dim: int, expansion: float) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.proj_in = conv1x1(dim, 2 * hidden)
        self.dw = dwconv3x3(2 * hidden)
        self.proj_out = conv1x1(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj_out(gelu_gate(self.dw(self.proj_in(x))))


class RestormerBlock(nn.Module):
    """Pre-norm transformer block: ``x + MDTA(LN(x))`` then ``x + GDFN(LN(x))``.

    Shape:
        - Input: :math:`(B, C, H, W)`; Output: :math:`(B, C, H, W)`
    """

    def __init__(self, dim: int, heads: int, expansion: float) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = TransposedAttention(dim, heads)
        self.norm2 = ChannelLayerNorm(dim)
        self.ffn = GatedFeedForward(dim, expansion)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))
