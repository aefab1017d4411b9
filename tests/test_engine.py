"""Runtime backends: torch / ONNX Runtime parity, batching, auto selection, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import shared_path
from refusion.engine import available_backends, create_backend
from refusion.engine.backends.onnxruntime_backend import OnnxRuntimeBackend
from refusion.engine.backends.tensorrt_backend import TensorRTBackend, tensorrt_available
from refusion.engine.backends.torch_backend import TorchBackend
from refusion.engine.onnx_cache import cached_onnx, export_onnx_file

from refusion.checkpoint import save_checkpoint
from refusion.errors import UserError
from refusion.models import FusionConfig, FusionNet

TINY = FusionConfig(dim=8, blocks=1, heads=2)



@pytest.fixture(scope="module")
def tiny() -> FusionNet:
    torch.manual_seed(1)
    net = FusionNet(TINY).eval()
    # random, not identity-like, norm weights so that parity is tested on a non-trivial net
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


@pytest.fixture(scope="module")
def tiny_onnx(tiny, tmp_path_factory):
    return export_onnx_file(tiny, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def _batch(n, h, w, seed=0):
    return np.random.default_rng(seed).random((n, 2, h, w), dtype=np.float32)


@pytest.mark.parametrize("shape", [(1, 2, 64, 64), (3, 2, 37, 53), (2, 2, 17, 128)])
def test_torch_onnxruntime_parity(tiny, tiny_onnx, shape):
    x = _batch(shape[0], shape[2], shape[3])
    with torch.inference_mode():
        ref = tiny(torch.from_numpy(x)).numpy()
    with TorchBackend(tiny, channels_last=True) as tb, OnnxRuntimeBackend(tiny_onnx) as ob:
        yt, yo = tb.infer(x), ob.infer(x)
    assert yt.shape == yo.shape == (shape[0], 1, *shape[2:]) and yo.dtype == np.float32
    assert np.abs(yt - ref).max() < 1e-4
    assert np.abs(yo - ref).max() < 1e-4


def test_baseline_without_native_kernels_matches(tiny):
    x = _batch(1, 40, 48)
    with TorchBackend(tiny, native=False, channels_last=False) as base, TorchBackend(tiny) as fast:
        np.testing.assert_allclose(base.infer(x), fast.infer(x), atol=1e-4)


def test_authors_checkpoint_parity_onnxruntime():
    """The published network through the ONNX path reproduces the authors' raw output."""
    ref_dir = shared_path("reference")
    x = np.load(ref_dir / "ivif_tno07_input.npy")
    raw = np.load(ref_dir / "ivif_tno07_raw.npy")
    with create_backend("onnxruntime", ref_dir / "ReFusion_IVIF.pth", device="cpu") as be:
        y = be.infer(x)
    assert np.abs(y[0, 0] - raw).max() < 1e-4


def test_onnx_cache_reuses_and_tracks_weights(tiny, tmp_path):
    p1 = cached_onnx(tiny, tmp_path)
    mtime = p1.stat().st_mtime_ns
    assert cached_onnx(tiny, tmp_path) == p1 and p1.stat().st_mtime_ns == mtime
    other = FusionNet(TINY)
    assert cached_onnx(other, tmp_path) != p1
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_onnx_cache_key_follows_the_exporter_versions(tiny, monkeypatch):
    # cached exports are not re-checked, so a torch or onnx upgrade must not reuse old files
    import onnx
    from refusion.engine.onnx_cache import model_digest

    key = model_digest(tiny)
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    assert model_digest(tiny) != key
    monkeypatch.undo()
    assert model_digest(tiny) == key
    monkeypatch.setattr(onnx, "__version__", "0.0.1")
    assert model_digest(tiny) != key


def test_create_backend_from_checkpoint_and_auto(tiny, tmp_path):
    ckpt = save_checkpoint(tmp_path / "t.safetensors", {"fusion": tiny}, task="ivif")
    x = _batch(2, 24, 40)
    with create_backend("torch", ckpt, device="cpu") as tb:
        ref = tb.infer(x)
    with create_backend("onnxruntime", ckpt, device="cpu") as ob:
        assert np.abs(ob.infer(x) - ref).max() < 1e-4
    be = create_backend("auto", ckpt, channels_last=True, provider="cpu")  # foreign: dropped
    assert be.name == "onnxruntime" and be.device == "cpu"  # the CPU winner in bench/
    # precision and compilation are never dropped: they pick torch, or are refused
    assert create_backend("auto", ckpt, compile=True, provider="cpu").name == "torch"
    assert create_backend("auto", ckpt, bf16=True).name == "torch"
    with pytest.raises(UserError, match="half needs the torch backend, not 'onnxruntime'"):
        create_backend("onnxruntime", ckpt, half=True)
    with pytest.raises(TypeError, match="retain_memroy"):  # a typo is not dropped silently
        create_backend("auto", ckpt, retain_memroy=False)


