"""The measurement behind docs/training.md's 'Why a trained R does not ask for the all-in-focus
image': a trained R reconstructs both multi-focus sources better from a copy of one source than
from the all-in-focus original; R at its initialisation ranks them the other way round."""

from __future__ import annotations

import math

from refusion.repro.recon_preference import CANDIDATES, held_out_loss

SMALL = {"width": 8, "side": 96, "photos": 4}


def test_untrained_r_prefers_the_all_in_focus_image():
    losses = {n: held_out_loss(make, seed=0, steps=0, **SMALL) for n, make in CANDIDATES.items()}
    for total, intensity, gradient in losses.values():
        assert math.isclose(total, intensity + gradient, rel_tol=1e-6)
    assert min(losses, key=lambda n: losses[n][0]) == "all-in-focus original"


def test_trained_r_prefers_a_copy_of_one_source():
    copy = held_out_loss(CANDIDATES["source a"], seed=0, steps=300, **SMALL)
    sharp = held_out_loss(CANDIDATES["all-in-focus original"], seed=0, steps=300, **SMALL)
    untrained = held_out_loss(CANDIDATES["source a"], seed=0, steps=0, **SMALL)
    assert copy[0] < untrained[0] / 2  # R did learn
    assert copy[0] < sharp[0] - 0.01
