"""Video: sources, timestamp pairing, alignment, the threaded pipeline, Ctrl-C and errors."""

from __future__ import annotations

import _thread
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import shared_path
from refusion.engine.backends.torch_backend import TorchBackend
from refusion.engine.pipeline import VideoPipeline
from refusion.engine.video import (
    Aligner,
    FrameSource,
    PairReader,
    estimate_homography,
    load_homography,
    save_homography,
)

from refusion.checkpoint import save_checkpoint
from refusion.cli.video import main
from refusion.errors import UserError
from refusion.models import FusionConfig, FusionNet

TINY = FusionConfig(dim=8, blocks=1, heads=2)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("REFUSION_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.safetensors",
                           {"fusion": FusionNet(TINY)}, task="ivif")


def _scene(i: int, w: int, h: int) -> np.ndarray:
    """A moving textured colour frame (BGR uint8)."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = (xx * 3 + i * 5) % 256
    img[..., 1] = (yy * 2) % 256
    img[..., 2] = 128 + 100 * np.sin((xx + yy + 4 * i) / 7.0)
    cv2.circle(img, (w // 3 + i, h // 2), min(w, h) // 5, (255, 255, 255), -1)
    return img


def write_video(path: Path, n: int, w: int = 64, h: int = 48, fps: float = 10.0,
                gray: bool = False) -> Path:
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert vw.isOpened()
    for i in range(n):
        f = _scene(i, w, h)
        if gray:
            f = cv2.cvtColor(255 - cv2.cvtColor(f, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        vw.write(f)
    vw.release()
    return path


def count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


@pytest.fixture
def clips(tmp_path):
    return (write_video(tmp_path / "ir.mp4", 8, 48, 36, gray=True),
            write_video(tmp_path / "vis.mp4", 8, 64, 48))


def test_video_cli_end_to_end(clips, ckpt, tmp_path):
    ir, vis = clips
    out, prev, stats = tmp_path / "o" / "fused.mp4", tmp_path / "prev.mp4", tmp_path / "s.json"
    rc = main(["--ir", str(ir), "--vis", str(vis), "-o", str(out), "--weights", str(ckpt),
               "--backend", "torch", "--preview", str(prev), "--stats-json", str(stats), "-q",
               "--batch-size", "2"])
    assert rc == 0 and count_frames(out) == 8
    cap = cv2.VideoCapture(str(prev))
    ok, tile = cap.read()
    assert ok and tile.shape == (48, 3 * 64, 3)  # IR | VIS | fused at the visible size
    s = json.loads(stats.read_text())
    assert s["frames"] == 8 and s["dropped"] == 0 and s["infer_s"] > 0
    assert not list(out.parent.glob(".*"))  # the temp file became the output


def test_timestamp_pairing_with_different_rates(tmp_path):
    ir = write_video(tmp_path / "ir.mp4", 10, fps=10.0)  # 1 s at 10 fps
    vis = write_video(tmp_path / "vis.mp4", 5, fps=5.0)  # 1 s at 5 fps
    reader = PairReader(FrameSource(ir, "ir"), FrameSource(vis, "vis"))
    assert not reader.stats.warnings and reader.frame_count == 5
    ts = []
    while (got := reader.read()) is not None:
        ts.append(got[2])
    assert ts == pytest.approx([0, 0.2, 0.4, 0.6, 0.8])
    assert reader.stats.pairs == 5 and reader.stats.dropped == 4  # ir 1, 3, 5, 7 (9: past the end)


def test_streams_of_different_length_warn_and_stop(tmp_path, ckpt, capsys):
    ir = write_video(tmp_path / "ir.mp4", 4)
    vis = write_video(tmp_path / "vis.mp4", 9)
    out = tmp_path / "f.mp4"
    assert main(["--ir", str(ir), "--vis", str(vis), "-o", str(out), "--weights", str(ckpt),
                 "--backend", "torch", "-q"]) == 0
    err = capsys.readouterr().err
    assert "warning: streams differ in length" in err and "ir.mp4" in err
    assert count_frames(out) == 4


def test_side_by_side_and_frame_folder_16bit(tmp_path, ckpt):
    sbs = tmp_path / "sbs.mp4"
    vw = cv2.VideoWriter(str(sbs), cv2.VideoWriter_fourcc(*"mp4v"), 10, (128, 48))
    for i in range(3):
        vw.write(np.concatenate([_scene(i, 64, 48)[..., ::-1], _scene(i, 64, 48)], axis=1))
    vw.release()
    out = tmp_path / "sbs_out.mp4"
    assert main(["--sbs", str(sbs), "-o", str(out), "--weights", str(ckpt),
                 "--backend", "torch", "-q"]) == 0
    assert count_frames(out) == 3
    # 16-bit thermal frames in a folder, paired with an 8-bit video
    frames = tmp_path / "ir16"
    frames.mkdir()
    for i in range(3):
        cv2.imwrite(str(frames / f"{i:04d}.png"),
                    (20000 + 40 * _scene(i, 32, 24)[..., 1].astype(np.uint16)))
    vis = write_video(tmp_path / "vis.mp4", 3)
    out2 = tmp_path / "t16.mp4"
    assert main(["--ir", str(frames), "--vis", str(vis), "--fps", "10", "-o", str(out2),
                 "--weights", str(ckpt), "--backend", "torch", "-q", "--gray"]) == 0
    assert count_frames(out2) == 3


class _InterruptingBackend(TorchBackend):
    """Simulates Ctrl-C (SIGINT in the main thread) once a few frames went through."""

    def _infer(self, batch):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 3:
            _thread.interrupt_main()
        return super()._infer(batch)


def test_ctrl_c_leaves_a_playable_file(tmp_path, sigint_default):
    ir = write_video(tmp_path / "ir.mp4", 40)
    vis = write_video(tmp_path / "vis.mp4", 40)
    out = tmp_path / "cut.mp4"
    pipe = VideoPipeline(PairReader(FrameSource(ir, "ir"), FrameSource(vis, "vis")),
                         _InterruptingBackend(FusionNet(TINY)), out, progress=False,
                         queue_size=2)
    with pytest.raises(KeyboardInterrupt):
        pipe.run()
    n = count_frames(out)
    assert pipe.stats.interrupted and 3 <= n < 40 and n == pipe.stats.frames
    assert not list(tmp_path.glob(".cut*"))


def test_ctrl_c_subprocess_exit_130(tmp_path, ckpt, sigint_default):
    # sigint_default: a child started from a background pytest would inherit SIGINT ignored
    # and never see the signal; a handled SIGINT is reset to the default at exec
    # long enough (several seconds of fusion) that the signal always lands mid-run
    ir = write_video(tmp_path / "ir.mp4", 4000, 32, 24)
    vis = write_video(tmp_path / "vis.mp4", 4000, 32, 24)
    out = tmp_path / "sig.mp4"
    proc = subprocess.Popen(
        [sys.executable, "-m", "refusion.cli.video", "--ir", str(ir), "--vis", str(vis), "-o",
         str(out), "--weights", str(ckpt), "--backend", "torch", "--device", "cpu", "-q"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = proc.stderr.readline()  # the start line comes just before the pipeline runs
    assert "refusion-video:" in line
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err and "interrupted" in err and "Traceback" not in err
    assert count_frames(out) >= 1


@pytest.mark.parametrize("case", ["missing", "unreadable", "no-vis", "bad-homography",
                                  "not-mp4", "odd-sbs", "unwritable", "task", "preview-avi",
                                  "stats-unwritable"])
def test_bad_inputs_give_one_line(case, clips, ckpt, tmp_path):
    ir, vis = clips
    args = ["--ir", str(ir), "--vis", str(vis), "-o", str(tmp_path / "o.mp4"),
            "--weights", str(ckpt), "--backend", "torch", "-q"]
    if case == "missing":
        args[1], needle = str(tmp_path / "nope.mp4"), "nope.mp4"
    elif case == "unreadable":
        bad = tmp_path / "bad.mp4"
        bad.write_bytes(b"\x00" * 1000)
        args[3], needle = str(bad), "bad.mp4"
    elif case == "no-vis":
        args, needle = args[:2] + args[4:], "--vis"
    elif case == "bad-homography":
        h = tmp_path / "h.json"
        h.write_text("[[1, 0], [0, 1]]")
        args += ["--homography", str(h)]
        needle = "h.json"
    elif case == "not-mp4":
        args[5], needle = str(tmp_path / "o.avi"), ".mp4"
    elif case == "preview-avi":
        args += ["--preview", str(tmp_path / "p.avi")]
        needle = "--preview"
    elif case == "stats-unwritable":
        blocker = tmp_path / "file"
        blocker.write_text("x")
        args += ["--stats-json", str(blocker / "s.json")]
        needle = f"cannot write {blocker / 's.json'}"
    elif case == "task":
        args += ["--task", "mfif"]
        needle = "was trained for 'ivif', not 'mfif'"
    elif case == "unwritable":
        blocker = tmp_path / "file"
        blocker.write_text("x")
        args[5], needle = str(blocker / "o.mp4"), f"cannot write {blocker / 'o.mp4'}"
    else:
        odd = tmp_path / "odd"  # a frame folder: video encoders round widths to even
        odd.mkdir()
        cv2.imwrite(str(odd / "0.png"), np.zeros((48, 63, 3), np.uint8))
        args, needle = ["--sbs", str(odd)] + args[4:], "odd"
    r = subprocess.run([sys.executable, "-m", "refusion.cli.video", *args],
                       capture_output=True, text=True)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "o.mp4").exists()


def test_homography_roundtrip_and_estimate(tmp_path, photo_pair):
    _, photo = photo_pair  # natural texture: repetitive patterns make feature matching ambiguous
    vis = [cv2.resize(np.roll(photo, 2 * i, axis=1), (160, 120)) for i in range(3)]
    h_true = np.array([[1.02, 0.01, 4.0], [-0.01, 0.99, -3.0], [0.0, 0.0, 1.0]])
    # the infrared camera sees the scene through the inverse warp, at half the resolution
    inv = np.linalg.inv(h_true)
    ir = [cv2.resize(255 - cv2.warpPerspective(v, inv, (160, 120)), (80, 60)) for v in vis]
    h, info = estimate_homography(ir, vis)
    aligned = Aligner((160, 120), h)(ir[0])
    assert aligned.shape == vis[0].shape
    pts = np.float32([[40, 30], [120, 30], [80, 90]]).reshape(-1, 1, 2)
    got = cv2.perspectiveTransform(pts * 0.5, h)  # ir pixels -> visible pixels
    want = cv2.perspectiveTransform(pts, h_true)
    assert np.abs(got - want).max() < 2.0, info
    p = save_homography(tmp_path / "h.json", h, **info)
    np.testing.assert_allclose(load_homography(p), h, rtol=1e-9)
    np.save(tmp_path / "h.npy", h)
    np.testing.assert_allclose(load_homography(tmp_path / "h.npy"), h, rtol=1e-9)
    with pytest.raises(UserError, match="nope.json"):
        load_homography(tmp_path / "nope.json")


def test_m3svd_clip(tmp_path, ckpt):
    root = shared_path("data", "video", "M3SVD")
    clip = sorted((root / "ir").glob("*.mp4"))[0]
    out = tmp_path / "m3svd.mp4"
    stats = tmp_path / "s.json"
    assert main(["--ir", str(clip), "--vis", str(root / "vi" / clip.name), "-o", str(out),
                 "--weights", str(ckpt), "--backend", "onnxruntime", "--max-frames", "6", "-q",
                 "--stats-json", str(stats)]) == 0
    cap = cv2.VideoCapture(str(out))
    ok, frame = cap.read()
    assert ok and frame.shape == (480, 640, 3)
    assert json.loads(stats.read_text())["frames"] == 6 == count_frames(out)


class _CompilingBackend(TorchBackend):
    """A torch backend that says it compiles per shape, and records what it runs."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls: list[tuple[tuple[int, ...], bool]] = []

    @property
    def compiles_per_shape(self) -> bool:
        return True

    def _infer(self, batch):
        self.calls.append((batch.shape, not batch.any()))
        return super()._infer(batch)


def test_pipeline_warms_up_a_compiling_backend_first(clips, tmp_path):
    be = _CompilingBackend(FusionNet(TINY), threads=1, retain_memory=False)
    reader = PairReader(FrameSource(clips[0], "ir"), FrameSource(clips[1], "vis"))
    stats = VideoPipeline(reader, be, tmp_path / "f.mp4", batch_size=2, progress=False).run()
    # one warm-up on zeros at the visible size and batch, before any frame
    assert be.calls[0] == ((2, 2, 48, 64), True)
    assert all(not zeros for _, zeros in be.calls[1:]) and stats.frames == 8
    assert sum(shape[0] for shape, _ in be.calls[1:]) == 8


def test_video_torch_only_flags_fail_before_opening_inputs(tmp_path, capsys):
    missing = tmp_path / "missing.mp4"  # never opened: the option error comes first
    with pytest.raises(SystemExit) as exc:
        main(["--ir", str(missing), "--vis", str(missing), "-o", str(tmp_path / "o.mp4"),
              "--compile", "--backend", "onnxruntime"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "refusion-video: error: --compile needs the torch backend (--backend torch or auto), "
        "not --backend onnxruntime")