def test_backend_options_table_matches_the_classes():
    # auto keeps, per candidate, only the options in the registry's table: an option missing
    # there would be dropped without a word
    import inspect

    from refusion.engine import registry
    from refusion.engine.backends.onnxruntime_backend import OnnxRuntimeBackend
    from refusion.engine.backends.tensorrt_backend import TensorRTBackend

    for name, cls in (("torch", TorchBackend), ("onnxruntime", OnnxRuntimeBackend),
                      ("tensorrt", TensorRTBackend)):
        params = inspect.signature(cls.__init__).parameters.values()
        keyword = {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        assert registry._OPTIONS[name] == keyword, name


def test_the_torch_backend_gives_the_host_its_thread_count_back(tiny):
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with TorchBackend(tiny, threads=2) as be:
            assert torch.get_num_threads() == 2
            be.infer(_batch(1, 16, 16))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_describe_and_warmup(tiny):
    be = TorchBackend(tiny, threads=1)
    be.warmup((1, 2, 16, 16))
    assert be.is_active and be.describe()["threads"] == 1
    be.deactivate()
    assert not be.is_active and "TorchBackend" in repr(be)


@pytest.mark.parametrize("case", ["missing", "torch-onnx", "name", "device", "shape", "bad-onnx"])
def test_backend_errors_are_user_errors(case, tiny_onnx, tmp_path):
    with pytest.raises(UserError) as info:
        if case == "missing":
            create_backend("torch", tmp_path / "nope.safetensors")
        elif case == "torch-onnx":
            create_backend("torch", tiny_onnx)
        elif case == "name":
            create_backend("openvino", tiny_onnx)
        elif case == "device":
            create_backend("onnxruntime", tiny_onnx, device="tpu")
        elif case == "shape":
            OnnxRuntimeBackend(tiny_onnx).infer(np.zeros((1, 3, 8, 8), np.float32))
        else:
            bad = tmp_path / "bad.onnx"
            bad.write_bytes(b"garbage")
            OnnxRuntimeBackend(bad).activate()
    msg = str(info.value)
    needle = {"missing": "nope.safetensors", "torch-onnx": "checkpoint", "name": "--backend",
              "device": "--device", "shape": "(N, 2, H, W)", "bad-onnx": "bad.onnx"}[case]
    assert needle in msg and "\n" not in msg


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("form", [False, True], ids=["training-form", "inference-form"])
def test_torch_cuda_matches_cpu(tiny, precision, form):
    # CUDA graphs are captured per shape: two shapes, each run twice (capture, then replay).
    cpu = TorchBackend(tiny, "cpu", retain_memory=False, inference_form=False, threads=1)
    gpu = TorchBackend(tiny, "cuda", half=precision == "fp16", bf16=precision == "bf16",
                       cuda_graphs=True, inference_form=form)
    tolerance = {"fp32": 1e-4, "fp16": 2e-3, "bf16": 2e-2}[precision]  # 11 / 8 mantissa bits
    threads = torch.get_num_threads()
    try:
        with cpu, gpu:
            for shape in ((2, 2, 64, 80), (1, 2, 37, 53)):
                x = _batch(shape[0], shape[2], shape[3])
                want = cpu.infer(x)
                for _ in range(2):
                    got = gpu.infer(x)
                    assert got.shape == want.shape and got.dtype == np.float32
                    assert np.abs(got - want).max() < tolerance
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_cuda_requests_fail_clearly(tiny_onnx):
    with pytest.raises(UserError, match="no CUDA device"):
        create_backend("onnxruntime", tiny_onnx, device="cuda")
    # without a GPU the reason is one of the two real causes, whichever is checked first
    assert available_backends()["tensorrt"] in ("the tensorrt package is not installed",
                                                "no CUDA device is available")


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_a_cuda_provider_that_does_not_load_is_one_line(tiny_onnx, monkeypatch):
    # onnxruntime-gpu without its CUDA/cuDNN libraries lists CUDAExecutionProvider, then only
    # warns and builds a CPU session: the backend must say so when it starts, not at a frame
    import onnxruntime as ort
    from refusion.engine.backends.onnxruntime_backend import OnnxRuntimeBackend

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    be = OnnxRuntimeBackend(tiny_onnx, "cuda", provider="cuda")
    with pytest.raises(UserError, match="CUDAExecutionProvider is listed but did not load"):
        be.activate()
    assert not be.is_active


def test_tensorrt_backend():
    ok, why = tensorrt_available()
    if not ok:
        pytest.skip(f"TensorRT backend not testable here: {why}")
    plan = shared_path("models", "fusion.plan")  # built by refusion-export on a GPU machine
    with TensorRTBackend(plan) as be:
        y = be.infer(_batch(1, 64, 64))
    assert y.shape == (1, 1, 64, 64)


def test_an_on_the_fly_plan_is_keyed_by_the_model_tensorrt_and_gpu(tmp_path, monkeypatch):
    # a cached plan was once named after the ONNX file's stem only: re-exported weights (or
    # another model of that name) reused a stale engine
    from refusion.engine.registry import plan_cache_path

    monkeypatch.setenv("REFUSION_CACHE", str(tmp_path / "cache"))
    a, b = tmp_path / "a" / "model.onnx", tmp_path / "b" / "model.onnx"
    for p, data in ((a, b"one model"), (b, b"another model")):
        p.parent.mkdir()
        p.write_bytes(data)
    key = plan_cache_path(a, "10.9.0", "9.0")
    assert key == plan_cache_path(a, "10.9.0", "9.0")  # reused for the same file
    assert key.suffix == ".plan" and key.name.startswith("model-")
    assert len({key, plan_cache_path(b, "10.9.0", "9.0"), plan_cache_path(a, "10.10.0", "9.0"),
                plan_cache_path(a, "10.9.0", "8.9")}) == 4


def test_auto_says_why_a_plan_cannot_run_here(tmp_path):
    # the message used to end in "no backend can run g.plan: " with nothing after it
    plan = tmp_path / "g.plan"
    plan.write_bytes(b"not really a plan")
    with pytest.raises(UserError) as exc:
        create_backend("auto", plan, device="cpu")
    assert "a TensorRT plan runs only with the tensorrt backend on a CUDA device" in str(exc.value)
    assert "(here: device cpu)" in str(exc.value)
