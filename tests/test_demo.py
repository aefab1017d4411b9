"""``refusion demo --quick`` runs end to end (nothing downloaded)."""

from __future__ import annotations

import cv2
import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_demo_quick(tmp_path, capsys):
    from refusion.cli.main import main

    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "average" in out and "ReFusion (demo)" in out and "PSNR_ref" in out
    pic = tmp_path / "demo_mfif.png"
    assert str(pic) in out
    img = cv2.imread(str(pic))
    assert img is not None and img.shape[1] > 5 * 48


def test_demo_also_fuses_with_shipped_weights(tmp_path, monkeypatch, capsys):
    from refusion.checkpoint import save_checkpoint
    from refusion.cli.main import main
    from refusion.models import FusionConfig, FusionNet
    from refusion.zoo import publish_weights

    ck = save_checkpoint(tmp_path / "ck.safetensors",
                         {"fusion": FusionNet(FusionConfig(dim=4, heads=2, blocks=1,
                                                           afm_expansion=1))},
                         task="mfif", step=3, extra={"ablation": {"loss": "learned",
                                                                  "fusion": "direct"}})
    facts = {"data": "generated", "split": "none", "recipe": "none", "wall_time_s": 1.0,
             "machine": "test", "test_metrics": {}}
    publish_weights(ck, "mfif", tmp_path / "weights", facts)
    monkeypatch.setenv("REFUSION_WEIGHTS_DIR", str(tmp_path / "weights"))
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "shipped 'mfif'" in out
    row = next(line for line in out.splitlines() if line.startswith("shipped 'mfif'"))
    assert all(v == v for v in map(float, row.split()[2:]))  # numbers, no NaN
