"""FP16 graph with FP32 islands: typing, I/O, accuracy (ORT, reference evaluator, emulation)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import shared_path
from onnx import TensorProto
from refusion.export import census, export_onnx, read_onnx_metadata
from refusion.export import fp16 as f16
from refusion.export import onnx_export as oe

from refusion.models import FusionConfig, FusionNet

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16


@pytest.fixture(scope="module")
def graphs():
    import torch

    torch.manual_seed(2)
    net = FusionNet(FusionConfig(dim=8, blocks=1, heads=2)).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "temperature" in name:
                p.fill_(4.0)  # sharp attention: the hard case for FP16
    m32 = oe.simplify(oe.trace_to_onnx(net, layer_norm="op"))
    m16, islands = f16.convert_to_fp16(m32)
    return m32, m16, islands


def test_checker_and_float32_io(graphs):
    _, m16, _ = graphs
    onnx.checker.check_model(m16, full_check=True)
    assert m16.graph.input[0].type.tensor_type.elem_type == FLOAT
    assert m16.graph.output[0].type.tensor_type.elem_type == FLOAT
    assert census.unsupported_by_tensorrt(m16) == []
    assert census.unexpected_ops(m16) == []
    assert census.double_tensors(m16) == []


def test_newer_opsets_emit_only_reviewed_ops():
    # from opset 20 the exporter writes GELU as the Gelu op, not through Erf
    import torch

    torch.manual_seed(0)
    net = FusionNet(FusionConfig(dim=8, blocks=1, heads=2)).eval()
    m20 = oe.simplify(oe.trace_to_onnx(net, opset=20))
    assert census.unexpected_ops(m20) == [] and census.unsupported_by_tensorrt(m20) == []
    m16, _ = f16.convert_to_fp16(oe.simplify(oe.trace_to_onnx(net, opset=20, layer_norm="op")))
    assert census.unexpected_ops(m16) == [] and census.unsupported_by_tensorrt(m16) == []


def test_islands_are_fp32_and_the_rest_fp16(graphs):
    _, m16, islands = graphs
    types = f16.float_types(m16)
    by_op: dict[str, list] = {}
    for n in m16.graph.node:
        by_op.setdefault(n.op_type, []).append(n)
    for op in ("ReduceL2", "LayerNormalization", "Softmax", "Sigmoid"):
        for n in by_op[op]:
            assert types[n.input[0]] == FLOAT, f"{n.name} input is not FP32"
            assert types[n.output[0]] == FLOAT, f"{n.name} output is not FP32"
            assert n.name in islands
    # the clamp of the norm stays FP32 (1e-12 underflows in FP16)
    assert all(types[n.output[0]] == FLOAT for n in by_op["Clip"])
    convs = by_op["Conv"]
    head = [n for n in convs if n.name in islands]
    assert len(head) == 1  # only the 1-channel head feeding the output sigmoid
    for n in convs:
        if n not in head:
            assert types[n.input[0]] == HALF and types[n.input[1]] == HALF
    assert all(types[n.output[0]] == HALF for n in by_op["MatMul"])
    halves = [t for t in m16.graph.initializer if t.data_type == HALF]
    assert len(halves) >= len(convs) - 1


def test_ort_fp16_psnr(graphs):
    m32, m16, _ = graphs
    res = f16.check_fp16(m16, m32, (2, 2, 251, 317))
    assert res.finite and res.psnr_db >= f16.FP16_MIN_PSNR_DB


def test_emulator_is_faithful(graphs):
    m32, m16, _ = graphs
    x = oe.probe_input((1, 2, 40, 56))
    ref = oe.run_ort(oe.ort_session(m32), x)
    # on the FP32 graph the emulator is plain float32 arithmetic
    emu32 = f16.emulate(m32, {"sources": x})["fused"]
    np.testing.assert_allclose(emu32, ref, atol=1e-5, rtol=0)
    emu16 = f16.emulate(m16, {"sources": x})["fused"]
    assert oe.compare(ref, emu16).psnr_db >= f16.FP16_MIN_PSNR_DB
    if f16.ort_runs_fp16(m16):
        assert oe.compare(oe.run_ort(oe.ort_session(m16), x), emu16).psnr_db >= 60


def test_onnx_reference_evaluator(graphs):
    from onnx.reference import ReferenceEvaluator

    m32, m16, _ = graphs
    x = oe.probe_input((1, 2, 12, 20))
    got = ReferenceEvaluator(m16).run(None, {"sources": x})[0]
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert oe.compare(oe.run_ort(oe.ort_session(m32), x), got).psnr_db >= f16.FP16_MIN_PSNR_DB


def test_upcast_twin(graphs):
    m32, m16, _ = graphs
    twin = f16.upcast_to_fp32(m16)
    assert not [t for t in twin.graph.initializer if t.data_type == HALF]
    x = oe.probe_input((1, 2, 33, 21))
    a, b = oe.run_ort(oe.ort_session(m32), x), oe.run_ort(oe.ort_session(twin), x)
    assert np.abs(a - b).max() < 5e-3  # only the FP16 rounding of the weights differs


def test_export_fp16_file(tmp_path):
    net = FusionNet(FusionConfig(dim=8, blocks=1, heads=2))
    out = export_onnx(net, tmp_path / "m16.onnx", fp16=True, fp16_check_shape=(1, 2, 48, 64))
    meta = read_onnx_metadata(out)
    assert meta["precision"] == "fp16"
    assert isinstance(meta["fp32_islands"], list) and meta["fp32_islands"]
    m = onnx.load(str(out))
    assert any(t.data_type == HALF for t in m.graph.initializer)


@pytest.mark.parametrize("bad", ["noise", "nan"])
def test_fp16_check_fails_loudly(tmp_path, monkeypatch, bad):
    def broken(model, x, use_ort=None):
        y = np.random.default_rng(0).random((x.shape[0], 1, *x.shape[2:]), dtype=np.float32)
        if bad == "nan":
            y[0, 0, 0, 0] = np.nan
        return y

    monkeypatch.setattr(f16, "run_fp16", broken)
    net = FusionNet(FusionConfig(dim=8, blocks=1, heads=2))
    dest = tmp_path / "m16.onnx"
    with pytest.raises(oe.ExportCheckError, match="inf or NaN" if bad == "nan" else "accurate"):
        export_onnx(net, dest, fp16=True, check_shapes=[(1, 2, 8, 8)],
                    fp16_check_shape=(1, 2, 8, 8))
    assert not dest.exists()


@pytest.mark.slow
def test_authors_fp16_at_1080p():
    """The published network in FP16: the numpy op-by-op emulation at 1920x1080, and ONNX
    Runtime's CPU FP16 kernels (when present) on the authors' 480x640 test pair, both reach
    the 50 dB bar against FP32 with no inf/NaN."""
    from refusion.checkpoint import load_fusion_model

    net, _ = load_fusion_model(shared_path("reference", "ReFusion_IVIF.pth"))
    m32 = oe.simplify(oe.trace_to_onnx(net, layer_norm="op"))
    m16, _ = f16.convert_to_fp16(m32)
    x = oe.probe_input((1, 2, 1080, 1920))
    ref = oe.run_ort(oe.ort_session(m32), x)
    emu = oe.compare(ref, f16.emulate(m16, {"sources": x})["fused"])
    assert emu.finite and emu.psnr_db >= f16.FP16_MIN_PSNR_DB, str(emu)
    if f16.ort_runs_fp16(m16):
        pair = np.load(shared_path("reference", "ivif_00710N_input.npy"))
        res = oe.compare(oe.run_ort(oe.ort_session(m32), pair),
                         oe.run_ort(oe.ort_session(m16), pair))
        assert res.finite and res.psnr_db >= f16.FP16_MIN_PSNR_DB, str(res)
