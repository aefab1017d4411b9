"""The measurement behind docs/training.md's 'Why a trained R does not ask for the all-in-focus
image': a trained R reconstructs both multi-focus sources better from a copy of one source than
from the all-in-focus original; R at its initialisation ranks them the other way round."""

from __future__ import annotations

import math

import numpy as np
from conftest import shared_path

from refusion.repro.recon_preference import (
    CANDIDATES,
    focus_selection,
    held_out_loss,
    real_pairs,
    train_and_score,
)
from refusion.train.synthetic import multifocus_pairs

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


def test_focus_selection_recovers_the_all_in_focus_image():
    (p,) = multifocus_pairs(["coins"], 1, seed=0, side=160)
    fused = focus_selection(p.a, p.b)
    err = float(np.abs(fused - p.reference).mean())
    assert err < 0.3 * min(float(np.abs(x - p.reference).mean()) for x in (p.a, p.b))


def test_train_and_score_on_given_triples_is_seeded():
    rng = np.random.default_rng(0)
    triples = [tuple(rng.random((40, 50), dtype=np.float32) for _ in range(3)) for _ in range(3)]
    one = train_and_score(triples, triples[:1], seed=1, steps=5, width=4, patch=40, batch=2)
    two = train_and_score(triples, triples[:1], seed=1, steps=5, width=4, patch=40, batch=2)
    assert one == two and all(math.isfinite(v) for v in one)


def test_real_pairs_are_the_lytro_test_split():
    pairs = real_pairs(shared_path("data"), "test")
    assert len(pairs) == 20
    assert all(a.shape == b.shape and a.dtype == np.float32 for a, b in pairs)
