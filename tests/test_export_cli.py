"""`refusion-export` end to end on a small checkpoint, and its one-line errors."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys

import pytest
from refusion.export import read_onnx_metadata

from refusion.checkpoint import save_checkpoint
from refusion.cli.export import main
from refusion.models import FusionConfig, FusionNet

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture
def ckpt(tmp_path):
    net = FusionNet(FusionConfig(dim=8, blocks=1, heads=2))
    return save_checkpoint(tmp_path / "tiny.safetensors", {"fusion": net}, task="mfif")


def test_export_fp32_and_fp16(ckpt, tmp_path, capsys):
    out = tmp_path / "out" / "model.onnx"
    assert main([str(ckpt), "-o", str(out)]) == 0
    meta = read_onnx_metadata(out)
    assert meta["task"] == "mfif" and meta["precision"] == "fp32"
    err = capsys.readouterr().err
    assert "ORT fp32 vs PyTorch" in err and f"wrote {out}" in err  # progress lines
    out16 = tmp_path / "model16.onnx"
    assert main([str(ckpt), "-o", str(out16), "--fp16", "--check-size", "40x56", "-q"]) == 0
    assert read_onnx_metadata(out16)["precision"] == "fp16"
    assert capsys.readouterr().err == ""  # --quiet: only errors
    # In-process, the command leaves the logger as it found it (it once kept a handler on the
    # stderr of its first call and stopped propagating, which hid later records from callers).
    log = logging.getLogger("refusion.export")
    assert log.handlers == [] and log.propagate and log.level == logging.NOTSET


def _error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_one_line_errors(ckpt, tmp_path, capsys):
    o = ["-o", str(tmp_path / "m.onnx")]
    err = _error([str(tmp_path / "nope.pth"), *o], capsys)
    assert err.startswith("refusion-export: error: checkpoint not found")
    engine = ["--engine", str(tmp_path / "m.plan")]
    assert "--min must be HEIGHTxWIDTH" in _error([str(ckpt), *o, *engine, "--min", "64"], capsys)
    err = _error([str(ckpt), *o, *engine, "--min", "720x720", "--opt", "480x640"], capsys)
    assert "height must satisfy min <= opt <= max" in err
    assert "--batch" in _error([str(ckpt), *o, *engine, "--batch", "0"], capsys)
    assert "add --engine" in _error([str(ckpt), *o, "--max", "1080x1920"], capsys)
    assert ".onnx" in _error([str(ckpt), "-o", str(tmp_path / "m.plan")], capsys)
    assert "--opset" in _error([str(ckpt), *o, "--opset", "13"], capsys)
    assert "is newer than this torch can export" in _error([str(ckpt), *o, "--opset", "99"],
                                                           capsys)
    from torch.onnx import _constants

    # the limit is the TorchScript exporter's (the one used), not the dynamo exporter's
    newest = getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", None)
    if newest is not None and newest < _constants.ONNX_MAX_OPSET:
        err = _error([str(ckpt), *o, "--opset", str(newest + 1)], capsys)
        assert f"(17 to {newest})" in err
    assert "--check-size" in _error([str(ckpt), *o, "--fp16", "--check-size", "big"], capsys)
    # it sizes the FP16 check only: without --fp16 it used to be ignored without a word
    assert "add --fp16" in _error([str(ckpt), *o, "--check-size", "64x64"], capsys)
    assert "skipped with --no-check" in _error([str(ckpt), *o, "--fp16", "--no-check",
                                                "--check-size", "64x64"], capsys)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    assert "refusion-export: error:" in _error([str(bad), *o], capsys)
    # an output under a file fails before the export, naming the output (not a temp file)
    err = _error([str(ckpt), "-o", str(bad / "m.onnx")], capsys)
    assert f"cannot write {bad / 'm.onnx'}: {bad} is a file, not a folder" in err
    assert not (tmp_path / "m.onnx").exists()
    # the weights are named as given: positional CKPT or --weights
    run = tmp_path / "run"
    run.mkdir()
    assert f"error: checkpoint {run} is a folder" in _error([str(run), *o], capsys)
    assert f"error: --weights {run} is a folder" in _error(["--weights", str(run), *o], capsys)


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed")
def test_engine_without_tensorrt_says_what_to_install(ckpt, tmp_path, capsys):
    err = _error([str(ckpt), "-o", str(tmp_path / "m.onnx"), "--engine",
                  str(tmp_path / "m.plan")], capsys)
    assert err == ("refusion-export: error: TensorRT is not installed; install it with: "
                   "pip install refusion[tensorrt]")
    assert not (tmp_path / "m.onnx").exists()  # failed before any work


def test_console_entry_in_a_subprocess(tmp_path):
    code = "import sys; from refusion.cli.export import main; sys.exit(main())"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "missing.safetensors"), "-o",
         str(tmp_path / "m.onnx")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"refusion-export: error: checkpoint not found: {tmp_path / 'missing.safetensors'}"
    ]


@pytest.mark.parametrize("module", ["onnx", "onnxruntime"])
def test_a_missing_onnx_package_is_named_with_what_to_install(module, ckpt, tmp_path, capsys,
                                                               monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # what an uninstalled package looks like
    err = _error([str(ckpt), "-o", str(tmp_path / "m.onnx")], capsys)
    assert err.startswith("refusion-export: error: ")
    assert f"needs the {module} package, which is not installed: pip install '{module}>=" in err
    assert not (tmp_path / "m.onnx").exists()


def test_the_onnxruntime_backend_names_what_to_install(tmp_path, monkeypatch):
    from refusion.engine import create_backend

    from refusion.errors import UserError

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    (tmp_path / "m.onnx").write_bytes(b"never read: the import fails first")
    with (pytest.raises(UserError, match="pip install 'onnxruntime>=1.18'"),
          create_backend("onnxruntime", tmp_path / "m.onnx")):
        pass


def test_the_task_is_checked_against_an_export_and_recorded_in_one(ckpt, tmp_path, capsys):
    from refusion.engine.fuser import check_task

    from refusion.cli.fuse import main as fuse_main
    from refusion.errors import UserError
    from refusion.models import FusionConfig, FusionNet

    out = tmp_path / "m.onnx"
    assert main([str(ckpt), "-o", str(out), "--no-check", "-q"]) == 0  # ckpt: task mfif
    with pytest.raises(UserError, match="was trained for 'mfif', not 'ivif'"):
        check_task(out, "ivif")  # the export's metadata is read, as a checkpoint's card
    check_task(out, "mfif")
    import cv2
    import numpy as np

    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / name), np.full((16, 16), 90, np.uint8))
    with pytest.raises(SystemExit):
        fuse_main([str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o",
                   str(tmp_path / "f.png"), "--weights", str(out), "--task", "ivif"])
    assert "was trained for 'mfif', not 'ivif'" in capsys.readouterr().err
    # a module records no task: the user's --task is what the export records
    bare = save_checkpoint(tmp_path / "bare.safetensors",
                           {"fusion": FusionNet(FusionConfig(dim=8, blocks=1, heads=2))})
    out2 = tmp_path / "bare.onnx"
    assert main([str(bare), "-o", str(out2), "--no-check", "-q", "--task", "meif"]) == 0
    assert read_onnx_metadata(out2)["task"] == "meif"


def test_the_authors_file_records_its_task_in_its_name():
    from refusion.export.onnx_export import inferred_task

    from refusion.checkpoint import Checkpoint

    assert inferred_task(Checkpoint({}, source="authors", path="w/ReFusion_IVIF.pth")) == "ivif"
    assert inferred_task(Checkpoint({}, source="authors", path="w/mine.pth")) is None
    assert inferred_task(Checkpoint({}, task="mif", path="w/ivif.safetensors")) == "mif"
