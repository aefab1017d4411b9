"""Checkpoint round trip, safety and clear errors."""

from __future__ import annotations

import pickle

import pytest
import torch

from refusion.checkpoint import load_fusion_model, read_checkpoint, save_checkpoint
from refusion.errors import CheckpointError
from refusion.models import FusionConfig, FusionNet, ProposalNet, ReconstructionNet


def test_round_trip_keeps_config_task_step(tmp_path):
    cfg = FusionConfig(dim=8, blocks=1, heads=4)
    f, p, r = FusionNet(cfg), ProposalNet(), ReconstructionNet()
    path = save_checkpoint(tmp_path / "m.safetensors", {"fusion": f, "proposal": p,
                           "reconstruction": r}, task="mfif", step=123, extra={"note": "x"})
    ck = read_checkpoint(path)
    assert ck.task == "mfif" and ck.step == 123 and ck.extra == {"note": "x"}
    assert ck.configs["fusion"] == cfg.to_dict()
    model, _ = load_fusion_model(path)
    assert model.config == cfg
    x = torch.rand(1, 2, 12, 10)
    torch.testing.assert_close(model(x), f.eval()(x), rtol=0, atol=0)
    assert set(ck.tensors) == {"fusion", "proposal", "reconstruction"}


def test_no_temp_files_left(tmp_path):
    save_checkpoint(tmp_path / "m.safetensors", {"fusion": FusionNet(FusionConfig(dim=8, heads=2))})
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"x": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        read_checkpoint(path)
    assert "pwned" not in capsys.readouterr().out


def test_raw_pickle_refused(tmp_path, capsys):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Evil(), protocol=2))
    with pytest.raises(CheckpointError, match="refusing to load .* names the Python object") as e:
        read_checkpoint(path)
    assert "pwned" not in capsys.readouterr().out
    assert "\n" not in str(e.value) and "\x1b" not in str(e.value)  # one clean line


def test_mismatched_checkpoint_names_first_keys(tmp_path):
    path = save_checkpoint(tmp_path / "small.safetensors",
                           {"fusion": FusionNet(FusionConfig(dim=8, heads=2))})
    ck = read_checkpoint(path)
    from refusion.checkpoint import load_state_checked

    with pytest.raises(CheckpointError, match=r"does not fit the model: shape stem_a\.weight"):
        load_state_checked(FusionNet(), ck.tensors["fusion"], str(path))
    del ck.tensors["fusion"]["head_conv2.weight"]
    with pytest.raises(CheckpointError, match=r"missing head_conv2\.weight"):
        load_state_checked(FusionNet(FusionConfig(dim=8, heads=2)), ck.tensors["fusion"], "x")


def test_tampered_file(tmp_path):
    tiny = FusionNet(FusionConfig(dim=8, heads=2))
    path = save_checkpoint(tmp_path / "m.safetensors", {"fusion": tiny})
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(CheckpointError, match="m.safetensors"):
        read_checkpoint(path)
    (tmp_path / "junk.bin").write_bytes(b"hello world, not a model")
    with pytest.raises(CheckpointError, match="neither"):
        read_checkpoint(tmp_path / "junk.bin")


def test_foreign_state_dict_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="not the authors' ReFusion layout"):
        read_checkpoint(path)


def test_missing_file():
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint("/nonexistent/x.safetensors")
