"""The decision-map analysis of the result pages: the learnt loss is an L1 loss, so wherever
W_a and V_a are both below 1/2 the source I_b minimises it exactly, among all images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refusion.losses import fusion_loss
from refusion.models.proposal import LossWeights
from refusion.repro.decision import (
    MinimiserCheck,
    copy_minimiser,
    minimiser_check,
    sigmoid_slope,
)
from refusion.train.synthetic import photo


def _pair():
    return tuple(torch.from_numpy(photo(n, 64)[:64, :64].copy())[None, None].float()
                 for n in ("camera", "coins"))


def _maps(lo: float, hi: float, seed: int, shape=(1, 1, 64, 64)) -> LossWeights:
    g = torch.Generator().manual_seed(seed)
    w, v = (lo + (hi - lo) * torch.rand(shape, generator=g) for _ in range(2))
    return LossWeights(w, 1 - w, v, 1 - v)


def _loss(f, a, b, weights) -> float:
    return float(fusion_loss(f, a, b, weights).total)


def _descend(a, b, weights, steps: int = 300) -> torch.Tensor:
    """A fused image found by Adam on the loss itself, from the average."""
    f = ((a + b) / 2).clone().requires_grad_(True)
    opt = torch.optim.Adam([f], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        fusion_loss(f, a, b, weights).total.backward()
        opt.step()
    return f.detach()


def test_weights_below_a_half_make_i_b_the_exact_minimiser():
    a, b = _pair()
    weights = _maps(0.05, 0.49, 0)  # spatially varying, all below 1/2
    best = _loss(b, a, b, weights)
    g = torch.Generator().manual_seed(1)
    rivals = [a, (a + b) / 2, 0.3 * a + 0.7 * b, torch.rand(a.shape, generator=g),
              b + 0.01 * torch.randn(a.shape, generator=g), _descend(a, b, weights)]
    for f in rivals:
        assert _loss(f, a, b, weights) >= best - 1e-6
    # and the other way round: above 1/2, I_a
    up = _maps(0.51, 0.95, 2)
    assert all(_loss(f, a, b, up) >= _loss(a, a, b, up) - 1e-6 for f in rivals[1:])


def test_terms_that_disagree_leave_a_better_image_than_either_copy():
    # W favours I_b, V favours I_a: the loss asks for b's intensities with a's edges
    a, b = _pair()
    w = torch.full_like(a, 0.3)
    weights = LossWeights(w, 1 - w, 1 - w, w)
    found = _loss(_descend(a, b, weights), a, b, weights)
    assert found < min(_loss(a, a, b, weights), _loss(b, a, b, weights)) - 1e-3
    assert (copy_minimiser(w[0, 0].numpy(), (1 - w)[0, 0].numpy()) == 0).all()


def test_intensity_term_is_linear_in_a_blend_of_the_sources():
    a, b = _pair()
    weights = _maps(0.0, 1.0, 3)
    ds = np.linspace(0, 1, 11)
    loss = np.array([float(fusion_loss(d * a + (1 - d) * b, a, b, weights).intensity)
                     for d in ds])
    np.testing.assert_allclose(loss, loss[0] + ds * (loss[-1] - loss[0]), rtol=1e-5)


def test_copy_minimiser_labels():
    w = np.array([[0.2, 0.8, 0.2, 0.5]])
    v = np.array([[0.3, 0.9, 0.7, 0.1]])
    np.testing.assert_array_equal(copy_minimiser(w, v), [[-1, 1, 0, 0]])
    with pytest.raises(ValueError, match="differ in shape"):
        copy_minimiser(w, v[:, :2])


def test_check_summary_and_sentence():
    low, mixed = np.full((8, 8), 0.45), np.full((8, 8), 0.45)
    mixed[:, :2] = 0.7
    check = minimiser_check([("p1", low, low), ("p2", mixed, mixed)])
    assert check.per_pair["p1"] == pytest.approx((1.0, 0.0, 0.45, 0.45))
    assert check.per_pair["p2"] == pytest.approx((0.75, 0.25, 0.5125, 0.5125))
    text = check.sentence({"I_a": 0, "I_b": 1})
    assert "on 1 of 2 pairs I_b is the exact minimiser" in text
    assert "minimising its loss, not failing to train" in text
    text = check.sentence({"I_a": 0, "I_b": 2})
    assert "copied a source on 2 pairs, 1 of them pairs where the loss asks for the other" in text
    assert "For comparison" not in text
    text = check.sentence(reference=minimiser_check([("p1", mixed, mixed)]))
    assert "I_b minimises both terms on 75.0 % of the pixels, I_a on 25.0 %, and on 0.0 %" in text
    none = MinimiserCheck({"p": (0.2, 0.1, 0.5, 0.5)})
    assert "exact minimiser" not in none.sentence() and "sigmoid" not in none.sentence()
    hard = np.zeros((8, 8))
    hard[0, 0] = 0.5
    assert sigmoid_slope(np.full((8, 8), 0.5)) == pytest.approx(1.0)
    assert sigmoid_slope(hard) == pytest.approx(1 / 64)
    sat = minimiser_check([("p1", low, low, hard)])
    assert sat.slope == {"p1": pytest.approx(1 / 64)}
    assert "the map is saturated" in sat.sentence()
    soft = minimiser_check([("p1", low, low, np.full((8, 8), 0.4))])
    assert "saturated" not in soft.sentence() and "0.96 of its value" in soft.sentence()
    with pytest.raises(ValueError, match="no pairs"):
        minimiser_check([])
