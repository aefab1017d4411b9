"""Eqs. (1)-(6) on hand-built tensors, and gradients reaching P through L_f."""

from __future__ import annotations

import pytest
import torch

from refusion.losses import fusion_loss, reconstruction_loss
from refusion.models import LossWeights, ProposalNet, fixed_weights
from refusion.ops import sobel_grad


def _const(v: float, shape=(1, 1, 4, 5)) -> torch.Tensor:
    return torch.full(shape, v)


def test_identical_sources_give_zero_loss():
    x = torch.rand(2, 1, 8, 9)
    w = ProposalNet()(x, x)
    assert fusion_loss(x, x, x, w).total.item() == 0.0
    assert reconstruction_loss(x, x, x, x).total.item() == 0.0


def test_fusion_loss_known_weights_constant_images():
    # Constant images have zero Sobel gradient, so only the intensity term remains:
    # W_a |f - a| + W_b |f - b| = 0.25 * 0.5 + 0.75 * 0.3 = 0.35 at every pixel.
    f, a, b = _const(0.5), _const(0.0), _const(0.8)
    w = LossWeights(_const(0.25), _const(0.75), _const(0.1), _const(0.9))
    terms = fusion_loss(f, a, b, w, alpha1=3.0)
    assert terms.gradient.item() == pytest.approx(0.0, abs=1e-6)  # float32 rounding only
    assert terms.intensity.item() == pytest.approx(0.35, abs=1e-7)
    assert terms.total.item() == pytest.approx(0.35, abs=1e-5)


def test_fusion_loss_gradient_term_by_hand():
    # A horizontal ramp a(x) = x/10 has Sx = 8/10 inside and 4/10 on the replicated columns.
    a = (torch.arange(6.0) / 10).expand(1, 1, 3, 6).contiguous()
    b = torch.zeros_like(a)
    f = torch.zeros_like(a)
    g = sobel_grad(a)
    assert g[0, 0, 1, 1].item() == pytest.approx(0.8)
    assert g[0, 0, 1, 0].item() == pytest.approx(0.4)
    w = LossWeights(_const(0.0, a.shape), _const(1.0, a.shape), _const(1.0, a.shape),
                    _const(0.0, a.shape))
    terms = fusion_loss(f, a, b, w, alpha1=2.0)
    expected_grad = (0.4 * 2 + 0.8 * 4) / 6  # per row: two border columns, four inner ones
    assert terms.intensity.item() == 0.0
    assert terms.gradient.item() == pytest.approx(expected_grad, rel=1e-6)
    assert terms.total.item() == pytest.approx(2 * expected_grad, rel=1e-6)


def test_fixed_weights_equal_half_sum():
    f, a, b = torch.rand(3, 2, 1, 7, 7).unbind(0)
    terms = fusion_loss(f, a, b, fixed_weights(a))
    ref = 0.5 * ((f - a).abs() + (f - b).abs()).mean()
    torch.testing.assert_close(terms.intensity, ref)


def test_reconstruction_loss_by_hand():
    a, b = _const(0.2), _const(0.6)
    terms = reconstruction_loss(_const(0.5), _const(0.5), a, b, alpha2=5.0)
    assert terms.intensity.item() == pytest.approx(0.3 + 0.1, abs=1e-7)
    assert terms.gradient.item() == pytest.approx(0.0, abs=1e-6)


def test_gradients_reach_p_through_fusion_loss():
    torch.manual_seed(1)
    p = ProposalNet()
    a, b = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    f = torch.rand(2, 1, 16, 16)
    fusion_loss(f, a, b, p(a, b)).total.backward()
    assert p.head.weight.grad is not None and p.head.weight.grad.abs().sum() > 0


def test_shape_mismatch_rejected():
    with pytest.raises(ValueError, match="mismatch"):
        reconstruction_loss(_const(0.1), _const(0.1), _const(0.1), _const(0.1, (1, 1, 4, 4)))
