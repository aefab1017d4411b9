"""The three networks: published architecture, shape contracts, P's constraints."""

from __future__ import annotations

import pytest
import torch

from refusion.models import (
    FusionConfig,
    FusionNet,
    ProposalNet,
    ReconstructionNet,
    count_parameters,
    macs_per_pixel,
)
from refusion.models.restormer import l2_normalize_tokens


def test_fusion_published_size():
    net = FusionNet()
    assert count_parameters(net) == 59_856
    assert macs_per_pixel(net) == 60_176
    # measured independently: torch's FLOP counter on a real forward (2 FLOPs per multiply-add;
    # convolutions and the attention's batched products; the softmax is not counted)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net.eval()(torch.rand(1, 2, 16, 24))
    assert counter.get_total_flops() == 2 * 60_176 * 16 * 24
    assert not any(isinstance(m, torch.nn.Conv2d) and m.bias is not None for m in net.modules())


@pytest.mark.parametrize("hw", [(1, 1), (7, 13), (33, 20)])
def test_fusion_any_size_no_padding(hw):
    net = FusionNet(FusionConfig(dim=8, blocks=1, heads=2)).eval()
    y = net(torch.rand(2, 2, *hw))
    assert y.shape == (2, 1, *hw)
    assert torch.all((y > 0) & (y < 1))


def test_fusion_config_changes_width():
    small = FusionNet(FusionConfig(dim=8, blocks=1, heads=4))
    assert count_parameters(small) < count_parameters(FusionNet()) / 3


def test_fusion_rejects_wrong_channels():
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        FusionNet()(torch.rand(1, 3, 8, 8))


def test_l2_normalize_matches_reference():
    x = torch.randn(2, 4, 3, 50, dtype=torch.float64)
    torch.testing.assert_close(l2_normalize_tokens(x), torch.nn.functional.normalize(x, dim=-1))


def test_l2_normalize_fp16_no_overflow_at_4k():
    # 3840x2160 tokens of magnitude ~2: the FP16 sum of squares would be ~3e7 > 65504.
    x = (torch.rand(1, 1, 2, 3840 * 2160) * 2 + 1).half()
    y = l2_normalize_tokens(x)
    assert torch.isfinite(y).all()
    ref = torch.nn.functional.normalize(x.double(), dim=-1)
    assert (y.double() - ref).abs().max() < 1e-5
    naive = x / x.pow(2).sum(-1, keepdim=True).sqrt()  # what the authors' form computes in FP16
    assert not torch.isfinite(naive.pow(2).sum(-1)).all() or naive.abs().max() == 0


def test_proposal_weights_sum_to_one():
    p = ProposalNet()
    for prm in p.parameters():  # leave the zero-initialised head: random weights everywhere
        torch.nn.init.normal_(prm, std=0.5)
    a, b = torch.rand(2, 1, 24, 31), torch.rand(2, 1, 24, 31)
    w = p(a, b)
    for m in w:
        assert m.shape == a.shape
    torch.testing.assert_close(w.w_a + w.w_b, torch.ones_like(a))
    torch.testing.assert_close(w.v_a + w.v_b, torch.ones_like(a))
    assert w.w_a.std() > 1e-3  # the maps really vary per pixel


def test_proposal_starts_at_fixed_loss():
    w = ProposalNet()(torch.rand(1, 1, 9, 9), torch.rand(1, 1, 9, 9))
    torch.testing.assert_close(w.w_a, torch.full_like(w.w_a, 0.5))
    torch.testing.assert_close(w.v_a, torch.full_like(w.v_a, 0.5))


def test_reconstruction_two_branches():
    ra, rb = ReconstructionNet()(torch.rand(3, 1, 17, 19))
    assert ra.shape == rb.shape == (3, 1, 17, 19)
    assert not torch.equal(ra, rb)
