"""``refusion demo --quick`` runs end to end (nothing downloaded)."""

from __future__ import annotations

import cv2
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: one thread avoids OpenMP spin-waiting on busy CI cores.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_demo_quick(tmp_path, capsys):
    from refusion.cli.main import main

    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "average" in out and "ReFusion (demo)" in out and "PSNR_ref" in out
    pic = tmp_path / "demo_mfif.png"
    assert str(pic) in out
    img = cv2.imread(str(pic))
    assert img is not None and img.shape[1] > 5 * 48
