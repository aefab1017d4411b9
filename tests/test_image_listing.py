"""One listing of image folders for fusion, training and evaluation: stems, hidden files,
duplicates and broken links (named as such, never as a missing partner)."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from refusion.errors import UserError
from refusion.imaging import list_image_folder


def _img(path, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((16, 16), value, np.uint8))
    return path


@pytest.fixture
def pairs(tmp_path):
    """ir/vi with a pair ``ok``, a pair ``x`` whose visible image is a broken link, a hidden
    macOS fork and a non-image file."""
    for side in ("ir", "vi"):
        _img(tmp_path / side / "ok.png")
    _img(tmp_path / "ir" / "x.png")
    os.symlink(tmp_path / "gone" / "x.png", tmp_path / "vi" / "x.png")
    (tmp_path / "vi" / "._ok.png").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble fork
    (tmp_path / "vi" / "notes.txt").write_text("not an image")
    return tmp_path


def test_listing(pairs, tmp_path):
    vi = list_image_folder(pairs / "vi")
    assert set(vi.images) == {"ok"} and set(vi.broken) == {"x"} and vi.duplicates == []
    assert vi.broken_text("x") == (f"{pairs / 'vi' / 'x.png'}: broken link to "
                                   f"{pairs / 'gone' / 'x.png'} (no such file)")
    ir = list_image_folder(pairs / "ir")
    assert ir.unpaired(vi) == []  # x's partner is broken, not missing
    _img(pairs / "ir" / "y.png")
    assert list_image_folder(pairs / "ir").unpaired(vi) == [
        f"{pairs / 'ir' / 'y.png'} has no partner in {pairs / 'vi'}"]
    # a real file of the same stem serves; the first of a duplicate stem is kept
    _img(pairs / "vi" / "x.bmp")
    _img(pairs / "vi" / "ok.tif")
    vi = list_image_folder(pairs / "vi")
    assert vi.images["x"].name == "x.bmp" and vi.broken == {}
    assert [(k.name, o.name) for k, o in vi.duplicates] == [("ok.png", "ok.tif")]
    with pytest.raises(UserError, match="no such folder: .*nowhere"):
        list_image_folder(tmp_path / "nowhere")


def test_fuse_names_the_broken_link(pairs):
    from refusion.engine.files import match_pairs

    found, unmatched = match_pairs(pairs / "ir", pairs / "vi")
    assert [p.stem for p in found] == ["ok"]
    assert unmatched == ["ir/x.png (its partner vi/x.png is a broken link)"]
    os.remove(pairs / "ir" / "ok.png")
    os.remove(pairs / "vi" / "ok.png")
    with pytest.raises(UserError, match=r"no image names in common .*; 1 broken links, e\.g\. "
                                        r"ir/x.png \(its partner vi/x.png is a broken link\)"):
        match_pairs(pairs / "ir", pairs / "vi")


def test_training_names_the_broken_link(pairs):
    from refusion.train.data import discover_pairs

    scan = discover_pairs(pairs)
    assert [p.name for p in scan.pairs] == ["ok"]
    assert scan.problems == [f"{pairs / 'vi' / 'x.png'}: broken link to "
                             f"{pairs / 'gone' / 'x.png'} (no such file)"]


def test_evaluation_names_the_broken_link(pairs, tmp_path):
    from refusion.metrics.evaluate import evaluate_folders

    fused = tmp_path / "fused"
    _img(fused / "ok.png", 120)
    os.symlink(tmp_path / "gone" / "ok.png", fused / "x.png")
    other = tmp_path / "other"
    other.mkdir()
    os.symlink(tmp_path / "gone" / "ok.png", other / "ok.png")
    res = evaluate_folders(pairs / "ir", pairs / "vi", [fused, other], metrics=["EN"],
                           workers=0)
    assert set(res.values["fused"]) == {"ok"} and res.values["other"] == {}
    assert res.missing == [
        f"{pairs / 'vi' / 'x.png'}: broken link to {tmp_path / 'gone' / 'x.png'} (no such file)",
        f"{other / 'ok.png'}: broken link to {tmp_path / 'gone' / 'ok.png'} (no such file)",
    ]
