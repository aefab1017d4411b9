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

from refusion.cli.video import main
from refusion.errors import UserError
from refusion.models import FusionConfig, FusionNet

TINY = FusionConfig(dim=8, blocks=1, heads=2)



@pytest.fixture(scope="module")
def ckpt(tiny_ivif_ckpt):
    return tiny_ivif_ckpt


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
    prev = tmp_path / "t16_tiles.mp4"
    assert main(["--ir", str(frames), "--vis", str(vis), "--fps", "10", "-o", str(out2),
                 "--weights", str(ckpt), "--backend", "torch", "-q", "--gray",
                 "--preview", str(prev)]) == 0
    assert count_frames(out2) == 3 and count_frames(prev) == 3


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
    assert pipe.stats.output == str(out) and not list(tmp_path.glob(".cut*"))

    # Stopped again over that file: it stays as it was; the new frames go beside it.
    before = out.read_bytes()
    pipe = VideoPipeline(PairReader(FrameSource(ir, "ir"), FrameSource(vis, "vis")),
                         _InterruptingBackend(FusionNet(TINY)), out, progress=False,
                         queue_size=2)
    with pytest.raises(KeyboardInterrupt):
        pipe.run()
    kept = tmp_path / "cut.incomplete.mp4"
    assert out.read_bytes() == before
    assert pipe.stats.output == str(kept) and count_frames(kept) == pipe.stats.frames >= 3


class _FailingBackend(TorchBackend):
    """A backend that fails on its third call (an out-of-memory, a crashed runtime)."""

    def _infer(self, batch):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 3:
            raise RuntimeError("backend exploded")
        return super()._infer(batch)


def _run_with_deadline(pipe, seconds=60.0):
    """Run the pipeline in a thread; a hang fails the test instead of freezing the suite."""
    import threading

    box: dict = {}

    def target():
        try:
            box["stats"] = pipe.run()
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "the pipeline hung"
    return box


def _frames_with_a_broken_one(folder: Path, n: int, broken: int) -> Path:
    """A folder of ``n`` frames ``0.png``... whose frame ``broken`` cannot be decoded."""
    folder.mkdir()
    for i in range(n):
        cv2.imwrite(str(folder / f"{i}.png"), _scene(i, 64, 48))
    (folder / f"{broken}.png").write_bytes(b"not a png")
    return folder


def test_a_failing_stage_never_hangs_and_keeps_the_frames(tmp_path):
    ir = write_video(tmp_path / "ir.mp4", 30)
    vis = write_video(tmp_path / "vis.mp4", 30)
    out = tmp_path / "f.mp4"
    pipe = VideoPipeline(PairReader(FrameSource(ir, "ir"), FrameSource(vis, "vis")),
                         _FailingBackend(FusionNet(TINY)), out, progress=False, queue_size=2)
    box = _run_with_deadline(pipe)
    assert isinstance(box.get("error"), RuntimeError) and "exploded" in str(box["error"])
    assert not out.exists()  # the final name only ever holds a finished run
    salvaged = tmp_path / "f.incomplete.mp4"
    assert pipe.stats.salvaged == str(salvaged) and count_frames(salvaged) == 2
    assert not list(tmp_path.glob(".f*"))  # no temp file left
    # failing again: the earlier salvage is kept too
    before = salvaged.read_bytes()
    pipe = VideoPipeline(PairReader(FrameSource(ir, "ir"), FrameSource(vis, "vis")),
                         _FailingBackend(FusionNet(TINY)), out, progress=False, queue_size=2)
    assert isinstance(_run_with_deadline(pipe).get("error"), RuntimeError)
    again = tmp_path / "f.incomplete-2.mp4"
    assert pipe.stats.salvaged == str(again) and count_frames(again) == 2
    assert salvaged.read_bytes() == before and not out.exists()

    # a frame that cannot be decoded (decode stage): same outcome, the reader's error
    frames = _frames_with_a_broken_one(tmp_path / "frames", 6, broken=3)
    out2 = tmp_path / "g.mp4"
    pipe = VideoPipeline(PairReader(FrameSource(frames, "ir"), FrameSource(vis, "vis")),
                         TorchBackend(FusionNet(TINY)), out2, progress=False)
    box = _run_with_deadline(pipe)
    assert isinstance(box.get("error"), UserError) and "3.png" in str(box["error"])
    assert not out2.exists()


