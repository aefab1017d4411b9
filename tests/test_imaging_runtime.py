"""The shared pre/post-processing: colour paths, 16-bit mapping, temporal smoothing."""

from __future__ import annotations

import numpy as np
import pytest
from refusion.engine.preprocess import FramePreprocessor, stack_inputs

from refusion.errors import UserError
from refusion.imaging import RangeTracker, panel, prepare_pair, robust_bounds, to_display255


def test_16bit_uses_robust_percentiles_not_truncation():
    rng = np.random.default_rng(0)
    img = (20000 + rng.integers(0, 2000, (64, 64))).astype(np.uint16)
    img[0, 0] = 65535  # a hot pixel must not set the scale
    p = prepare_pair(img, img)
    assert p.a.min() >= 0.0 and p.a.max() <= 1.0
    assert p.a.std() > 0.2  # the 2000 used levels spread over the whole range
    lo, hi = robust_bounds(img)
    assert 20000 <= lo < hi < 22100
    # truncating to the low byte would scramble the order; percentile mapping keeps it
    order = np.argsort(img.ravel()[1:200])
    assert np.all(np.diff(p.a.ravel()[1:200][order]) >= 0)


def test_range_tracker_smooths_bounds():
    t = RangeTracker(smoothing=0.8)
    dark = np.full((8, 8), 1000, np.uint16)
    dark[0] = 2000
    t(dark)
    b0 = t.bounds
    bright = dark + 10000
    t(bright)
    assert b0[0] < t.bounds[0] < 11000  # moved towards the new scene, not jumped
    y = t(bright)
    assert y.dtype == np.float32 and y.min() >= 0 and y.max() <= 255
    with pytest.raises(Exception, match="percentiles"):
        RangeTracker(60, 40)


def test_colour_paths_grey_colour_and_both(photo_pair):
    ir, vis = photo_pair
    assert prepare_pair(ir, ir).chroma is None  # grey + grey -> grey
    pc = prepare_pair(ir, vis)
    assert pc.chroma is not None and pc.chroma.shape == (*ir.shape, 2)  # colour from vis
    both = prepare_pair(vis, vis)
    # the authors' epsilon in the weights pulls near-neutral chroma (|C - 0.5| ~ 1e-4) a bit
    np.testing.assert_allclose(both.chroma, pc.chroma, atol=0.51)
    three_equal = np.repeat(ir[..., None], 3, axis=2)
    assert prepare_pair(three_equal, ir).chroma is None  # equal channels count as grey
    # a grey camera through a lossy codec: channels a few levels apart (M3SVD: up to 3)
    noisy = three_equal.astype(np.int16) + np.array([0, 3, -1], np.int16)
    noisy = np.clip(noisy, 0, 255).astype(np.uint8)
    assert prepare_pair(noisy, ir).chroma is None
    tinted = three_equal.copy()
    tinted[..., 2] = np.clip(tinted[..., 2].astype(int) + 12, 0, 255)  # a real colour cast
    assert prepare_pair(tinted, ir).chroma is not None
    pre = FramePreprocessor(gray=True)
    pair = pre.pre(ir, vis)
    assert pair.chroma is None and pre.post(pair.a, pair).ndim == 2
    batch = stack_inputs([pc, pc])
    assert batch.shape == (2, 2, *ir.shape) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[1, 1], pc.b)


def test_colour_output_round_trip(photo_pair):
    _, vis = photo_pair
    pre = FramePreprocessor()
    pair = pre.pre(vis, vis)
    out = pre.post(pair.b, pair)  # fusing the luma with itself gives the image back
    assert out.shape == vis.shape
    assert np.abs(out.astype(int) - vis.astype(int)).max() <= 2


def test_16bit_colour_and_panel():
    img16 = (np.arange(3 * 16 * 16).reshape(16, 16, 3) * 50).astype(np.uint16)
    f = to_display255(img16)
    assert f.dtype == np.float32 and f.max() == pytest.approx(255.0)
    pn = panel(img16, np.zeros((8, 8), np.uint8), np.zeros((16, 20, 3), np.uint8))
    assert pn.shape == (16, 16 + 16 + 20, 3) and pn.dtype == np.uint8


