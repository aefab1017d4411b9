"""Inference form of the fusion module: the same function, re-parameterised for CPU runtimes.

Training wants few wide layers (one ``3C`` convolution for q, k and v; one channel LayerNorm
with its own affine); an ONNX Runtime CPU graph wants the opposite. Profiling the exported
published network at 480x640 on two cores showed where the time went besides convolutions:

* ``Slice`` (15 %): ``chunk`` of the fused q/k/v and gate tensors is a free view in PyTorch but
  a full copy in ONNX. Splitting each pointwise + depthwise pair into one pair per chunk is
  exact (a 1x1 convolution's output channels are independent, and so are a depthwise
  convolution's), and the slices disappear.
* ``LayerNormalization`` on a channels-last view (20 %) plus the layout reorders around it
  (the ``permute`` forces ONNX Runtime out of its blocked NCHWc convolution layout and back):
  here the LayerNorm is written over the channel axis of the NCHW map (mean, centred variance,
  ``rsqrt``), and its affine ``w * x_hat + b`` is folded into the pointwise convolutions that
  read it (``W diag(w)`` and a bias ``W b``, exact since a 1x1 convolution has no padding).

The module computes what :class:`~refusion.models.fusion.FusionNet` computes, to float32
rounding (the export checks compare it with the eager original). It is built for inference
only (no gradients, nothing shared with the source model): ``refusion-export`` traces it for the
FP32 graph, and the torch backend runs it on CPU (in eager PyTorch it saves the LayerNorm
permutes and affine passes: 1.16 s instead of 1.36 s a frame at 480x640 on two cores).
The FP16 graph keeps ``LayerNormalization`` (``layer_norm="op"``): that op is one FP32 island
in the FP16 conversion, where an NCHW mean/variance would need full-size casts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refusion.models.fusion import AdaptiveFusionModule, FusionNet
from refusion.models.restormer import (
    ChannelLayerNorm,
    GatedFeedForward,
    RestormerBlock,
    TransposedAttention,
    channel_attention,
)
from refusion.ops import gelu_mul

LAYER_NORMS = ("nchw", "op")


def _conv(weight: Tensor, bias: Tensor | None, groups: int = 1) -> nn.Conv2d:
    out_ch, in_per_group, kh, _ = weight.shape
    conv = nn.Conv2d(in_per_group * groups, out_ch, kh, padding=kh // 2, groups=groups,
                     bias=bias is not None, dtype=weight.dtype)
    conv.weight.data.copy_(weight)
    if bias is not None:
        conv.bias.data.copy_(bias)
    return conv.requires_grad_(False)


def split_pointwise(conv: nn.Conv2d, parts: int, norm: ChannelLayerNorm | None) -> list[nn.Conv2d]:
    """``parts`` 1x1 convolutions, one per output chunk of ``conv``; ``norm``'s affine folded in.

    With a norm, ``conv(w * x_hat + b) = (W diag(w)) x_hat + W b`` per chunk.
    """
    w = conv.weight.detach()[:, :, 0, 0]  # (out, in)
    bias = None
    if norm is not None:
        bias = w @ norm.bias.detach()
        w = w * norm.weight.detach()[None, :]
    biases = bias.chunk(parts) if bias is not None else (None,) * parts
    return [_conv(wi[:, :, None, None], bi) for wi, bi in zip(w.chunk(parts), biases)]


def split_depthwise(conv: nn.Conv2d, parts: int) -> list[nn.Conv2d]:
    """``parts`` depthwise convolutions, one per channel chunk of ``conv``."""
    return [_conv(wi, None, groups=wi.shape[0]) for wi in conv.weight.detach().chunk(parts, 0)]


def normalize_channels(x: Tensor, eps: float) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` over the channels of a ``(B, C, H, W)`` map, no affine.

    The variance is the biased variance of the centred map (two passes, as LayerNorm does).
    """
    xc = x - x.mean(dim=1, keepdim=True)
    return xc * torch.rsqrt((xc * xc).mean(dim=1, keepdim=True) + eps)


