"""The inference form of F (refusion.export.deploy) computes what F computes."""

from __future__ import annotations

import pytest
import torch
from refusion.export.deploy import (
    DeployBlock,
    DeployFusionNet,
    deploy_view,
    has_deploy_form,
    normalize_channels,
)

from refusion.models import FusionConfig, FusionNet
from refusion.models.restormer import ChannelLayerNorm, RestormerBlock
from refusion.train.ablation import DecisionFusionNet

SMALL = FusionConfig(dim=8, blocks=1, heads=2)


def _trained_like(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial norms, temperatures and weights (fresh ones hide folding mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "temperature" in name:
                p.copy_(torch.rand(p.shape, generator=g) * 3.5 + 0.5)
            elif p.dim() == 1:  # LayerNorm weight / bias
                p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if "weight" in name else 0))
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return net.eval()


def test_normalize_channels_is_layernorm_without_affine():
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64) * 3 + 1
    ln = ChannelLayerNorm(6).double()
    torch.testing.assert_close(normalize_channels(x, ln.eps), ln(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("layer_norm", ["nchw", "op"])
def test_block_matches_in_float64(layer_norm):
    blk = _trained_like(RestormerBlock(8, 2, 2.0)).double()
    dep = DeployBlock(blk, layer_norm).double()
    x = torch.randn(2, 8, 9, 13, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(dep(x), blk(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("layer_norm", ["nchw", "op"])
@pytest.mark.parametrize("cls", [FusionNet, DecisionFusionNet])
@pytest.mark.parametrize("shape", [(1, 2, 33, 47), (2, 2, 1, 5), (1, 2, 64, 64)])
def test_network_matches(cls, layer_norm, shape):
    net = _trained_like(cls(SMALL), seed=shape[2])
    x = torch.rand(shape)
    with torch.no_grad():
        want = net(x)
        got = deploy_view(net, layer_norm)(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)


def test_published_size_matches_float64_as_closely_as_f():
    # The re-parameterisation is exact in real arithmetic; in float32 both forms round, and
    # neither is further from the float64 network than twice the other.
    net = _trained_like(FusionNet(), seed=3)
    ref64 = FusionNet().double().eval()
    ref64.load_state_dict(net.state_dict())
    x = torch.rand(1, 2, 40, 56)
    with torch.no_grad():
        exact = ref64(x.double())
        err_f = (net(x).double() - exact).abs().max().item()
        err_d = (deploy_view(net)(x).double() - exact).abs().max().item()
    assert err_d <= 2 * err_f + 1e-7, (err_d, err_f)


def test_source_model_untouched_and_nothing_shared():
    net = _trained_like(FusionNet(SMALL))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    dep = deploy_view(net)
    assert isinstance(dep, DeployFusionNet) and not dep.training
    src_ptrs = {p.data_ptr() for p in net.parameters()}
    assert all(p.data_ptr() not in src_ptrs for p in dep.parameters())
    assert all(not p.requires_grad for p in dep.parameters())
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_unknown_subclass_has_no_deploy_form():
    class Custom(FusionNet):
        def forward(self, x):
            return super().forward(x) * 0.5

    assert has_deploy_form(FusionNet(SMALL)) and has_deploy_form(DecisionFusionNet(SMALL))
    assert not has_deploy_form(Custom(SMALL))
    with pytest.raises(TypeError, match="Custom"):
        DeployFusionNet(Custom(SMALL))
    with pytest.raises(ValueError, match="layer_norm"):
        DeployFusionNet(FusionNet(SMALL), layer_norm="bad")


def test_trace_falls_back_for_unknown_subclass():
    from refusion.export import census
    from refusion.export import onnx_export as oe

    class Custom(FusionNet):
        pass

    ops = census.op_census(oe.simplify(oe.trace_to_onnx(Custom(SMALL))))
    assert ops["LayerNormalization"] == 2 * 3 * SMALL.blocks  # traced as is
