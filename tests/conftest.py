"""Shared fixtures: generated image pairs, and the ../shared folder when it exists."""

from __future__ import annotations

import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path inside ../shared, skipping the test (with the reason) when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not present (the shared data folder ships beside the repo in CI only)")
    return p


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: tiny tensors gain nothing from more, and spin-waiting
    threads on a busy 2-core CI machine make them 10-50x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def sigint_default():
    """Ctrl-C as an interactive shell delivers it: Python's KeyboardInterrupt handler. A test
    run started in the background (``cmd &``, nohup) inherits SIGINT ignored, and Python then
    leaves it ignored."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.fixture(scope="session")
def photo_pair() -> tuple[np.ndarray, np.ndarray]:
    """A generated 'infrared-like' grey image and a colour image of one scene (uint8)."""
    from skimage import data

    rgb = data.astronaut()[::4, ::4]  # 128x128x3, small so tests stay fast
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    ir = cv2.GaussianBlur(255 - gray, (5, 5), 1.5)  # inverted, blurred: a different modality
    return ir, bgr


@pytest.fixture
def pair_files(tmp_path: Path, photo_pair) -> tuple[Path, Path]:
    ir, vis = photo_pair
    a, b = tmp_path / "ir.png", tmp_path / "vis.png"
    cv2.imwrite(str(a), ir)
    cv2.imwrite(str(b), vis)
    return a, b


@pytest.fixture(scope="session")
def tiny_graphs():
    """FP32 and FP16 ONNX graphs (``onnx.ModelProto``) of a tiny random fusion network, as
    ``refusion-export`` writes them (simplified; the FP16 one with FP32 islands)."""
    import torch
    from refusion.export import fp16 as f16
    from refusion.export import onnx_export as oe

    from refusion.models import FusionConfig, FusionNet

    torch.manual_seed(0)
    net = FusionNet(FusionConfig(dim=8, blocks=1, heads=2)).eval()
    m32 = oe.simplify(oe.trace_to_onnx(net, layer_norm="op"))
    m16, _ = f16.convert_to_fp16(m32)
    return m32, m16


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """On-the-fly ONNX exports and TensorRT plans go to a per-session folder, never to the
    user's ``~/.cache`` (tests that need an empty cache set their own)."""
    monkeypatch.setenv("REFUSION_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def tiny_ivif_ckpt(tmp_path_factory):
    """A checkpoint of a tiny random fusion network, recorded as trained for ``ivif``."""
    from refusion.checkpoint import save_checkpoint
    from refusion.models import FusionConfig, FusionNet

    return save_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.safetensors",
                           {"fusion": FusionNet(FusionConfig(dim=8, blocks=1, heads=2))},
                           task="ivif")