class NormalizeChannels(nn.Module):
    """:func:`normalize_channels` as a module: a channel LayerNorm whose affine was folded away.

    Shape:
        - Input: :math:`(B, C, H, W)`; Output: same
    """

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return normalize_channels(x, self.eps)


class StaticChannelLayerNorm(nn.Module):
    """:class:`ChannelLayerNorm` with the channel count as a Python int, for tracing.

    The original passes ``(x.shape[1],)`` to ``F.layer_norm``; the tracer records that as a
    tensor and the TorchScript ONNX exporter then refuses the non-constant
    ``normalized_shape``. Weight and bias are frozen copies, so the outputs are bit-identical.

    Shape:
        - Input: :math:`(B, C, H, W)`; Output: same
    """

    def __init__(self, src: ChannelLayerNorm) -> None:
        super().__init__()
        self.weight = nn.Parameter(src.weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(src.bias.detach().clone(), requires_grad=False)
        self.eps = src.eps
        self.channels = int(src.weight.numel())

    def forward(self, x: Tensor) -> Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), (self.channels,), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


def _norm(norm: ChannelLayerNorm, fold: bool) -> nn.Module:
    """The LayerNorm in front of a split branch: affine folded away, or the traceable op."""
    return NormalizeChannels(norm.eps) if fold else StaticChannelLayerNorm(norm)


class _Branches(nn.Module):
    """Pointwise then depthwise convolution, split into one pair per output chunk."""

    def __init__(self, pw: nn.Conv2d, dw: nn.Conv2d, parts: int,
                 norm: ChannelLayerNorm | None) -> None:
        super().__init__()
        self.pw = nn.ModuleList(split_pointwise(pw, parts, norm))
        self.dw = nn.ModuleList(split_depthwise(dw, parts))

    def forward(self, x: Tensor) -> list[Tensor]:
        return [dw(pw(x)) for pw, dw in zip(self.pw, self.dw)]


class DeployBlock(nn.Module):
    """:class:`RestormerBlock` with split q/k/v and gate branches and the norms folded in.

    Shape:
        - Input: :math:`(B, C, H, W)`; Output: :math:`(B, C, H, W)`
    """

    def __init__(self, block: RestormerBlock, layer_norm: str = "nchw") -> None:
        super().__init__()
        attn: TransposedAttention = block.attn
        ffn: GatedFeedForward = block.ffn
        fold = layer_norm == "nchw"
        self.norm1 = _norm(block.norm1, fold)
        self.qkv = _Branches(attn.qkv, attn.qkv_dw, 3, block.norm1 if fold else None)
        self.heads = attn.heads
        self.temperature = nn.Parameter(attn.temperature.detach().clone(), requires_grad=False)
        self.proj = _conv(attn.proj.weight.detach(), None)
        self.norm2 = _norm(block.norm2, fold)
        self.gate = _Branches(ffn.proj_in, ffn.dw, 2, block.norm2 if fold else None)
        self.proj_out = _conv(ffn.proj_out.weight.detach(), None)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(self.norm1(x))
        x = x + self.proj(channel_attention(q, k, v, self.temperature, self.heads))
        a, b = self.gate(self.norm2(x))
        return x + self.proj_out(gelu_mul(a, b))


