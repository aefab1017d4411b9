"""`refusion-fuse` end to end on a generated pair, and its one-line errors."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from refusion.checkpoint import save_checkpoint
from refusion.cli.fuse import main
from refusion.imaging import compose, fuse_chroma, prepare_pair
from refusion.models import FusionConfig, FusionNet


@pytest.fixture
def ckpt(tmp_path):
    return save_checkpoint(tmp_path / "tiny.safetensors",
                           {"fusion": FusionNet(FusionConfig(dim=8, blocks=1, heads=2))},
                           task="ivif")


def test_fuse_grey_and_colour(pair_files, ckpt, tmp_path):
    a, b = pair_files
    out = tmp_path / "out" / "fused.png"
    assert main([str(a), str(b), "-o", str(out), "--weights", str(ckpt)]) == 0
    img = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    src = cv2.imread(str(b))
    assert img.shape == src.shape  # colour source -> colour output
    assert img.dtype == np.uint8


def test_minmax_stretches(pair_files, ckpt, tmp_path):
    a, _ = pair_files
    out = tmp_path / "f.png"
    main([str(a), str(a), "-o", str(out), "--weights", str(ckpt), "--normalize", "minmax"])
    img = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert img.ndim == 2 and img.min() == 0 and img.max() == 255


def test_colour_rule_and_fixed_scale():
    grey = np.full((4, 4), 100, np.uint8)
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[..., 2] = 200  # red
    p = prepare_pair(grey, colour)
    assert p.chroma is not None and p.a.dtype == np.float32
    assert p.a[0, 0] == pytest.approx(100 / 255)
    assert prepare_pair(grey, grey).chroma is None
    assert prepare_pair(colour, grey).chroma is not None
    both = prepare_pair(colour, colour).chroma
    np.testing.assert_allclose(both, p.chroma, atol=1e-3)  # same chroma twice stays the same
    out = compose(np.full((4, 4), 0.5, np.float32), None)
    assert out[0, 0] == 128  # fixed scale: 0.5 -> 127.5 -> rounds to 128
    neutral = fuse_chroma(np.full((1, 1, 2), 0.5, np.float32), np.full((1, 1, 2), 0.9, np.float32))
    assert neutral[0, 0, 0] == pytest.approx(0.9, abs=1e-3)  # neutral chroma carries no weight


def _run(args):
    return subprocess.run([sys.executable, "-m", "refusion.cli.fuse", *args],
                          capture_output=True, text=True)


@pytest.mark.parametrize("case", ["missing", "unreadable", "size", "weights", "task", "ext",
                                  "unwritable", "threads", "folder-output", "no-extension"])
def test_user_errors_are_one_line(case, pair_files, ckpt, tmp_path):
    a, b = pair_files
    out = str(tmp_path / ("o.pgn" if case == "ext" else "o.png"))
    args = [str(a), str(b), "-o", out, "--weights", str(ckpt)]
    if case == "missing":
        args[0] = str(tmp_path / "nope.png")
        needle = "nope.png"
    elif case == "unreadable":
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"not an image")
        args[0] = str(bad)
        needle = "bad.png"
    elif case == "size":
        small = tmp_path / "small.png"
        cv2.imwrite(str(small), np.zeros((10, 12), np.uint8))
        args[0] = str(small)
        needle = "size mismatch"
    elif case == "weights":
        args[-1] = str(tmp_path / "missing.safetensors")
        needle = "missing.safetensors"
    elif case == "task":
        args += ["--task", "mfif"]
        needle = "trained for 'ivif'"
    elif case == "ext":
        needle = "o.pgn: cannot write images as '.pgn'"
    elif case == "threads":
        args += ["--threads", "0"]
        needle = "--threads must be at least 1, got 0"
    elif case in ("folder-output", "no-extension"):
        # each used to become a PNG file without an extension
        args[3] = str(tmp_path / "newdir") + ("/" if case == "folder-output" else "")
        needle = "with two image files, -o is the fused image"
    else:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        args[3] = str(blocker / "o.png")
        needle = f"cannot write {blocker / 'o.png'}"
    r = _run(args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "o.pgn").exists()


# --- folders, batches, panels and backends ----------------------------------------------------


def _folders(tmp_path, photo_pair):
    ir, vis = photo_pair
    da, db = tmp_path / "ir", tmp_path / "vis"
    da.mkdir()
    db.mkdir()
    for i, (h, w) in enumerate([(64, 64), (64, 64), (48, 80)]):
        cv2.imwrite(str(da / f"p{i}.png"), cv2.resize(ir, (w, h)))
        cv2.imwrite(str(db / f"p{i}.jpg"), cv2.resize(vis, (w, h)))
    cv2.imwrite(str(da / "lonely.png"), ir)
    return da, db


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_fuse_folders_batched(backend, photo_pair, ckpt, tmp_path, capsys):
    da, db = _folders(tmp_path, photo_pair)
    out = tmp_path / "out"
    assert main([str(da), str(db), "-o", str(out), "--weights", str(ckpt), "--backend", backend,
                 "--batch-size", "3", "--panel", "-q"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["p0.png", "p0_panel.png", "p1.png", "p1_panel.png", "p2.png",
                     "p2_panel.png"]
    assert cv2.imread(str(out / "p2.png")).shape == (48, 80, 3)
    assert cv2.imread(str(out / "p0_panel.png")).shape == (64, 192, 3)
    err = capsys.readouterr().err
    assert "1 images without a partner" in err and "lonely.png" in err


def test_backends_agree_on_files(pair_files, ckpt, tmp_path):
    a, b = pair_files
    outs = []
    for be in ("torch", "onnxruntime"):
        o = tmp_path / f"{be}.png"
        main([str(a), str(b), "-o", str(o), "--weights", str(ckpt), "--backend", be, "--gray"])
        outs.append(cv2.imread(str(o), cv2.IMREAD_UNCHANGED).astype(int))
    assert outs[0].ndim == 2 and np.abs(outs[0] - outs[1]).max() <= 1


def test_16bit_input_file(tmp_path, ckpt, photo_pair):
    ir, vis = photo_pair
    a = tmp_path / "ir16.png"
    cv2.imwrite(str(a), (3000 + 8 * ir.astype(np.uint16)))
    b = tmp_path / "vis.png"
    cv2.imwrite(str(b), vis)
    out = tmp_path / "f.png"
    assert main([str(a), str(b), "-o", str(out), "--weights", str(ckpt), "--backend", "torch"]) == 0
    assert cv2.imread(str(out)).shape == vis.shape


@pytest.mark.parametrize("case", ["mix", "no-common", "ext"])
def test_folder_errors(case, photo_pair, ckpt, tmp_path):
    da, db = _folders(tmp_path, photo_pair)
    if case == "mix":
        args, needle = [str(da), str(db / "p0.jpg")], "not a mix"
    elif case == "ext":
        args, needle = [str(da), str(db), "--ext", "jpgx"], "--ext: cannot write images as '.jpgx'"
    else:
        empty = tmp_path / "empty"
        empty.mkdir()
        args, needle = [str(da), str(empty)], "no image names in common"
    r = _run([*args, "-o", str(tmp_path / "o"), "--weights", str(ckpt)])
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_a_closed_pipe_ends_quietly(tmp_path):
    # `refusion weights | head -1`: the reader goes away while the command still writes
    import subprocess
    import sys

    script = ("from refusion.cli._common import cli_entry\n"
              "@cli_entry\n"
              "def main(argv=None):\n"
              "    for i in range(200000):\n"
              "        print('line', i)\n"
              "main()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"line 0\n"
    proc.stdout.close()  # more than a pipe's buffer is still to come: the writer gets EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 0 and err == "", err


def test_threads_default_to_omp_num_threads_and_follow_the_option(pair_files, ckpt, tmp_path,
                                                                   monkeypatch, capsys):
    import torch
    from refusion.engine.base import default_threads, physical_cores

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3  # a shared machine's setting is honoured
    for bad in ("", "0", "two"):
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        assert default_threads() == physical_cores()
    a, b = pair_files
    from refusion.engine.backends.torch_backend import TorchBackend

    seen = []
    infer = TorchBackend.infer
    monkeypatch.setattr(TorchBackend, "infer",
                        lambda self, x: seen.append(torch.get_num_threads()) or infer(self, x))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main([str(a), str(b), "-o", str(tmp_path / "f.png"), "--weights", str(ckpt),
                     "--backend", "torch", "--threads", "1", "--device", "cpu"]) == 0
        assert seen and set(seen) == {1}  # the torch backend ran with what it was given
        assert torch.get_num_threads() == 2  # and gave the process its own setting back
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit):
        main([str(a), str(b), "-o", str(tmp_path / "g.png"), "--weights", str(ckpt),
              "--backend", "tensorrt", "--threads", "2"])
    assert "--threads is for the CPU backends" in capsys.readouterr().err
