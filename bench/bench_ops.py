"""Speed of the native kernels against OpenCV and eager PyTorch (pytest-benchmark).

Run: ``python -m pytest bench/bench_ops.py --benchmark-only --benchmark-group-by=group``.
Every case pins torch (and OpenCV) to 2 threads so the numbers compare like with like. Cases
that need ``refusion._C`` skip with a reason when it is not built.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from refusion import _native
from refusion.ops import gelu_gate, gelu_mul, sobel_grad, sobel_xy
from refusion.ops.sobel import sobel_xy_reference

THREADS = 2


@pytest.fixture(autouse=True)
def _pin_threads():
    torch.set_num_threads(THREADS)
    cv2.setNumThreads(THREADS)
    torch.manual_seed(0)


def _require_native():
    mod = _native.native_module()
    if mod is None or not getattr(mod, "has_cpu_kernels", False):
        pytest.skip("refusion._C is not built (or REFUSION_DISABLE_NATIVE is set)")


@pytest.fixture
def native_disabled(monkeypatch):
    """Force the pure-PyTorch references for the duration of one case."""
    monkeypatch.setenv("REFUSION_DISABLE_NATIVE", "1")
    _native.native_module.cache_clear()
    yield
    monkeypatch.delenv("REFUSION_DISABLE_NATIVE")
    _native.native_module.cache_clear()


# ------------------------------------------------------------------ Sobel, 1920x1080 float32

IMG = (1080, 1920)


def _image() -> np.ndarray:
    return np.random.default_rng(0).random(IMG, dtype=np.float32)


# Shared 2-core machine: a few slow rounds from other load would otherwise be all the statistics
# a millisecond-scale case gets after pytest-benchmark's calibration.
SOBEL_ROUNDS = pytest.mark.benchmark(min_rounds=30, warmup=True, warmup_iterations=3)


@SOBEL_ROUNDS
def test_sobel_1080p_native(benchmark):
    _require_native()
    benchmark.group = "sobel-1080p-f32"
    x = torch.from_numpy(_image())[None, None]
    with torch.no_grad():
        sx, sy = benchmark(sobel_xy, x)
    ref = sobel_xy_reference(x)
    torch.testing.assert_close(sx, ref[0], rtol=1e-6, atol=1e-6)


@SOBEL_ROUNDS
def test_sobel_1080p_opencv(benchmark):
    benchmark.group = "sobel-1080p-f32"
    img = _image()

    def both():
        kw = {"ksize": 3, "borderType": cv2.BORDER_REPLICATE}
        return cv2.Sobel(img, cv2.CV_32F, 1, 0, **kw), cv2.Sobel(img, cv2.CV_32F, 0, 1, **kw)

    sx, _ = benchmark(both)
    want = sobel_xy_reference(torch.from_numpy(img)[None, None])[0][0, 0].numpy()
    np.testing.assert_allclose(sx, want, rtol=1e-5, atol=1e-5)  # same definition


def test_sobel_1080p_reference(benchmark, native_disabled):
    benchmark.group = "sobel-1080p-f32"
    x = torch.from_numpy(_image())[None, None]
    with torch.no_grad():
        benchmark(sobel_xy, x)


# ------------------------------------------------------------- gate, (1, 128, 480, 640) float32

GATE = (1, 128, 480, 640)


# Steady state: the first calls of a process pay for fresh huge pages and the pool's start-up.
GATE_ROUNDS = pytest.mark.benchmark(min_rounds=15, warmup=True, warmup_iterations=10)


@GATE_ROUNDS
def test_gate_native(benchmark):
    _require_native()
    benchmark.group = "gate-1x128x480x640-f32"
    x = torch.randn(GATE)
    with torch.no_grad():
        benchmark(gelu_gate, x)


@GATE_ROUNDS
def test_gate_eager(benchmark):
    benchmark.group = "gate-1x128x480x640-f32"
    x = torch.randn(GATE)
    with torch.no_grad():
        benchmark(_eager_gate, x)


def _eager_gate(t):
    a, b = t.chunk(2, dim=1)
    return F.gelu(a) * b


# ------------------------------------------------------------------------------------ CUDA
# The same cases on a GPU (skipped without one): the native CUDA kernels against eager PyTorch
# on the device, float32 and float16. Each call synchronises, so the time is the kernels' own.

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA_DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float16],
                                      ids=["f32", "f16"])


def _require_cuda_kernels():
    mod = _native.native_module()
    if mod is None or not getattr(mod, "has_cuda_kernels", False):
        pytest.skip("refusion._C was built without CUDA kernels")
    if not _native.cuda_kernels_usable(torch.cuda.current_device()):
        pytest.skip("refusion's CUDA kernels cannot run on this GPU (see the warning)")


def _synced(fn):
    def run(*args):
        out = fn(*args)
        torch.cuda.synchronize()
        return out

    return run


@CUDA
@CUDA_DTYPES
@pytest.mark.parametrize("impl", ["native", "eager"])
def test_gate_cuda(benchmark, impl, dtype):
    benchmark.group = f"cuda-gate-1x128x480x640-{str(dtype)[6:]}"
    if impl == "native":
        _require_cuda_kernels()
        fn = gelu_gate
    else:
        fn = _eager_gate
    x = torch.randn(GATE, device="cuda", dtype=dtype)
    with torch.no_grad():
        want = _eager_gate(x.float())
        torch.testing.assert_close(fn(x).float(), want, rtol=2e-3, atol=2e-3)
        benchmark.pedantic(_synced(fn), args=(x,), rounds=50, iterations=5, warmup_rounds=5)


@CUDA
@CUDA_DTYPES
@pytest.mark.parametrize("impl", ["native", "reference"])
def test_sobel_cuda(benchmark, impl, dtype, monkeypatch):
    benchmark.group = f"cuda-sobel-1080p-{str(dtype)[6:]}"
    if impl == "native":
        _require_cuda_kernels()
    else:  # the pure-PyTorch reference (separable slices) on the same device
        monkeypatch.setenv("REFUSION_DISABLE_NATIVE", "1")
        _native.native_module.cache_clear()
    x = torch.rand(1, 1, *IMG, device="cuda", dtype=dtype)
    try:
        with torch.no_grad():
            benchmark.pedantic(_synced(sobel_xy), args=(x,), rounds=50, iterations=5,
                               warmup_rounds=5)
    finally:
        monkeypatch.delenv("REFUSION_DISABLE_NATIVE", raising=False)
        _native.native_module.cache_clear()


# ----------------------------------------- loss-style forward + backward, with / without kernels


def _loss_step_inputs():
    img = torch.rand(4, 1, 128, 128, requires_grad=True)
    feat = torch.randn(4, 64, 128, 128, requires_grad=True)
    return img, feat


def _loss_step(img, feat):
    loss = sobel_grad(img).mean() + gelu_gate(feat).square().mean()
    loss.backward()
    img.grad = None
    feat.grad = None


def test_loss_step_native(benchmark):
    _require_native()
    benchmark.group = "loss-step-fwd+bwd"
    benchmark(_loss_step, *_loss_step_inputs())


def test_loss_step_reference(benchmark, native_disabled):
    benchmark.group = "loss-step-fwd+bwd"
    benchmark(_loss_step, *_loss_step_inputs())


# ------------------------------------------------------------------- one full training step
# The trainer's fusion phase (refusion.train.fusion_step_losses + one backward of L_f + L_r, as
# Trainer._fusion_step does, optimizer step excluded) on a (4, 2, 128, 128) batch, with and
# without the kernels.

STEP_BATCH = (4, 1, 128, 128)


def _train_step_setup():
    from refusion.models import FusionNet, ProposalNet, ReconstructionNet
    from refusion.train import Batch, fusion_step_losses

    torch.manual_seed(0)
    fusion, proposal, recon = FusionNet(), ProposalNet(), ReconstructionNet()
    batch = Batch(torch.rand(STEP_BATCH), torch.rand(STEP_BATCH))

    def step():
        out = fusion_step_losses(fusion, proposal, recon, batch)
        (out.fusion.total + out.reconstruction.total).backward()
        for m in (fusion, recon):
            m.zero_grad(set_to_none=True)

    return step


def _bench_step(benchmark, step) -> None:
    # Seconds per step on 2 threads: fixed rounds keep the case to about a minute.
    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)


def test_train_step_native(benchmark):
    _require_native()
    benchmark.group = "train-step-fusion-4x2x128x128"
    _bench_step(benchmark, _train_step_setup())


def test_train_step_reference(benchmark, native_disabled):
    benchmark.group = "train-step-fusion-4x2x128x128"
    _bench_step(benchmark, _train_step_setup())


def test_gelu_mul_is_gelu_gate():
    # Cheap sanity check that the benchmarked paths compute the same thing.
    x = torch.randn(1, 8, 5, 5)
    a, b = x.chunk(2, dim=1)
    torch.testing.assert_close(gelu_gate(x), gelu_mul(a, b))