class DeployAFM(nn.Module):
    """:class:`AdaptiveFusionModule` with split q/k/v and gate branches (no norms inside).

    Shape:
        - Inputs: two :math:`(B, C, H, W)` maps; Output: :math:`(B, 2C, H, W)`
    """

    def __init__(self, afm: AdaptiveFusionModule) -> None:
        super().__init__()
        self.heads = afm.heads
        self.temperature_a = nn.Parameter(afm.temperature_a.detach().clone(), requires_grad=False)
        self.temperature_b = nn.Parameter(afm.temperature_b.detach().clone(), requires_grad=False)
        self.qkv_a = _Branches(afm.qkv_a, afm.qkv_a_dw, 3, None)
        self.qkv_b = _Branches(afm.qkv_b, afm.qkv_b_dw, 3, None)
        self.mid_a = _conv(afm.mid_a.weight.detach(), None)
        self.mid_b = _conv(afm.mid_b.weight.detach(), None)
        self.gate = _Branches(afm.gate, afm.gate_dw, 2, None)
        self.value_a = _Branches(afm.value_a, afm.value_a_dw, 1, None)
        self.value_b = _Branches(afm.value_b, afm.value_b_dw, 1, None)
        self.out_a = _conv(afm.out_a.weight.detach(), None)
        self.out_b = _conv(afm.out_b.weight.detach(), None)

    def forward(self, xa: Tensor, xb: Tensor) -> Tensor:
        qa, ka, va = self.qkv_a(xa)
        qb, kb, vb = self.qkv_b(xb)
        xa = xa + self.mid_a(channel_attention(qb, ka, va, self.temperature_a, self.heads))
        xb = xb + self.mid_b(channel_attention(qa, kb, vb, self.temperature_b, self.heads))
        mixed = torch.cat([xa, xb], dim=1)
        ga, gb = self.gate(mixed)
        ya = gelu_mul(ga, self.value_a(xa)[0])
        yb = gelu_mul(gb, self.value_b(xb)[0])
        return mixed + self.out_a(ya) + self.out_b(yb)


class DeployFusionNet(nn.Module):
    """:class:`FusionNet` in inference form (see the module docstring); same input and output.

    Args:
        model: the trained fusion module (left untouched).
        layer_norm: ``"nchw"`` (normalise over the NCHW channel axis, affine folded into the
            next convolutions; fastest in ONNX Runtime on CPU) or ``"op"`` (keep
            ``F.layer_norm`` on a channels-last view, so export emits ``LayerNormalization``).

    Shape:
        - Input: :math:`(B, 2, H, W)`; Output: :math:`(B, 1, H, W)`
    """

    def __init__(self, model: FusionNet, layer_norm: str = "nchw") -> None:
        super().__init__()
        if layer_norm not in LAYER_NORMS:
            raise ValueError(f"layer_norm must be one of {LAYER_NORMS}, got {layer_norm!r}")
        kind = _kind(model)
        if kind is None:
            raise TypeError(f"no inference form for {type(model).__name__}")
        src = model  # every layer below copies its weights out of it
        self.config = src.config
        self.layer_norm = layer_norm
        # Decision-map networks (the Table 4 ablation) blend the sources with F's output.
        self.decision = kind == "decision"
        self.stem_a = _conv(src.stem_a.weight.detach(), None)
        self.stem_b = _conv(src.stem_b.weight.detach(), None)
        self.encoder_a = nn.ModuleList(DeployBlock(b, layer_norm) for b in src.encoder_a)
        self.encoder_b = nn.ModuleList(DeployBlock(b, layer_norm) for b in src.encoder_b)
        self.afm = DeployAFM(src.afm)
        self.decoder = nn.ModuleList(DeployBlock(b, layer_norm) for b in src.decoder)
        self.head_conv1 = _conv(src.head_conv1.weight.detach(), None)
        self.head_conv2 = _conv(src.head_conv2.weight.detach(), None)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        # Same layer names and call signatures as FusionNet, so its forward runs these layers.
        w = FusionNet.forward(self, x)  # type: ignore[arg-type]
        return w * x[:, :1] + (1.0 - w) * x[:, 1:] if self.decision else w


def _kind(model: nn.Module) -> str | None:
    """``fusion`` or ``decision`` for the classes with an inference form, else ``None``."""
    if type(model) is FusionNet:
        return "fusion"
    from refusion.train.ablation import DecisionFusionNet

    return "decision" if type(model) is DecisionFusionNet else None


def has_deploy_form(model: nn.Module) -> bool:
    """Whether :func:`deploy_view` knows ``model``'s class (subclasses may change forward)."""
    return _kind(model) is not None


def deploy_view(model: FusionNet, layer_norm: str = "nchw") -> DeployFusionNet:
    """The inference form of ``model`` (float32, CPU, eval); ``model`` itself is not changed."""
    import copy

    src = copy.deepcopy(model).to("cpu", torch.float32).eval()
    return DeployFusionNet(src, layer_norm)
