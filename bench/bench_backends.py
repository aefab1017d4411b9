"""Latency of every backend against the eager baseline, at four frame sizes.

Baseline: eager PyTorch, our model (the published size, ``FusionNet()``, with the shipped
``ivif`` weights), float32, NCHW, no
``torch.compile``, native kernels off, the system allocator (``eager-retained`` is the same with
freed memory kept, see :mod:`refusion.engine.memory`). Run with ``python bench/report.py``
(which writes ``docs/benchmarks.md``) or ``pytest bench/bench_backends.py --benchmark-only``.
Set ``REFUSION_BENCH_COMPILE=1`` to add ``torch.compile`` (minutes of compilation per size on
two cores), ``REFUSION_BENCH_SIZES=256x256,480x640`` to restrict the sizes.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from refusion.engine import available_backends
from refusion.engine.backends.onnxruntime_backend import OnnxRuntimeBackend
from refusion.engine.backends.tensorrt_backend import TensorRTBackend, tensorrt_available
from refusion.engine.backends.torch_backend import TorchBackend, has_bf16_hardware, load_module
from refusion.engine.onnx_cache import export_onnx_file
from skimage.metrics import peak_signal_noise_ratio

from refusion.models import FusionConfig, FusionNet
from refusion.train.synthetic import photo_pair

ALL_SIZES = {"256x256": (256, 256), "480x640": (480, 640), "1280x720": (720, 1280),
             "1920x1080": (1080, 1920)}
_wanted = os.environ.get("REFUSION_BENCH_SIZES")
SIZES = {k: v for k, v in ALL_SIZES.items() if not _wanted or k in _wanted.split(",")}

# name -> (factory kind, options); the first entry is the baseline
_EAGER = {"channels_last": False, "native": False, "inference_form": False}
CONFIGS = {
    "eager-baseline": ("torch", {**_EAGER, "retain_memory": False}),
    # The baseline with freed memory kept (refusion.engine.memory): how much of the torch
    # backend's gain is the allocator alone.
    "eager-retained": ("torch", {**_EAGER, "retain_memory": True}),
    # defaults: NCHW on CPU, channels-last on CUDA; on CPU retained memory and the inference form
    "torch": ("torch", {"native": True}),
    "torch-compile": ("torch", {"compile": True}),
    # BF16 (not the same images: the report gives the PSNR against FP32). On CPU it needs
    # AVX512-BF16/AMX to be fast; compiled with Inductor's freezing it is the fastest CPU row.
    "torch-bf16": ("torch", {"bf16": True}),
    "torch-bf16-compile": ("torch", {"bf16": True, "compile": True}),
    # CUDA only: FP16 weights and activations, channels-last, one CUDA graph per shape.
    "torch-fp16": ("torch", {"half": True, "cuda_graphs": True}),
    "onnxruntime": ("onnxruntime", {"optimization": "all"}),
    "onnxruntime-extended": ("onnxruntime", {"optimization": "extended"}),
    "tensorrt": ("tensorrt", {}),
    # Not the baseline's network: the shipped `ivif-fast` architecture (one Restormer block per
    # encoder and in the decoder, FAST_CONFIG) in ONNX Runtime, for the speed/quality trade-off.
    "onnxruntime-fast": ("onnxruntime", {"optimization": "all", "network": "fast"}),
}
FAST_CONFIG = FusionConfig(blocks=1)


def _memory_retained() -> bool:
    from refusion.engine.memory import memory_status

    return memory_status() == "retained"


@pytest.fixture(scope="session")
def model() -> FusionNet:
    """The shipped ``ivif`` weights: the published architecture (``FusionNet()``), and trained,
    so that the reduced-precision rows' PSNR describes real outputs."""
    from refusion.zoo import resolve_weights

    net = load_module(resolve_weights("ivif", "ivif")).eval()
    assert net.config == FusionNet().config  # the baseline is the published network
    return net


@pytest.fixture(scope="session")
def onnx_path(model, tmp_path_factory):
    return export_onnx_file(model, tmp_path_factory.mktemp("bench") / "fusion.onnx")


@pytest.fixture(scope="session")
def fast_onnx_path(tmp_path_factory):
    torch.manual_seed(0)
    net = FusionNet(FAST_CONFIG).eval()
    return export_onnx_file(net, tmp_path_factory.mktemp("bench") / "fusion-fast.onnx")


def _make(config: str, model, graph):
    """The backend of ``config``; ``graph(network)`` gives the ONNX file of that network."""
    kind, opts = CONFIGS[config]
    if opts.get("retain_memory") is False and _memory_retained():
        # Retention is process-wide and one-way; the collection order runs the baseline first.
        pytest.skip(f"{config}: an earlier case already retains freed memory (run it first)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "torch":
        if opts.get("half") and not torch.cuda.is_available():
            pytest.skip(f"{config}: FP16 inference is for CUDA (no CUDA device)")
        if opts.get("bf16") and not has_bf16_hardware(device):
            pytest.skip(f"{config}: {device} has no native BF16 arithmetic")
        if opts.get("compile") and not os.environ.get("REFUSION_BENCH_COMPILE"):
            pytest.skip("torch.compile: set REFUSION_BENCH_COMPILE=1 (long compile on 2 cores)")
        return TorchBackend(model, device, **opts)
    if kind == "onnxruntime":
        why = available_backends()["onnxruntime"]
        if why:
            pytest.skip(why)
        opts = dict(opts)
        return OnnxRuntimeBackend(graph(opts.pop("network", "published")), "cpu", **opts)
    ok, why = tensorrt_available()
    if not ok:
        pytest.skip(f"tensorrt: {why} (no GPU is lent to this machine)")
    plan = os.environ.get("REFUSION_BENCH_PLAN")
    if not plan:
        pytest.skip("tensorrt: set REFUSION_BENCH_PLAN to a plan built by refusion-export")
    return TensorRTBackend(plan)


def _fp32_reference(model, x: np.ndarray) -> np.ndarray:
    with TorchBackend(model, "cpu", retain_memory=False) as ref:
        return ref.infer(x)


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_latency(benchmark, config, size, model, onnx_path, request):
    h, w = SIZES[size]

    def graph(network: str):
        return request.getfixturevalue("fast_onnx_path") if network == "fast" else onnx_path

    be = _make(config, model, graph)
    x = photo_pair(h, w)
    with be:
        try:
            y = be.infer(x)  # warm-up: allocator, graph optimisation, compilation
        except Exception as exc:  # noqa: BLE001 - e.g. native kernels mid-rebuild
            pytest.skip(f"{config}: {type(exc).__name__}: {str(exc)[:120]}")
        big = h * w > 500_000
        benchmark.group = f"latency {size}"
        benchmark.extra_info.update(config=config, size=size, height=h, width=w,
                                    describe={k: str(v) for k, v in be.describe().items()})
        opts = CONFIGS[config][1]
        if opts.get("half") or opts.get("bf16"):
            benchmark.extra_info["psnr_vs_fp32"] = float(
                peak_signal_noise_ratio(_fp32_reference(model, x), y, data_range=1.0))
        benchmark.pedantic(be.infer, args=(x,), rounds=2 if big else 3, iterations=1)
