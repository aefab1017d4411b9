"""Nothing a user made is lost: outputs never land on inputs or on each other, a video the
encoder could not finish never takes the final name, and failures around the run are one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from refusion.errors import UserError
from refusion.models import FusionConfig

TINY = FusionConfig(dim=8, blocks=1, heads=2)



@pytest.fixture(scope="module")
def ckpt(tiny_ivif_ckpt):
    return tiny_ivif_ckpt


def _video(path: Path, n: int = 6, w: int = 48, h: int = 32) -> Path:
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (w, h))
    for i in range(n):
        vw.write(np.full((h, w, 3), 20 * i, np.uint8))
    vw.release()
    return path


def _error(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _digest(*paths: Path) -> list[bytes]:
    return [p.read_bytes() for p in paths]


# --- refusion-fuse -------------------------------------------------------------------------


def test_fuse_never_writes_over_its_inputs(pair_files, ckpt, tmp_path, capsys):
    from refusion.cli.fuse import main

    a, b = pair_files
    before = _digest(a, b)
    err = _error(main, [str(a), str(b), "-o", str(b), "--weights", str(ckpt)], capsys)
    assert f"-o {b} would overwrite the input source {b}" in err
    # the same file by another spelling
    other = tmp_path / "sub" / ".." / b.name
    (tmp_path / "sub").mkdir()
    err = _error(main, [str(a), str(b), "-o", str(other), "--weights", str(ckpt)], capsys)
    assert "would overwrite the input source" in err
    hard = tmp_path / "hard.png"  # the same file under another name
    os.link(b, hard)
    err = _error(main, [str(a), str(b), "-o", str(hard), "--weights", str(ckpt)], capsys)
    assert f"-o {hard} would overwrite the input source {b}" in err
    assert _digest(a, b) == before


def test_fuse_folder_mode_checks_every_destination(photo_pair, ckpt, tmp_path, capsys):
    from refusion.cli.fuse import main

    ir, vis = photo_pair
    da, db = tmp_path / "A", tmp_path / "B"
    da.mkdir()
    db.mkdir()
    for stem in ("x", "x_panel"):
        cv2.imwrite(str(da / f"{stem}.png"), ir)
        cv2.imwrite(str(db / f"{stem}.png"), vis)
    before = _digest(*sorted(da.iterdir()))
    err = _error(main, [str(da), str(db), "-o", str(da), "--weights", str(ckpt)], capsys)
    assert "would overwrite the input source" in err and str(da / "x.png") in err
    assert _digest(*sorted(da.iterdir())) == before
    # the fused x_panel.png and the panel of x would be one file
    out = tmp_path / "out"
    err = _error(main, [str(da), str(db), "-o", str(out), "--panel", "--weights", str(ckpt)],
                 capsys)
    assert f"{out / 'x_panel.png'} is also" in err and "its own path" in err
    assert "pair 'x'" in err and "pair 'x_panel'" in err  # which two pairs meet
    assert not out.exists()


def test_threads_have_an_upper_bound(pair_files, ckpt, tmp_path, capsys):
    from refusion.cli.fuse import main

    a, b = pair_files
    err = _error(main, [str(a), str(b), "-o", str(tmp_path / "o.png"), "--weights", str(ckpt),
                        "--threads", "100000"], capsys)
    assert f"--threads 100000 is more than 4x the {os.cpu_count()} CPUs" in err


def test_opencv_log_lines_do_not_precede_the_error(pair_files, tmp_path, ckpt):
    a, _ = pair_files
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    r = subprocess.run([sys.executable, "-m", "refusion.cli.fuse", str(a), str(bad), "-o",
                        str(tmp_path / "o.png"), "--weights", str(ckpt)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"refusion-fuse: error: cannot decode image: {bad}"]


# --- refusion-video ------------------------------------------------------------------------


@pytest.fixture
def clips(tmp_path):
    return _video(tmp_path / "ir.mp4"), _video(tmp_path / "vis.mp4")


@pytest.mark.parametrize(("extra", "needle"), [
    (["-o", "{vis}"], "-o {vis} would overwrite the input --vis {vis}"),
    (["-o", "{out}", "--stats-json", "{ir}"], "--stats-json {ir} would overwrite the input --ir"),
    (["-o", "{out}", "--preview", "{out}"], "--preview {out} is also -o {out}"),
    (["-o", "{out}", "--stats-json", "{out}"], "--stats-json {out} is also -o {out}"),
    (["--homography", "{h}", "--estimate-homography", "{h}"],
     "--estimate-homography {h} would overwrite the input --homography {h}"),
])
def test_video_outputs_never_land_on_inputs_or_each_other(clips, ckpt, tmp_path, capsys,
                                                          extra, needle):
    from refusion.cli.video import main

    ir, vis = clips
    names = {"ir": str(ir), "vis": str(vis), "out": str(tmp_path / "out.mp4"),
             "h": str(tmp_path / "h.json")}
    (tmp_path / "h.json").write_text("[[1, 0, 0], [0, 1, 0], [0, 0, 1]]")
    before = _digest(ir, vis)
    err = _error(main, ["--ir", str(ir), "--vis", str(vis), "--weights", str(ckpt), "-q",
                        *[x.format(**names) for x in extra]], capsys)
    assert needle.format(**names) in err
    assert _digest(ir, vis) == before and not (tmp_path / "out.mp4").exists()


def test_a_video_the_encoder_could_not_finish_is_not_given_the_final_name(
        clips, ckpt, tmp_path, capsys, monkeypatch):
    # what a full disk does: OpenCV's writer fails silently and leaves an MP4 without index
    from refusion.engine import pipeline

    from refusion.cli.video import main

    monkeypatch.setattr(pipeline, "_readable_video", lambda path: False)
    ir, vis = clips
    out = tmp_path / "out.mp4"
    with pytest.raises(SystemExit) as exc:
        main(["--ir", str(ir), "--vis", str(vis), "-o", str(out), "--weights", str(ckpt),
              "-q"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and not out.exists()
    assert (tmp_path / "out.incomplete.mp4").is_file()
    assert "the video written cannot be read back (is the disk full?)" in err
    assert "wrote" not in err and "failed after 6 frames" in err


def test_a_stats_file_that_cannot_be_written_is_one_line(clips, ckpt, tmp_path, capsys,
                                                         monkeypatch):
    from refusion.cli import video

    def full(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(video, "atomic_write_text", full)
    ir, vis = clips
    with pytest.raises(SystemExit) as exc:
        video.main(["--ir", str(ir), "--vis", str(vis), "-o", str(tmp_path / "o.mp4"),
                    "--weights", str(ckpt), "-q", "--stats-json", str(tmp_path / "s.json")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and "Traceback" not in "\n".join(lines)
    assert lines[-1] == (f"refusion-video: error: cannot write --stats-json "
                         f"{tmp_path / 's.json'} (No space left on device)")
    assert (tmp_path / "o.mp4").is_file()  # the video itself is complete


def test_a_frame_of_another_size_mid_stream_names_the_file(tmp_path):
    from refusion.engine.video import FrameSource

    frames = tmp_path / "vis"
    frames.mkdir()
    for i in range(4):
        size = (100, 70) if i == 2 else (80, 64)
        cv2.imwrite(str(frames / f"f{i}.png"), np.zeros((size[1], size[0], 3), np.uint8))
    src = FrameSource(str(frames), "vis", fps=10)
    src.read()
    src.read()
    with pytest.raises(UserError, match=r"--vis .*f2\.png: 100x70, but the stream's first "
                                        r"frame was 80x64"):
        src.read()


def test_weights_from_the_environment_are_named_so(clips, tmp_path, capsys, monkeypatch):
    from refusion.cli.video import main

    monkeypatch.setenv("REFUSION_WEIGHTS", "bogus")
    ir, vis = clips
    err = _error(main, ["--ir", str(ir), "--vis", str(vis), "-o", str(tmp_path / "o.mp4"),
                        "-q"], capsys)
    assert err.startswith("refusion-video: error: $REFUSION_WEIGHTS bogus: no such file")


# --- colour rule on decoded video ------------------------------------------------------------


def test_a_grey_frame_from_a_lossy_video_counts_as_grey():
    from refusion.imaging import split_luma

    rng = np.random.default_rng(0)
    g = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    noisy = np.dstack([g, np.clip(g.astype(int) + rng.integers(-1, 2, g.shape), 0, 255),
                       g]).astype(np.uint8)
    y, chroma = split_luma(noisy)
    assert chroma is None
    expect = cv2.cvtColor(noisy.astype(np.float32), cv2.COLOR_BGR2YCrCb)[..., 0] / 255
    assert np.allclose(y, expect, atol=1e-6)
    colour = noisy.copy()
    colour[..., 2] = np.clip(colour[..., 2].astype(int) + 30, 0, 255)
    assert split_luma(colour)[1] is not None
