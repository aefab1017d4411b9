"""The focus check of the multi-focus result page: the focus estimate and the V_a agreement."""

from __future__ import annotations

import numpy as np
import pytest

from refusion.repro.focus import FocusAgreement, focus_map, v_focus_agreement
from refusion.train.synthetic import multifocus_pairs


@pytest.fixture(scope="module")
def pairs():
    return multifocus_pairs(["coins", "astronaut"], 2, 3, side=128, sigma=(3.0, 4.0))


def test_focus_map_finds_the_sharp_source(pairs):
    for p in pairs:
        f = focus_map(p.a, p.b)
        decided = f != 0
        assert decided.mean() > 0.3, p.name
        truth = np.where(p.mask > 0.5, 1, -1)
        # away from region borders (the energy window straddles them) the estimate is right
        assert (f[decided] == truth[decided]).mean() > 0.9, p.name
        # swapping the sources swaps the answer
        np.testing.assert_array_equal(focus_map(p.b, p.a), -f)


def test_focus_map_leaves_flat_and_equal_regions_undecided():
    flat = np.full((32, 32), 0.5, np.float32)
    assert (focus_map(flat, flat) == 0).all()
    rng = np.random.default_rng(0)
    tex = rng.random((32, 32)).astype(np.float32)
    assert (focus_map(tex, tex) == 0).all()
    with pytest.raises(ValueError, match="one size"):
        focus_map(tex, tex[:-1])


def test_agreement_scores_a_focus_following_v_high_and_a_constant_v_neutral(pairs):
    ideal = v_focus_agreement((p.name, p.mask, p.a, p.b) for p in pairs)
    assert ideal.in_a > 0.9 and ideal.in_b < 0.1 and (ideal.gaps > 0.8).all()
    assert "follows focus, as in the paper" in ideal.sentence()
    reversed_v = v_focus_agreement((p.name, 1 - p.mask, p.a, p.b) for p in pairs)
    assert (reversed_v.gaps < -0.8).all() and "opposite" in reversed_v.sentence()
    flat = v_focus_agreement((p.name, np.full_like(p.a, 0.48), p.a, p.b) for p in pairs)
    assert flat.in_a == pytest.approx(0.48) and flat.in_b == pytest.approx(0.48)
    assert "global weighting" in flat.sentence()
    assert "some pairs" in FocusAgreement({"x": (0.6, 0.4), "y": (0.4, 0.5)}).sentence()


def test_agreement_needs_a_pair_with_both_regions():
    tex = np.random.default_rng(1).random((32, 32)).astype(np.float32)
    with pytest.raises(ValueError, match="no pair"):
        v_focus_agreement([("same", np.zeros_like(tex), tex, tex)])
