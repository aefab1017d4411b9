"""The torch backend's faster modes against its FP32 images: BF16 (close, not equal) and
``torch.compile`` with Inductor's freezing (equal to float32 rounding)."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
from refusion.engine import create_backend
from refusion.engine.backends.torch_backend import (
    RECOMPILE_LIMIT,
    TorchBackend,
    has_bf16_hardware,
    load_module,
)
from skimage.metrics import peak_signal_noise_ratio as psnr

from refusion.cli.fuse import main as fuse_main
from refusion.errors import UserError
from refusion.train.synthetic import photo_pair
from refusion.zoo import resolve_weights

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def net():
    return load_module(resolve_weights("ivif", "ivif")).eval()


def _fp32(net, x: np.ndarray) -> np.ndarray:
    with TorchBackend(net, retain_memory=False, threads=1) as be:
        return be.infer(x)


def test_bf16_is_close_to_fp32_and_leaves_the_module_alone(net):
    x = photo_pair(72, 96)
    want = _fp32(net, x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        with TorchBackend(net, bf16=True, retain_memory=False, threads=1) as be:
            got = be.infer(x)
            assert be.describe()["bf16"] and be.channels_last
            assert {p.dtype for p in be._model.parameters()} == {torch.bfloat16}
    slow = [w for w in caught if "no native BF16" in str(w.message)]
    assert len(slow) == (0 if has_bf16_hardware() else 1)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert got.min() >= 0 and got.max() <= 1
    # close to FP32 (the gate), and really computed in BF16 (FP32 rounding would give > 100 dB)
    assert 50 < psnr(want, got, data_range=1.0) < 100
    assert {p.dtype for p in net.parameters()} == {torch.float32}  # the caller's module


def test_half_and_bf16_exclude_each_other(net):
    with pytest.raises(UserError, match="not both"):
        TorchBackend(net, half=True, bf16=True)


@pytest.mark.slow
def test_compile_with_freezing_matches_eager(net):
    # Two shapes: the compiled module recompiles for the second one (dynamic=False).
    x1, x2 = photo_pair(48, 64), photo_pair(40, 56)
    want1, want2 = _fp32(net, x1), _fp32(net, x2)
    with TorchBackend(net, compile=True, retain_memory=False, threads=1) as be:
        for x, want in ((x1, want1), (x2, want2), (x1, want1)):
            assert np.abs(be.infer(x) - want).max() < 1e-4
    # more shapes than dynamo's default of 8 compiled entries per network class
    assert torch._dynamo.config.recompile_limit >= RECOMPILE_LIMIT
    with TorchBackend(net, compile=True, bf16=True, retain_memory=False, threads=1) as be:
        assert 50 < psnr(want1, be.infer(x1), data_range=1.0) < 100


def test_cli_bf16_selects_torch_and_rejects_other_backends(pair_files, tmp_path, capsys):
    a, b = pair_files
    with pytest.raises(SystemExit) as exc:
        fuse_main([str(a), str(b), "-o", str(tmp_path / "x.png"), "--bf16",
                   "--backend", "onnxruntime"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["refusion-fuse: error: --bf16 needs the torch backend (--backend torch or "
                   "auto), not --backend onnxruntime"]
    out = tmp_path / "f.png"
    assert fuse_main([str(a), str(b), "-o", str(out), "--bf16", "-q"]) == 0
    assert "(torch bf16, cpu" in capsys.readouterr().err
    fused, ref = cv2.imread(str(out)), tmp_path / "ref.png"
    assert fuse_main([str(a), str(b), "-o", str(ref), "-q", "--backend", "torch"]) == 0
    diff = np.abs(fused.astype(int) - cv2.imread(str(ref)).astype(int))
    assert diff.max() <= 4 and diff.mean() < 0.5  # 8-bit images: BF16 moves a few levels


def test_fp16_is_cuda_only_and_never_silently_fp32(net, pair_files, tmp_path, capsys):
    with pytest.raises(UserError, match="--fp16 \\(half\\) runs on CUDA only, not on cpu"):
        TorchBackend(net, "cpu", half=True)
    a, b = pair_files
    out = str(tmp_path / "x.png")
    for extra, needle in (
        ([], "--fp16 (half) runs on CUDA only, not on cpu; on the CPU --bf16"),
        (["--backend", "onnxruntime"], "give an FP16 export as --weights: refusion-export --fp16"),
        (["--bf16"], "choose one of --fp16 (half) and --bf16, not both"),
    ):
        with pytest.raises(SystemExit) as exc:
            fuse_main([str(a), str(b), "-o", out, "--fp16", "--device", "cpu", *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FP16 inference needs a CUDA device")
def test_cli_fp16_on_cuda_gives_the_fp32_images(pair_files, tmp_path, capsys):
    a, b = pair_files
    half, full = tmp_path / "h.png", tmp_path / "f.png"
    assert fuse_main([str(a), str(b), "-o", str(half), "--fp16", "--device", "cuda", "-q"]) == 0
    assert "(torch fp16, cuda" in capsys.readouterr().err
    assert fuse_main([str(a), str(b), "-o", str(full), "--backend", "torch", "--device", "cpu",
                      "-q"]) == 0
    diff = np.abs(cv2.imread(str(half)).astype(int) - cv2.imread(str(full)).astype(int))
    assert diff.max() <= 2  # 11 mantissa bits: at most a level or two on 8 bits


def test_registry_passes_bf16_to_the_torch_backend(net):
    assert create_backend("torch", net, device="cpu", bf16=True).bf16
    assert not create_backend("torch", net, device="cpu").bf16


def test_compile_runs_the_references_by_default(net):
    # Inductor fuses the reference GELU gate; the native op is opaque to it
    assert TorchBackend(net).native and not TorchBackend(net, compile=True).native
    assert TorchBackend(net, compile=True, native=True).native
