"""Speed of the fusion metrics on one 640x480 triplet (pytest-benchmark; timing only here).

Run: python -m pytest bench/bench_metrics.py --benchmark-only -p no:cacheprovider
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from refusion import metrics as M


@pytest.fixture(scope="module")
def triplet_640x480():
    from skimage import data

    rng = np.random.default_rng(0)
    vis = cv2.resize(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY), (640, 480))
    vis = vis.astype(np.float64)
    ir = np.clip(np.round(cv2.GaussianBlur(255 - vis, (0, 0), 2.0) + rng.normal(0, 4, vis.shape)),
                 0, 255)
    fused = np.clip(np.round(0.5 * ir + 0.5 * vis + rng.normal(0, 2, vis.shape)), 0, 255)
    return ir, vis, fused


def test_default_suite(benchmark, triplet_640x480):
    vals = benchmark(M.compute_suite, *triplet_640x480)
    assert len(vals) == len(M.METRICS)


@pytest.mark.parametrize("name", ["Q_CB", "FMI", "VIF", "SSIM", "MS_SSIM", "Q_Y", "Qabf", "Nabf"])
def test_single_metric(benchmark, triplet_640x480, name):
    v = benchmark(M.compute, name, *triplet_640x480)
    assert np.isfinite(v)
