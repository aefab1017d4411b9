"""Training data: layouts, stem matching, problem reports, luma, crops, split, batch plans."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from refusion.errors import UserError
from refusion.train.data import (
    StepBatches,
    batch_plan,
    check_and_load,
    crop_patch,
    discover_pairs,
    split_meta,
)


def _write(folder, name, img):
    folder.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(folder / name), img)


@pytest.mark.parametrize("a,b", [("ir", "vi"), ("CT", "MRI"), ("SPECT", "MRI"), ("A", "B"),
                                 ("under", "over"), ("Infrared", "Visible")])
def test_layouts_and_stem_matching(tmp_path, a, b):
    img = np.full((20, 30), 100, np.uint8)
    for stem in ("x1", "x2"):
        _write(tmp_path / a, f"{stem}.png", img)
        _write(tmp_path / b, f"{stem}.jpg", img)  # same stem, other format
    _write(tmp_path / a, "lonely.png", img)
    scan = discover_pairs(tmp_path)
    assert [p.name for p in scan.pairs] == ["x1", "x2"]
    assert len(scan.problems) == 1 and "lonely" in scan.problems[0]


def test_one_level_down_and_explicit_folders(tmp_path):
    img = np.zeros((8, 8), np.uint8)
    _write(tmp_path / "TNO" / "ir", "p.png", img)
    _write(tmp_path / "TNO" / "vi", "p.png", img)
    _write(tmp_path / "MSRS" / "ir", "q.png", img)
    _write(tmp_path / "MSRS" / "vi", "q.png", img)
    assert [p.name for p in discover_pairs(tmp_path).pairs] == ["MSRS/q", "TNO/p"]
    scan = discover_pairs(a=tmp_path / "TNO" / "ir", b=tmp_path / "TNO" / "vi")
    assert [p.name for p in scan.pairs] == ["p"]


def test_ambiguous_or_missing_layouts_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        discover_pairs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no paired folders"):
        discover_pairs(tmp_path / "empty")
    for d in ("CT", "PET", "MRI"):
        (tmp_path / "m" / d).mkdir(parents=True)
    with pytest.raises(UserError, match="several source pairs"):
        discover_pairs(tmp_path / "m")
    for d in ("A", "B"):  # the layout is there, with nothing in it: the folders are named
        (tmp_path / "e" / d).mkdir(parents=True)
    scan = discover_pairs(tmp_path / "e")
    with pytest.raises(UserError) as exc:
        check_and_load(scan, "skip")
    assert str(exc.value) == (f"no usable training pairs in {tmp_path / 'e' / 'A'} and "
                              f"{tmp_path / 'e' / 'B'}")


def test_bad_pairs_are_reported_by_name(tmp_path, capsys):
    _write(tmp_path / "A", "good.png", np.zeros((10, 10), np.uint8))
    _write(tmp_path / "B", "good.png", np.zeros((10, 10), np.uint8))
    _write(tmp_path / "A", "sizes.png", np.zeros((10, 10), np.uint8))
    _write(tmp_path / "B", "sizes.png", np.zeros((12, 10), np.uint8))
    _write(tmp_path / "A", "broken.png", np.zeros((10, 10), np.uint8))
    (tmp_path / "B" / "broken.png").write_bytes(b"not an image")
    scan = discover_pairs(tmp_path)
    good = check_and_load(scan, "skip")
    assert [p.name for p in good] == ["good"]
    err = capsys.readouterr().err
    assert "sizes: size mismatch" in err and "broken" in err
    # the two files share a name: the message tells them apart by folder
    a, b = tmp_path / "A" / "sizes.png", tmp_path / "B" / "sizes.png"
    assert f"{a} is 10x10, {b} is 10x12" in err
    with pytest.raises(UserError, match="(?s)2 problem.*broken.*sizes"):
        check_and_load(discover_pairs(tmp_path), "fail")


def test_luma_8_16_bit_and_colour(tmp_path):
    grey8 = np.full((6, 6), 128, np.uint8)
    grey16 = np.full((6, 6), 128 * 257, np.uint16)
    colour = np.zeros((6, 6, 3), np.uint8)
    colour[..., 2] = 255  # pure red (BGR)
    _write(tmp_path / "A", "g.png", grey8)
    _write(tmp_path / "B", "g.png", grey16)
    _write(tmp_path / "A", "c.png", colour)
    _write(tmp_path / "B", "c.png", grey8)
    pairs = {p.name: p for p in check_and_load(discover_pairs(tmp_path), "fail")}
    np.testing.assert_allclose(pairs["g"].a, pairs["g"].b, atol=1e-6)
    np.testing.assert_allclose(pairs["c"].a, 0.299, atol=2e-3)  # OpenCV YCrCb luma of red
    assert pairs["g"].a.dtype == np.float32


def test_crops_of_small_and_large_images():
    small = np.arange(15, dtype=np.float32).reshape(3, 5)
    out = crop_patch(small, 16, 0.5, 0.5)
    assert out.shape == (16, 16) and set(np.unique(out)) <= set(small.ravel())
    big = np.arange(100, dtype=np.float32).reshape(10, 10)
    np.testing.assert_array_equal(crop_patch(big, 4, 0.0, 0.999), big[:4, 6:])


def test_split_is_seeded_and_disjoint():
    tr, te = split_meta(10, 0.3, seed=3)
    assert len(te) == 3 and not set(tr) & set(te) and sorted(tr + te) == list(range(10))
    assert split_meta(10, 0.3, seed=3) == (tr, te)
    assert split_meta(10, 0.3, seed=4) != (tr, te)
    assert split_meta(1, 0.3, 0) == ([0], [0])


def test_batches_are_deterministic_and_sharded():
    rng = np.random.default_rng(0)
    from refusion.train.data import LoadedPair

    pairs = [LoadedPair(str(i), rng.random((20, 24), dtype=np.float32),
                        rng.random((20, 24), dtype=np.float32)) for i in range(5)]
    plan = batch_plan([0, 1, 2], 4, 1, 2, 7)
    np.testing.assert_array_equal(plan, batch_plan([0, 1, 2], 4, 1, 2, 7))
    assert not np.array_equal(plan, batch_plan([0, 1, 2], 4, 1, 2, 8))

    def ds(batch, world, rank):
        return StepBatches(pairs, [0, 1, 2], [3, 4], lambda s: s % 2 == 0, batch=batch, patch=8,
                           flips=True, seed=0, total=10, world=world, rank=rank)

    for step in (0, 1):
        whole = ds(4, 1, 0)[step]
        halves = [ds(2, 2, r)[step] for r in (0, 1)]
        for key in whole:
            for src in ("a", "b"):
                joined = np.concatenate([getattr(h[key], src).numpy() for h in halves])
                np.testing.assert_array_equal(getattr(whole[key], src).numpy(), joined)
    assert set(ds(4, 1, 0)[0]) == {"train", "test"} and set(ds(4, 1, 0)[1]) == {"fusion"}
    assert ds(4, 1, 0)[1]["fusion"].a.shape == (4, 1, 8, 8)
