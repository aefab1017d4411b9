"""FP32 ONNX export of the fusion module: I/O contract, metadata, checker, ORT parity, census."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import shared_path
from refusion.export import census, export_onnx, read_onnx_metadata
from refusion.export import onnx_export as oe
from refusion.export.metadata import REQUIRED_KEYS, sha256_file

from refusion.checkpoint import save_checkpoint
from refusion.errors import UserError
from refusion.models import FusionConfig, FusionNet
from refusion.models.restormer import ChannelLayerNorm

TINY = FusionConfig(dim=8, blocks=1, heads=2)


@pytest.fixture(scope="module")
def tiny_net() -> FusionNet:
    import torch

    torch.manual_seed(1)
    net = FusionNet(TINY).eval()
    with torch.no_grad():  # trained-like, non-trivial norms and temperatures
        for name, p in net.named_parameters():
            if "temperature" in name:
                p.uniform_(0.5, 4.0)
            elif p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return net


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tiny_net):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    return save_checkpoint(path, {"fusion": tiny_net}, task="ivif")


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory, tiny_ckpt):
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(tiny_ckpt, out)
    return out


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_io_contract(tiny_onnx):
    m = onnx.load(str(tiny_onnx))
    assert [i.name for i in m.graph.input] == ["sources"]
    assert [o.name for o in m.graph.output] == ["fused"]
    (inp,), (out,) = m.graph.input, m.graph.output
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert _dims(inp) == ["N", 2, "H", "W"]
    assert _dims(out) == ["N", 1, "H", "W"]


def test_opset_layernorm_and_checker(tiny_onnx):
    m = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(m, full_check=True)
    opset = {o.domain: o.version for o in m.opset_import}
    assert opset.get("", opset.get("ai.onnx")) >= 17
    ops = census.op_census(m)
    # The FP32 graph is the inference form (refusion.export.deploy): each of the two norms per
    # Restormer block (encoders a and b plus the decoder) is a mean and a variance over the
    # channel axis, with no LayerNormalization op and no channels-last transposes around it.
    assert ops["LayerNormalization"] == 0
    assert ops["ReduceMean"] == 2 * 2 * 3 * TINY.blocks
    # q/k/v and gate chunks are separate convolutions: the only slices left split the input.
    assert ops["Slice"] == 2
    assert ops["Constant"] == 0 and ops["Identity"] == 0  # the simplification pass ran


def test_fp16_trace_keeps_layernorm_ops(tiny_net):
    # The FP16 conversion keeps each LayerNormalization as one FP32 island.
    ops = census.op_census(oe.simplify(oe.trace_to_onnx(tiny_net, layer_norm="op")))
    assert ops["LayerNormalization"] == 2 * 3 * TINY.blocks
    assert ops["Slice"] == 2 and ops["ReduceMean"] == 0


def test_metadata(tiny_onnx, tiny_ckpt):
    meta = read_onnx_metadata(tiny_onnx)
    assert set(REQUIRED_KEYS) <= set(meta)
    assert meta["task"] == "ivif"
    assert meta["input_name"] == "sources" and meta["output_name"] == "fused"
    assert meta["layout"] == "NCHW" and meta["scaling"] == "unit"
    assert meta["input_order"].startswith("channel 0 = source a")
    assert meta["precision"] == "fp32"
    assert meta["model_config"] == TINY.to_dict()
    assert meta["source_checkpoint"] == tiny_ckpt.name
    assert meta["source_checkpoint_sha256"] == sha256_file(tiny_ckpt)
    assert meta["source_format"] == "refusion"
    assert meta["refusion_version"]
    assert int(meta["opset"]) >= 17


@pytest.mark.parametrize("shape", [(1, 2, 251, 317), (3, 2, 17, 9), (2, 2, 64, 64), (1, 2, 1, 5)])
def test_ort_matches_eager(tiny_onnx, tiny_net, shape):
    sess = oe.ort_session(tiny_onnx)
    x = oe.probe_input(shape, seed=sum(shape))
    got = oe.run_ort(sess, x)
    assert got.shape == (shape[0], 1, *shape[2:])
    np.testing.assert_allclose(got, oe.run_eager(tiny_net, x), atol=1e-4, rtol=0)
    assert got.min() >= 0.0 and got.max() <= 1.0


def test_census_tensorrt_supported(tiny_onnx):
    m = onnx.load(str(tiny_onnx))
    assert census.unsupported_by_tensorrt(m) == []
    assert census.unexpected_ops(m) == [], "new op types: check TensorRT support and FP16"
    assert census.double_tensors(m) == []


def test_export_in_memory_model_leaves_it_untouched(tmp_path, tiny_net):
    tiny_net.train()
    before = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    out = export_onnx(tiny_net, tmp_path / "sub" / "m.onnx", check=False, metadata={"run": "7"})
    after = tiny_net.state_dict()
    assert tiny_net.training and set(after) == set(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    meta = read_onnx_metadata(out)
    assert meta["source_format"] == "module" and meta["source_checkpoint_sha256"] == ""
    assert meta["run"] == "7"
    assert any(isinstance(m, ChannelLayerNorm) for m in tiny_net.modules())


def test_opset_18(tmp_path, tiny_net):
    out = export_onnx(tiny_net, tmp_path / "m18.onnx", opset=18, check_shapes=[(1, 2, 23, 31)])
    assert read_onnx_metadata(out)["opset"] == "18"


def test_bad_requests(tmp_path, tiny_net):
    with pytest.raises(UserError, match="opset"):
        export_onnx(tiny_net, tmp_path / "a.onnx", opset=16)
    with pytest.raises(ValueError, match="reserved"):
        export_onnx(tiny_net, tmp_path / "a.onnx", check=False, metadata={"task": "x"})
    with pytest.raises(UserError, match="not found"):
        export_onnx(tmp_path / "missing.safetensors", tmp_path / "a.onnx")
    with pytest.raises(UserError, match="not found"):
        read_onnx_metadata(tmp_path / "missing.onnx")
    assert not (tmp_path / "a.onnx").exists()


def test_failed_check_writes_nothing(tmp_path, tiny_net, monkeypatch):
    monkeypatch.setattr(oe, "run_eager", lambda model, x: np.zeros((x.shape[0], 1, *x.shape[2:])))
    dest = tmp_path / "bad.onnx"
    with pytest.raises(oe.ExportCheckError, match="differs from PyTorch"):
        export_onnx(tiny_net, dest)
    assert not dest.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_authors_checkpoint_parity_up_to_1080p(tmp_path):
    """The published network: ORT vs eager within 1e-4 at odd sizes and 1920x1080."""
    from refusion.checkpoint import load_fusion_model

    ckpt = shared_path("reference", "ReFusion_IVIF.pth")
    out = export_onnx(ckpt, tmp_path / "refusion_ivif.onnx")
    meta = read_onnx_metadata(out)
    assert meta["source_format"] == "authors" and meta["task"] == "ivif"
    assert meta["source_checkpoint_sha256"] == sha256_file(ckpt)
    net, _ = load_fusion_model(ckpt)
    sess = oe.ort_session(out)
    # (the export itself already checked 2x37x53 and 251x317 within 1e-4)
    x = oe.probe_input((1, 2, 1080, 1920))
    diff = np.abs(oe.run_ort(sess, x) - oe.run_eager(net, x)).max()
    assert diff <= 1e-4, f"1920x1080: {diff:.2e}"
    # and the authors' own output on their 480x640 test pair
    x = np.load(shared_path("reference", "ivif_00710N_input.npy"))
    raw = np.load(shared_path("reference", "ivif_00710N_raw.npy"))
    assert np.abs(oe.run_ort(sess, x)[0, 0] - raw).max() <= 1e-4