def test_the_command_says_where_a_failed_run_left_its_frames(tmp_path, ckpt, capsys):
    frames = _frames_with_a_broken_one(tmp_path / "frames", 8, broken=5)
    out = tmp_path / "o.mp4"
    with pytest.raises(SystemExit) as exc:
        main(["--ir", str(frames), "--vis", str(frames), "-o", str(out), "--weights",
              str(ckpt), "--backend", "torch", "-q"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "cannot decode image" in err and "5.png" in err
    kept = tmp_path / "o.incomplete.mp4"
    # pairing looks one infrared frame ahead; the pair before 5.png is still made (it used
    # to fail with it: 4 frames)
    assert f"failed after 5 frames; they are kept in {kept}" in err and "wrote" not in err
    assert count_frames(kept) == 5 and not out.exists()


def test_sources_read_folders_in_natural_order_and_files_at_their_own_rate(tmp_path):
    frames = tmp_path / "0001"  # a folder named with digits is a folder, not camera 1
    frames.mkdir()
    for i in (1, 2, 9, 10, 11):
        cv2.imwrite(str(frames / f"frame_{i}.png"), np.full((8, 8), i, np.uint8))
    src = FrameSource(str(frames), "ir", fps=9)
    assert not src.live and src.fps == 9
    got = [int(src.read()[0][0, 0]) for _ in range(5)]
    assert got == [1, 2, 9, 10, 11]
    vis = write_video(tmp_path / "vis.mp4", 3, fps=30.0)
    assert FrameSource(vis, "vis", fps=9).fps == pytest.approx(30.0)  # --fps is the folder's
    # a macOS fork is not a frame; a broken link or two frames of one name fail at opening
    (frames / "._frame_3.png").write_bytes(b"\x00\x05\x16\x07")
    src = FrameSource(str(frames), "ir", fps=9)
    assert [int(src.read()[0][0, 0]) for _ in range(5)] == [1, 2, 9, 10, 11]
    os.symlink(tmp_path / "gone.png", frames / "frame_12.png")
    with pytest.raises(UserError, match="--ir: .*frame_12.png: broken link to .*gone.png"):
        FrameSource(str(frames), "ir", fps=9)
    os.remove(frames / "frame_12.png")
    cv2.imwrite(str(frames / "frame_2.jpg"), np.full((8, 8), 2, np.uint8))
    with pytest.raises(UserError, match="--ir: two images named 'frame_2' in .*: "
                                        "frame_2.jpg and frame_2.png"):
        FrameSource(str(frames), "ir", fps=9)


class _FakeCamera:
    """cv2.VideoCapture stand-in for a camera: frame k has value k (0 is grabbed at opening),
    one every ``period`` seconds; camera index 9 stalls after its first two frames (a thermal
    core that hangs, or a much slower one)."""

    def __init__(self, index, period=0.005):
        self.k, self.index, self.period = 0, index, period

    def isOpened(self):  # noqa: N802 - OpenCV's name
        return True

    def get(self, prop):
        return 30.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self):
        if self.index == 9 and self.k >= 3:
            time.sleep(3600)  # never returns within a test: the grabber is a daemon thread
        time.sleep(self.period)
        frame = np.full((6, 8, 3), self.k % 256, np.uint8)
        self.k += 1
        return True, frame

    def release(self):
        pass


def test_two_cameras_share_one_clock_and_skip_the_stale_first_frame(monkeypatch):
    monkeypatch.setattr(cv2, "VideoCapture", _FakeCamera)
    ir = FrameSource(0, "ir")
    time.sleep(0.05)  # the second camera opens later
    vis = FrameSource(1, "vis")
    assert ir.live and vis.live and ir._t0 != vis._t0
    reader = PairReader(ir, vis)
    assert ir._t0 == vis._t0 and not reader.stats.warnings
    got_ir, got_vis, _ = reader.read()
    assert got_vis[0, 0, 0] >= 1 and got_ir[0, 0, 0] >= 1  # not the frames grabbed at opening
    reader.release()


class _SlowBackend(TorchBackend):
    """Slower than the fake cameras, so that live frames are dropped while it works."""

    def _infer(self, batch):
        time.sleep(0.03)
        return super()._infer(batch)


def test_max_frames_counts_frames_written_from_cameras(monkeypatch, tmp_path):
    monkeypatch.setattr(cv2, "VideoCapture", _FakeCamera)
    reader = PairReader(FrameSource(0, "ir"), FrameSource(1, "vis"))
    out = tmp_path / "live.mp4"
    pipe = VideoPipeline(reader, _SlowBackend(FusionNet(TINY)), out, progress=False,
                         max_frames=8, queue_size=1)
    box = _run_with_deadline(pipe)
    assert "error" not in box, box.get("error")
    monkeypatch.undo()  # count_frames needs the real cv2.VideoCapture
    assert pipe.stats.frames == 8  # not 8 read, fewer written
    # re-timed onto 30 fps: the 8 fused frames plus repeats where the network was slower
    assert count_frames(out) == 8 + pipe.stats.repeated
    assert pipe.stats.dropped > 0  # the cameras did outpace the network


class _VisibleBackend(TorchBackend):
    """Returns the visible luma as the fused image, so that each output frame is known."""

    def _infer(self, batch):
        return batch[:, 1:2].copy()


def _stamped_reader(tmp_path: Path, values: list[int], stamps: list[float]) -> PairReader:
    """Frame folders at 10 fps whose pairs come out stamped ``stamps`` and marked live, as a
    camera's (stamped on arrival) would; pair k is uniform grey ``values[k]``."""
    for name in ("ir", "vis"):
        d = tmp_path / name
        d.mkdir(exist_ok=True)
        for k, v in enumerate(values):
            cv2.imwrite(str(d / f"{k}.png"), np.full((48, 64), v, np.uint8))
    reader = PairReader(FrameSource(tmp_path / "ir", "ir", fps=10),
                        FrameSource(tmp_path / "vis", "vis", fps=10))
    read, it = reader.read, iter(stamps)

    def stamped():
        got = read()
        return None if got is None else (got[0], got[1], next(it))

    reader.read = stamped
    reader.live = True
    return reader


def _grey_levels(path: Path) -> list[int]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(int(round(float(f.mean()))))
    cap.release()
    return out


@pytest.mark.parametrize("retime", [None, False])
def test_a_camera_run_is_retimed_to_play_in_real_time(tmp_path, retime):
    # stamps at 10 fps: slots 0, 1, 4, 4, 5, 9: a gap of two slots after the second frame, the
    # third overtaken in its slot by the fourth, a gap of three before the last
    values = [20, 60, 100, 140, 180, 220]
    reader = _stamped_reader(tmp_path, values, [0.0, 0.1, 0.42, 0.44, 0.5, 0.9])
    out, preview = tmp_path / "live.mp4", tmp_path / "preview.mp4"
    pipe = VideoPipeline(reader, _VisibleBackend(FusionNet(TINY)), out, preview=preview,
                         progress=False, queue_size=8, retime=retime)
    box = _run_with_deadline(pipe)
    assert "error" not in box, box.get("error")
    got = _grey_levels(out)
    if retime is False:  # every fused frame once, at the nominal rate
        assert [abs(g - v) <= 10 for g, v in zip(got, values)] == [True] * 6 and len(got) == 6
        assert pipe.stats.repeated == pipe.stats.merged == 0
        return
    want = [20, 60, 60, 60, 140, 180, 180, 180, 180, 220]  # 1 s at 10 fps, as long as the run
    assert len(got) == len(want) and all(abs(g - w) <= 10 for g, w in zip(got, want)), got
    assert count_frames(preview) == len(want)  # the preview keeps the same timeline
    s = pipe.stats
    assert (s.frames, s.repeated, s.merged) == (5, 5, 1)
    assert "5 repeated and 1 merged" in s.summary()


@pytest.mark.parametrize("flag", [[], ["--no-retime"]])
def test_the_command_retimes_camera_runs_unless_told_not_to(monkeypatch, tmp_path, ckpt, flag):
    monkeypatch.setattr(cv2, "VideoCapture", _FakeCamera)
    out, stats = tmp_path / "live.mp4", tmp_path / "stats.json"
    assert main(["--ir", "0", "--vis", "1", "-o", str(out), "--weights", str(ckpt), "-q",
                 "--max-frames", "6", "--stats-json", str(stats), *flag]) == 0
    monkeypatch.undo()
    s = json.loads(stats.read_text())
    assert s["frames"] == 6
    # the fake cameras run at 200 fps and report 30: frames may share slots or leave gaps
    assert count_frames(out) == 6 + s["repeated"]
    assert s["retimed"] is not bool(flag)
    if flag:
        assert s["repeated"] == s["merged"] == 0


def test_file_frames_are_not_retimed(tmp_path):
    # a file's pairs are stamped by index already: the default leaves them one frame each
    reader = _stamped_reader(tmp_path, [20, 60, 100], [0.0, 0.5, 0.6])
    reader.live = False
    out = tmp_path / "f.mp4"
    pipe = VideoPipeline(reader, _VisibleBackend(FusionNet(TINY)), out, progress=False)
    assert "error" not in _run_with_deadline(pipe)
    assert count_frames(out) == 3 and pipe.retime is None


def test_a_stalled_infrared_camera_does_not_hold_the_visible_one_back(monkeypatch):
    # pairing with a camera takes its newest frame (no lookahead): camera 9 stops after two
    # frames and the visible frames keep coming, each with that last infrared frame
    monkeypatch.setattr(cv2, "VideoCapture", _FakeCamera)
    reader = PairReader(FrameSource(9, "ir"), FrameSource(1, "vis"))
    box: dict = {}

    def read_pairs():
        box["pairs"] = [reader.read() for _ in range(6)]

    import threading

    t = threading.Thread(target=read_pairs, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "pairing waited for the stalled camera"
    irs = [int(p[0][0, 0, 0]) for p in box["pairs"]]
    vis = [int(p[1][0, 0, 0]) for p in box["pairs"]]
    assert set(irs) <= {1, 2} and irs == sorted(irs)  # only frames 1 and 2 came after opening
    assert vis == sorted(set(vis)) and vis[0] >= 1  # new visible frames, in order
    reader.vis.release()


def test_a_camera_with_a_file_is_said_to_be_unsynchronised(monkeypatch, tmp_path):
    vis = FrameSource(write_video(tmp_path / "vis.mp4", 3), "vis")
    monkeypatch.setattr(cv2, "VideoCapture", _FakeCamera)
    reader = PairReader(FrameSource(0, "ir"), vis)
    assert any("not synchronised" in w for w in reader.stats.warnings)


def test_a_live_source_never_waits_for_a_full_queue(tmp_path):
    import queue

    vis = write_video(tmp_path / "vis.mp4", 2)
    pipe = VideoPipeline(PairReader(FrameSource(vis, "ir"), FrameSource(vis, "vis")),
                         TorchBackend(FusionNet(TINY)), tmp_path / "o.mp4", progress=False)
    class _Recording(queue.Queue):
        blocking_puts = 0

        def put(self, item, block=True, timeout=None):
            self.blocking_puts += bool(block)
            super().put(item, block, timeout)

    q = _Recording(maxsize=2)
    for item in ("a", "b"):
        q.put_nowait(item)
    assert pipe._put(q, "c", live=True)
    assert q.blocking_puts == 0  # the camera's reader never waited on the queue
    assert [q.get_nowait(), q.get_nowait()] == ["b", "c"]  # the oldest frame went
    assert pipe.stats.live_dropped == pipe.stats.dropped == 1
    pipe.stats.frames, pipe.stats.decode_s = 2, 0.004
    assert "1 dropped (1 while busy); per frame: decode 2.0 ms," in pipe.stats.summary()
    pipe.reader.release()


def test_a_stretched_infrared_frame_is_warned_about(tmp_path, ckpt, capsys):
    from refusion.engine.video import stretch_warning

    assert stretch_warning((640, 512), (1280, 1024)) is None  # same 5:4, only scaled
    assert stretch_warning((640, 512), (1920, 1080)).startswith(
        "the infrared frames (640x512) and the visible ones (1920x1080) differ in aspect ratio")
    assert "stretched 1.42x" in stretch_warning((640, 512), (1920, 1080))
    ir = write_video(tmp_path / "ir.mp4", 2, 40, 40)  # square infrared beside 64x48 visible
    vis = write_video(tmp_path / "vis.mp4", 2)
    args = ["--ir", str(ir), "--vis", str(vis), "--weights", str(ckpt), "--backend", "torch",
            "-q"]
    assert main([*args, "-o", str(tmp_path / "a.mp4")]) == 0
    assert "warning: the infrared frames (40x40)" in capsys.readouterr().err
    h = tmp_path / "h.json"
    save_homography(h, np.eye(3))
    assert main([*args, "-o", str(tmp_path / "b.mp4"), "--homography", str(h)]) == 0
    assert "aspect ratio" not in capsys.readouterr().err  # the homography aligns it


def test_a_16bit_thermal_video_file_is_read_whole(tmp_path, ckpt):
    path = str(tmp_path / "ir16.mkv")
    vw = cv2.VideoWriter(path, cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"FFV1"), 10, (64, 48),
                         [cv2.VIDEOWRITER_PROP_DEPTH, cv2.CV_16U,
                          cv2.VIDEOWRITER_PROP_IS_COLOR, 0])
    if not vw.isOpened():
        pytest.skip("this OpenCV build writes no 16-bit FFV1 video")
    for i in range(3):
        vw.write(7000 + 40 * _scene(i, 64, 48)[..., 1].astype(np.uint16) // 10 + i)
    vw.release()
    frame, _ = FrameSource(path, "ir").read()
    # OpenCV's default conversion would give 8-bit BGR holding the high byte (27..31 here)
    assert frame.dtype == np.uint16 and frame.ndim == 2 and frame.min() >= 7000
    out = tmp_path / "o.mp4"
    assert main(["--ir", path, "--vis", str(write_video(tmp_path / "vis.mp4", 3)), "-o",
                 str(out), "--weights", str(ckpt), "--backend", "torch", "-q"]) == 0
    assert count_frames(out) == 3


class _ShapeRecorder(TorchBackend):
    """Records the batch shapes it runs, and says it compiles per shape (as --compile does)."""

    compiles_per_shape = True

    def _infer(self, batch):
        self.shapes = [*getattr(self, "shapes", []), batch.shape]
        return super()._infer(batch)


def test_a_compiled_backend_only_ever_sees_the_warmed_up_batch(tmp_path):
    ir = write_video(tmp_path / "ir.mp4", 7)
    vis = write_video(tmp_path / "vis.mp4", 7)
    out = tmp_path / "b.mp4"
    be = _ShapeRecorder(FusionNet(TINY))
    pipe = VideoPipeline(PairReader(FrameSource(ir, "ir"), FrameSource(vis, "vis")), be, out,
                         progress=False, batch_size=4)
    pipe.run()
    assert set(be.shapes) == {(4, 2, 48, 64)}  # warm-up and every batch, the last one padded
    assert len(be.shapes) == 3  # warm-up, 4 frames, 3 frames + 1 copy (not 7 padded batches)
    assert count_frames(out) == 7 and pipe.stats.frames == 7


class _BatchRecorder(TorchBackend):
    def _infer(self, batch):
        self.sizes = [*getattr(self, "sizes", []), batch.shape[0]]
        return super()._infer(batch)


@pytest.mark.parametrize("queue_size", [1, 4])
def test_the_batch_size_is_not_capped_by_the_queue(tmp_path, queue_size):
    # batches used to take only what was waiting in a queue of --queue frames: --batch-size 8
    # with --queue 1 ran 40 batches of one
    ir = write_video(tmp_path / "ir.mp4", 10)
    vis = write_video(tmp_path / "vis.mp4", 10)
    be = _BatchRecorder(FusionNet(TINY), threads=1, retain_memory=False)
    pipe = VideoPipeline(PairReader(FrameSource(ir, "ir"), FrameSource(vis, "vis")), be,
                         tmp_path / "o.mp4", progress=False, batch_size=4, queue_size=queue_size)
    pipe.run()
    assert be.sizes == [4, 4, 2] and pipe.stats.frames == 10


def test_odd_frame_sizes_are_padded_not_cropped(tmp_path, ckpt, capsys):
    frames = tmp_path / "odd"
    frames.mkdir()
    for i in range(2):
        cv2.imwrite(str(frames / f"{i}.png"), _scene(i, 63, 47))
    out = tmp_path / "o.mp4"
    assert main(["--ir", str(frames), "--vis", str(frames), "-o", str(out), "--weights",
                 str(ckpt), "--backend", "torch", "-q"]) == 0
    cap = cv2.VideoCapture(str(out))
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape[:2] == (48, 64)  # every fused pixel kept (the encoder's 46x62)
    assert "odd frame size, padded by one pixel" in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_mid_run_exits_130_with_a_playable_file(tmp_path, ckpt, sigint_default, sig):
    # SIGTERM is what docker stop / systemctl stop send: the same clean stop as Ctrl-C.
    # sigint_default: a child started from a background pytest would inherit SIGINT ignored
    # and never see the signal; a handled SIGINT is reset to the default at exec.
    # The clips are long enough (several seconds of fusion) that the signal lands mid-run.
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
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert 1 <= count_frames(out) < 4000 and not list(tmp_path.glob(".sig*"))


@pytest.mark.parametrize("case", ["missing", "unreadable", "no-vis", "bad-homography",
                                  "not-mp4", "odd-sbs", "unwritable", "task", "preview-avi",
                                  "stats-unwritable", "fps"])
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
    elif case == "fps":
        args += ["--fps", "nan"]
        needle = "--fps must be a positive number, got nan"
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
    # every batch at the warmed-up size (a short one padded), covering the 8 frames
    assert {shape for shape, _ in be.calls[1:]} == {(2, 2, 48, 64)}
    assert len(be.calls[1:]) == 4  # full batches: a file's frames wait for one another


def test_video_torch_only_flags_fail_before_opening_inputs(tmp_path, capsys):
    missing = tmp_path / "missing.mp4"  # never opened: the option error comes first
    with pytest.raises(SystemExit) as exc:
        main(["--ir", str(missing), "--vis", str(missing), "-o", str(tmp_path / "o.mp4"),
              "--compile", "--backend", "onnxruntime"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "refusion-video: error: --compile needs the torch backend (--backend torch or auto), "
        "not --backend onnxruntime")


def _frame_folders(tmp_path, n=12, drop_ir=None):
    ir_dir, vis_dir = tmp_path / "irf", tmp_path / "visf"
    ir_dir.mkdir()
    vis_dir.mkdir()
    for i in range(n):
        img = np.zeros((48, 64), np.uint8)
        img[:, (i * 5) % 64:] = 200
        img[0, 0] = i  # the frame's number, readable back
        cv2.imwrite(str(ir_dir / f"frame_{i}.png"), img)
        cv2.imwrite(str(vis_dir / f"frame_{i}.png"), img)
    if drop_ir is not None:
        (ir_dir / f"frame_{drop_ir}.png").unlink()
    return ir_dir, vis_dir


def test_frame_folders_pair_by_name_when_one_misses_a_frame(tmp_path):
    # by position, every pair after the gap was one frame off, with a length warning only
    ir_dir, vis_dir = _frame_folders(tmp_path, drop_ir=5)
    reader = PairReader(FrameSource(ir_dir, "ir"), FrameSource(vis_dir, "vis"))
    assert any("have no --ir frame of the same name" in w and "frame_5.png" in w
               for w in reader.stats.warnings)
    numbers = []
    while (got := reader.read()) is not None:
        ir, vis, _ = got
        assert ir[0, 0] == vis[0, 0]
        numbers.append(int(ir[0, 0]))
    assert numbers == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]
    reader.release()


def test_a_bad_infrared_frame_read_ahead_keeps_the_pairs_before_it(tmp_path):
    ir_dir, vis_dir = _frame_folders(tmp_path, n=10)
    cv2.imwrite(str(ir_dir / "frame_7.png"), np.zeros((30, 30), np.uint8))
    reader = PairReader(FrameSource(ir_dir, "ir"), FrameSource(vis_dir, "vis"))
    got = [reader.read() for _ in range(7)]  # pair 6 used to fail with frame 7's error
    assert [int(g[0][0, 0]) for g in got] == list(range(7))
    with pytest.raises(UserError, match="frame_7.png: 30x30"):
        reader.read()
    reader.release()


def test_separate_frame_rates_for_two_folders(tmp_path, ckpt):
    ir_dir, vis_dir = _frame_folders(tmp_path, n=12)
    reader = PairReader(FrameSource(ir_dir, "ir", 15.0), FrameSource(vis_dir, "vis", 30.0))
    numbers = []
    while (got := reader.read()) is not None:
        numbers.append(int(got[0][0, 0]))
    # each 15 Hz frame serves about two 30 Hz frames (the nearest in time)
    assert len(numbers) == 12 and all(abs(2 * n - i) <= 1 for i, n in enumerate(numbers))
    assert numbers[-1] <= 6
    out = tmp_path / "o.mp4"
    assert main(["--ir", str(ir_dir), "--vis", str(vis_dir), "--ir-fps", "15", "--vis-fps",
                 "30", "-o", str(out), "--weights", str(ckpt), "--backend", "torch", "-q"]) == 0


def test_homography_files_are_judged_up_to_scale_and_by_coverage(tmp_path):
    from refusion.engine.video import homography_coverage, homography_warnings

    small = tmp_path / "small.json"
    small.write_text(json.dumps({"homography": [[1e-5, 0, 0], [0, 1e-5, 0], [0, 0, 1e-5]]}))
    np.testing.assert_allclose(load_homography(small), np.eye(3))  # the identity, up to scale
    sing = tmp_path / "sing.json"
    sing.write_text(json.dumps([[1, 0, 0], [1, 0, 0], [0, 0, 1]]))
    with pytest.raises(UserError, match="singular"):
        load_homography(sing)
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((3, 3), np.nan))
    with pytest.raises(UserError, match="NaN"):
        load_homography(nan)
    cplx = tmp_path / "c.npy"
    np.save(cplx, np.eye(3) * (1 + 1j))
    with pytest.raises(UserError, match="not real numbers"):
        load_homography(cplx)
    with pytest.raises(UserError, match="is a folder"):
        load_homography(tmp_path)
    far = np.array([[1.0, 0, 10000], [0, 1, 0], [0, 0, 1]])
    assert homography_coverage(far, (64, 48), (64, 48)) == 0.0
    assert homography_coverage(np.eye(3), (64, 48), (64, 48)) == 1.0
    half = np.array([[1.0, 0, 32], [0, 1, 0], [0, 0, 1]])  # shifted by half the width
    assert homography_coverage(half, (64, 48), (64, 48)) == pytest.approx(0.5, abs=0.03)
    # the estimate of two unrelated scenes: a handful of chance inliers among many matches
    doubts = homography_warnings({"method": "orb-ransac", "matches": 4420, "inliers": 50,
                                  "coverage": 0.3})
    assert len(doubts) == 2 and "same scene" in doubts[0] and "30 %" in doubts[1]
    assert homography_warnings({"method": "orb-ransac+ecc", "matches": 7151,
                                "inliers": 6025, "coverage": 0.9}) == []
    # .npy is written as .npy (it used to be JSON under that name, unreadable by --homography)
    h = np.array([[1.01, 0, 3], [0, 0.99, -2], [0, 0, 1]])
    np.testing.assert_allclose(load_homography(save_homography(tmp_path / "h.npy", h)), h)
    with pytest.raises(UserError, match="as .json or .npy"):
        save_homography(tmp_path / "h.txt", h)


@pytest.mark.parametrize("case", ["weights", "estimate-with-output", "empty-weights",
                                  "calib", "off-frame", "estimate-suffix", "bad-checkpoint",
                                  "task"])
def test_more_video_option_errors(tmp_path, ckpt, capsys, case):
    ir_dir, vis_dir = _frame_folders(tmp_path, n=3)
    mine = tmp_path / "mine.safetensors"
    mine.write_bytes(ckpt.read_bytes())
    base = ["--ir", str(ir_dir), "--vis", str(vis_dir), "-q"]
    far = tmp_path / "far.json"
    far.write_text(json.dumps({"homography": [[1, 0, 10000], [0, 1, 0], [0, 0, 1]]}))
    args, needle = {
        "weights": (["-o", str(tmp_path / "o.mp4"), "--weights", str(mine), "--stats-json",
                     str(mine)], "would overwrite the input --weights"),
        "estimate-with-output": (["--estimate-homography", str(tmp_path / "h.json"), "-o",
                                  str(tmp_path / "o.mp4")], "would write nothing"),
        "empty-weights": (["-o", str(tmp_path / "o.mp4"), "--weights", ""], "--weights is empty"),
        "calib": (["--estimate-homography", str(tmp_path / "h.json"), "--calib-frames", "0"],
                  "--calib-frames must be at least 1"),
        "off-frame": (["-o", str(tmp_path / "o.mp4"), "--weights", str(ckpt), "--homography",
                       str(far)], "entirely off the visible one"),
        "estimate-suffix": (["--estimate-homography", str(tmp_path / "h.txt")],
                            "write a .json or .npy file"),
        "bad-checkpoint": (["-o", str(tmp_path / "o.mp4"), "--weights", str(far)],
                           "neither a refusion .safetensors checkpoint nor a torch .pth"),
        # the option is named as given (a loop over outputs once renamed it --stats-json)
        "task": (["-o", str(tmp_path / "o.mp4"), "--weights", str(ckpt), "--task", "mif"],
                 f"error: --weights {ckpt} was trained for 'ivif', not 'mif'"),
    }[case]
    with pytest.raises(SystemExit) as exc:
        main(base + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and needle in err[-1], err
    assert not any(" -> " in line for line in err)  # failed before the run's banner
    assert mine.read_bytes() == ckpt.read_bytes() and not (tmp_path / "o.mp4").exists()


def test_a_camera_batch_is_not_held_for_a_full_batch(monkeypatch, tmp_path):
    # with a backend compiled for batch 4, a camera that stalls after two frames used to have
    # both held until two more came (never): nothing written, and a Ctrl-C lost them
    import threading

    import refusion.engine.pipeline as pipeline_module

    monkeypatch.setattr(cv2, "VideoCapture", _FakeCamera)
    monkeypatch.setattr(pipeline_module, "ABORT_GRACE_S", 0.2)
    reader = PairReader(FrameSource(0, "ir"), FrameSource(9, "vis"))  # 9 stalls
    be = _ShapeRecorder(FusionNet(TINY), threads=1, retain_memory=False)
    pipe = VideoPipeline(reader, be, tmp_path / "live.mp4", progress=False, batch_size=4,
                         retime=False)
    t = threading.Thread(target=lambda: _swallow(pipe.run), daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while pipe.stats.frames < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    written = pipe.stats.frames
    pipe.stop_reading.set()
    pipe.abort.set()
    t.join(10)
    assert written == 2, written  # the two frames the camera gave, each in a padded batch
    assert set(be.shapes) == {(4, 2, 6, 8)}


def _swallow(fn):
    import contextlib

    with contextlib.suppress(BaseException):  # the test aborts the run on purpose
        fn()


def test_folders_sharing_a_few_names_by_chance_pair_by_position(tmp_path):
    ir_dir, vis_dir = tmp_path / "ir", tmp_path / "vis"
    ir_dir.mkdir()
    vis_dir.mkdir()
    for i in range(1, 13):  # 1..12 beside 01..12: only 10, 11 and 12 coincide
        img = np.full((8, 8), i, np.uint8)
        cv2.imwrite(str(ir_dir / f"{i}.png"), img)
        cv2.imwrite(str(vis_dir / f"{i:02d}.png"), img)
    reader = PairReader(FrameSource(ir_dir, "ir"), FrameSource(vis_dir, "vis"))
    assert not reader.stats.warnings
    pairs = []
    while (got := reader.read()) is not None:
        pairs.append((int(got[0][0, 0]), int(got[1][0, 0])))
    assert pairs == [(i, i) for i in range(1, 13)]


def test_a_video_stream_is_judged_grey_or_colour_once():
    from refusion.engine.preprocess import FramePreprocessor

    pre = FramePreprocessor()
    grey = np.full((8, 8), 90, np.uint8)
    tinted = np.dstack([grey, grey, grey + 12])  # a colour cast on the first frame
    nearly = np.dstack([grey, grey, grey + 2])  # a later, dimmer frame of the same clip
    assert pre.pre(grey, tinted).chroma is not None
    assert pre.pre(grey, nearly).chroma is not None  # still colour: no flicker
    fresh = FramePreprocessor()
    assert fresh.pre(grey, nearly).chroma is None  # judged alone, it is grey


def test_coverage_is_the_same_for_a_homography_and_its_negative():
    from refusion.engine.video import homography_coverage

    h = np.array([[0.0, 0, 64], [0, 3072, 0], [1, 0, 0]])  # H[2, 2] = 0: not normalised
    assert homography_coverage(h, (64, 48), (64, 48)) == homography_coverage(-h, (64, 48),
                                                                              (64, 48))
    assert homography_coverage(-np.eye(3), (64, 48), (64, 48)) == 1.0


def test_estimating_a_homography_needs_no_weights(tmp_path, capsys):
    ir_dir, vis_dir = _frame_folders(tmp_path, n=3)
    out = tmp_path / "h.json"
    assert main(["--ir", str(ir_dir), "--vis", str(vis_dir), "--estimate-homography", str(out),
                 "--weights", "no-such-weights", "-q"]) == 0
    assert "homography" in json.loads(out.read_text())
