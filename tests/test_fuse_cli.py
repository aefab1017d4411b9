"""`refusion-fuse` end to end on a generated pair, and its one-line errors."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from refusion.checkpoint import save_checkpoint
from refusion.cli.fuse import main
from refusion.imaging import compose, fuse_chroma, prepare_pair
from refusion.models import FusionConfig, FusionNet


@pytest.fixture
def ckpt(tmp_path):
    return save_checkpoint(tmp_path / "tiny.safetensors",
                           {"fusion": FusionNet(FusionConfig(dim=8, blocks=1, heads=2))},
                           task="ivif")


def test_fuse_grey_and_colour(pair_files, ckpt, tmp_path):
    a, b = pair_files
    out = tmp_path / "out" / "fused.png"
    assert main([str(a), str(b), "-o", str(out), "--weights", str(ckpt)]) == 0
    img = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    src = cv2.imread(str(b))
    assert img.shape == src.shape  # colour source -> colour output
    assert img.dtype == np.uint8


def test_minmax_stretches(pair_files, ckpt, tmp_path):
    a, _ = pair_files
    out = tmp_path / "f.png"
    main([str(a), str(a), "-o", str(out), "--weights", str(ckpt), "--normalize", "minmax"])
    img = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert img.ndim == 2 and img.min() == 0 and img.max() == 255


def test_colour_rule_and_fixed_scale():
    grey = np.full((4, 4), 100, np.uint8)
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[..., 2] = 200  # red
    p = prepare_pair(grey, colour)
    assert p.chroma is not None and p.a.dtype == np.float32
    assert p.a[0, 0] == pytest.approx(100 / 255)
    assert prepare_pair(grey, grey).chroma is None
    assert prepare_pair(colour, grey).chroma is not None
    both = prepare_pair(colour, colour).chroma
    np.testing.assert_allclose(both, p.chroma, atol=1e-3)  # same chroma twice stays the same
    out = compose(np.full((4, 4), 0.5, np.float32), None)
    assert out[0, 0] == 128  # fixed scale: 0.5 -> 127.5 -> rounds to 128
    neutral = fuse_chroma(np.full((1, 1, 2), 0.5, np.float32), np.full((1, 1, 2), 0.9, np.float32))
    assert neutral[0, 0, 0] == pytest.approx(0.9, abs=1e-3)  # neutral chroma carries no weight


def _run(args):
    return subprocess.run([sys.executable, "-m", "refusion.cli.fuse", *args],
                          capture_output=True, text=True)


@pytest.mark.parametrize("case", ["missing", "unreadable", "size", "weights", "task"])
def test_user_errors_are_one_line(case, pair_files, ckpt, tmp_path):
    a, b = pair_files
    out = str(tmp_path / "o.png")
    args = [str(a), str(b), "-o", out, "--weights", str(ckpt)]
    if case == "missing":
        args[0] = str(tmp_path / "nope.png")
        needle = "nope.png"
    elif case == "unreadable":
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"not an image")
        args[0] = str(bad)
        needle = "bad.png"
    elif case == "size":
        small = tmp_path / "small.png"
        cv2.imwrite(str(small), np.zeros((10, 12), np.uint8))
        args[0] = str(small)
        needle = "size mismatch"
    elif case == "weights":
        args[-1] = str(tmp_path / "missing.safetensors")
        needle = "missing.safetensors"
    else:
        args += ["--task", "mfif"]
        needle = "trained for 'ivif'"
    r = _run(args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "o.png").exists()
