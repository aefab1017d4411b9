"""Video end-to-end throughput (decode -> infer -> encode threads) against model-only.

Input: the first frames of an M3SVD clip (640x480) from ``../shared/data/video`` when present,
else a generated 640x480 clip. Model: the shipped ``ivif`` weights (the published network);
backends: what ``auto`` picks here (FP32), and BF16 compiled torch (with
``REFUSION_BENCH_COMPILE=1`` on hardware with native BF16). ``REFUSION_BENCH_VIDEO_FRAMES``
sets the frame count (default 8).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from refusion.engine import create_backend
from refusion.engine.backends.torch_backend import has_bf16_hardware, load_module
from refusion.engine.pipeline import VideoPipeline
from refusion.engine.preprocess import FramePreprocessor, stack_inputs
from refusion.engine.video import FrameSource, PairReader

from refusion.zoo import resolve_weights

FRAMES = int(os.environ.get("REFUSION_BENCH_VIDEO_FRAMES", "8"))
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "video" / "M3SVD"


def _clips(tmp: Path) -> tuple[Path, Path, str]:
    if (SHARED / "ir").is_dir():
        clip = sorted((SHARED / "ir").glob("*.mp4"))[0]
        return clip, SHARED / "vi" / clip.name, f"M3SVD {clip.stem}"
    paths = []
    for name in ("ir", "vis"):
        p = tmp / f"{name}.mp4"
        vw = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"mp4v"), 30, (640, 480))
        rng = np.random.default_rng(0)
        for _ in range(FRAMES):
            vw.write(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
        vw.release()
        paths.append(p)
    return paths[0], paths[1], "generated"


# name -> (backend, options): what ``auto`` picks (FP32), and the fastest CPU mode
CONFIGS = {"auto": ("auto", {"spin": False}),
           "torch-bf16-compile": ("torch", {"bf16": True, "compile": True})}


@pytest.fixture(scope="module", params=list(CONFIGS))
def backend(request, tmp_path_factory):
    name, opts = CONFIGS[request.param]
    if opts.get("bf16") and not has_bf16_hardware("cuda" if torch.cuda.is_available() else "cpu"):
        pytest.skip(f"{request.param}: no native BF16 arithmetic here")
    if opts.get("compile") and not os.environ.get("REFUSION_BENCH_COMPILE"):
        pytest.skip("torch.compile: set REFUSION_BENCH_COMPILE=1 (long compile on 2 cores)")
    os.environ.setdefault("REFUSION_CACHE", str(tmp_path_factory.mktemp("cache")))
    be = create_backend(name, load_module(resolve_weights("ivif", "ivif")), device="auto",
                        **opts)
    be.config = request.param
    with be:
        yield be


def test_video_end_to_end_vs_model_only(benchmark, backend, tmp_path):
    ir, vis, source = _clips(tmp_path)
    # model-only: the same frames, already decoded and converted, straight through infer()
    reader = PairReader(FrameSource(ir, "ir"), FrameSource(vis, "vis"))
    pre = FramePreprocessor()
    batches = []
    while len(batches) < FRAMES and (got := reader.read()) is not None:
        batches.append(stack_inputs([pre.pre(got[0], got[1])]))
    reader.release()
    backend.warmup(batches[0].shape)  # compilation, allocator
    t0 = time.perf_counter()
    for b in batches:
        backend.infer(b)
    model_fps = len(batches) / (time.perf_counter() - t0)

    def run():
        pipe = VideoPipeline(PairReader(FrameSource(ir, "ir"), FrameSource(vis, "vis")),
                             backend, tmp_path / "out.mp4", max_frames=len(batches),
                             progress=False)
        return pipe.run()

    stats = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.group = "video 640x480"
    benchmark.extra_info.update(
        source=source, frames=stats.frames, backend=backend.name, device=backend.device,
        config=backend.config,
        end_to_end_fps=stats.fps, model_only_fps=model_fps, ratio=stats.fps / model_fps,
        decode_ms=1e3 * stats.decode_s / stats.frames,
        infer_ms=1e3 * stats.infer_s / stats.frames,
        encode_ms=1e3 * stats.encode_s / stats.frames,
    )
    print(f"\nvideo: {stats.summary()}; model-only {model_fps:.3f} fps; "
          f"ratio {stats.fps / model_fps:.1%}")
