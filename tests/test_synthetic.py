"""The generated multi-exposure pairs behave like a real bracket: each source loses what the
other keeps (the demo's multi-exposure task depends on it)."""

from __future__ import annotations

import numpy as np

from refusion.train.synthetic import exposure, make_pairs, photo


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(x.ravel(), y.ravel())[0, 1])


def test_multiexposure_pairs_lose_complementary_detail():
    img = photo("coins", 128)
    (p,) = make_pairs("meif", ["coins"], 1, seed=0, side=128)
    assert p.a.dtype == np.float32 and p.a.shape == img.shape == p.b.shape
    np.testing.assert_array_equal(p.reference, img)
    for x in (p.a, p.b):  # 8-bit values, as written to disk
        np.testing.assert_array_equal(np.round(x * 255), x * np.float32(255))
    assert p.a.mean() < img.mean() < p.b.mean()
    dark, bright = img < np.quantile(img, 0.2), img > np.quantile(img, 0.8)
    # Shadows: the under-exposed shot is mostly noise and quantisation, the over-exposed one
    # follows the photo.
    assert _corr(p.b[dark], img[dark]) > 0.85 > 0.6 > _corr(p.a[dark], img[dark])
    # Highlights: the over-exposed shot clips, the under-exposed one keeps the detail.
    assert (p.b[bright] == 1.0).mean() > 0.9 and (p.a[bright] < 1.0).all()
    assert _corr(p.a[bright], img[bright]) > 0.8
    # The mask (1 where a is better exposed) covers the highlights and not the shadows.
    assert p.mask[bright].mean() > 0.9 and p.mask[dark].mean() < 0.1


def test_multiexposure_pairs_are_seeded():
    one = make_pairs("meif", ["coins"], 2, seed=3, side=64)
    two = make_pairs("meif", ["coins"], 2, seed=3, side=64)
    other = make_pairs("meif", ["coins"], 2, seed=4, side=64)
    for p, q in zip(one, two):
        np.testing.assert_array_equal(p.a, q.a)
        np.testing.assert_array_equal(p.b, q.b)
    assert not np.array_equal(one[0].a, one[1].a)  # a new draw per pair
    assert not np.array_equal(one[0].a, other[0].a)


def test_exposure_adds_noise_and_clips_at_full_well():
    rng = np.random.default_rng(0)
    flat = np.full((64, 64), 0.01)
    shot = exposure(flat, 0.0, rng)
    assert shot.std() > 0  # noise
    assert abs(float((shot.astype(np.float64) ** 2.2).mean()) - 0.01) < 2e-3
    assert (exposure(flat, 8.0, rng) == 1.0).all()  # 2.56 x full well clips