def test_image_extensions_are_checked_before_writing(tmp_path):
    from refusion.errors import UserError
    from refusion.imaging import check_image_ext, write_image

    assert check_image_ext("PNG", "--ext") == ".png"
    assert check_image_ext(".tif", "--ext") == ".tif"
    for bad in (".jpgx", ".", "txt"):
        with pytest.raises(UserError, match="--ext: cannot write images as"):
            check_image_ext(bad, "--ext")
    with pytest.raises(UserError, match="o.jpgx"):
        write_image(tmp_path / "o.jpgx", np.zeros((4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []
    assert write_image(tmp_path / "o.PNG", np.zeros((4, 4), np.uint8)).is_file()


def test_float_images_within_0_1_are_scaled_like_8_bit_ones(tmp_path):
    import cv2

    from refusion.imaging import read_image, to_float255
    from refusion.train.data import load_luma

    grey = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    unit = grey.astype(np.float32) / 255.0
    # arrays are taken as given (the video path maps 16-bit frames onto 0..255 first, and a
    # dark frame may then lie within 0..1): only files follow the 0..1 float convention
    assert np.array_equal(to_float255(unit), unit)
    tif = tmp_path / "unit.tif"  # a float TIFF as most tools write one
    assert cv2.imwrite(str(tif), unit)
    png = tmp_path / "grey.png"
    cv2.imwrite(str(png), grey)
    assert np.allclose(read_image(tif), grey, atol=1e-4)
    assert np.allclose(load_luma(tif), load_luma(png), atol=1e-6)  # the trainer reads it whole
    big = tmp_path / "big.tif"  # a float file on 0..255 stays so
    assert cv2.imwrite(str(big), grey.astype(np.float32))
    assert np.array_equal(read_image(big), grey)
    # the metrics read files their own way (toolbox rounding) under the same rule
    from refusion.metrics._io import read_grey

    assert np.array_equal(read_grey(tif), grey) and np.array_equal(read_grey(big), grey)
    colour = tmp_path / "colour.tif"  # a colour float file within 0..1: luma of the 0..255 data
    assert cv2.imwrite(str(colour), np.dstack([unit, unit, unit]))
    assert np.array_equal(read_grey(colour), grey)
    from refusion.metrics._io import to_grey255

    bgra = np.dstack([unit, unit, unit, np.full_like(unit, 255.0)])  # alpha on its own scale
    assert np.array_equal(to_grey255(bgra), grey)
    # a network's output under- and overshoots a little: still 0..1 data, clipped for fusion
    shoot = unit.copy()
    shoot[0, 0], shoot[0, 1] = -0.02, 1.03
    cv2.imwrite(str(tmp_path / "shoot.tif"), shoot)
    got = read_image(tmp_path / "shoot.tif")
    assert got.min() == 0.0 and got.max() == 255.0
    assert np.allclose(got.ravel()[2:], grey.ravel()[2:], atol=1e-4)
    bad = unit.copy()
    bad[3, 3] = np.nan
    cv2.imwrite(str(tmp_path / "nan.tif"), bad)
    with pytest.raises(UserError, match="nan.tif contains NaN or Inf"):
        read_image(tmp_path / "nan.tif")


def test_a_dark_16bit_frame_after_a_bright_scene_stays_dark():
    # the smoothed bounds still hold the bright range, so the dark frame maps to values within
    # 0..1 on the 0..255 scale: they must reach the network as such, not be scaled by 255
    rng = np.random.default_rng(0)
    pre = FramePreprocessor()
    vis = np.full((64, 64), 128, np.uint8)
    for _ in range(3):
        pre.pre(rng.integers(0, 60000, (64, 64)).astype(np.uint16), vis)
    lo, _ = pre.trackers[0].bounds
    dark = (lo + 50 + rng.integers(0, 150, (64, 64))).astype(np.uint16)
    assert pre.pre(dark, vis).a.max() < 0.01
