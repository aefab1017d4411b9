"""Sample-and-hold re-timing of stamped frames onto a constant frame rate."""

from __future__ import annotations

import numpy as np
import pytest
from refusion.engine.retime import ConstantRate


def _timeline(fps: float, stamps: list[float]) -> tuple[list[int], ConstantRate]:
    rt = ConstantRate(fps)
    out: list[int] = []
    for k, t in enumerate(stamps):
        for item, n in rt.push(k, t):
            out += [item] * n
    for item, n in rt.flush():
        out += [item] * n
    return out, rt


def _hold_reference(fps: float, stamps: list[float]) -> list[int]:
    """Output slot j shows the newest frame whose slot is at most j (brute force)."""
    slots, cur = [], 0
    for t in stamps:
        cur = max(cur, round((t - stamps[0]) * fps))
        slots.append(cur)
    return [max(k for k, s in enumerate(slots) if s <= j) for j in range(slots[-1] + 1)]


def test_gaps_are_filled_and_overtaken_frames_merged():
    out, rt = _timeline(10, [0.0, 0.1, 0.42, 0.44, 0.5, 0.9])
    assert out == [0, 1, 1, 1, 3, 4, 4, 4, 4, 5]
    assert (rt.repeated, rt.merged) == (5, 1) and not rt.holding


def test_evenly_stamped_frames_pass_through_once():
    out, rt = _timeline(30, [k / 30 for k in range(50)])
    assert out == list(range(50)) and rt.repeated == rt.merged == 0


def test_stamps_going_back_take_the_current_slot():
    out, rt = _timeline(10, [1.0, 1.2, 1.1, 1.3])  # the third is early: same slot as the second
    assert out == [0, 0, 2, 3] and rt.merged == 1


@pytest.mark.parametrize("seed", range(5))
def test_random_arrivals_match_sample_and_hold_and_last_as_long_as_the_run(seed):
    rng = np.random.default_rng(seed)
    fps = float(rng.choice([9.0, 25.0, 30.0]))
    stamps = list(np.cumsum(rng.exponential(1 / fps, 80)) + 3.0)  # bursts, gaps and jitter
    out, rt = _timeline(fps, stamps)
    assert out == _hold_reference(fps, stamps)
    assert len(out) == round((stamps[-1] - stamps[0]) * fps) + 1  # plays in real time
    assert len(set(out)) == 80 - rt.merged and len(out) == len(set(out)) + rt.repeated


def test_bad_rate_and_empty_stream():
    with pytest.raises(ValueError, match="fps"):
        ConstantRate(0)
    assert ConstantRate(30).flush() == []
