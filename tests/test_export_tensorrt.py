"""TensorRT engine build: everything up to the builder without TensorRT; the rest skips."""

from __future__ import annotations

import importlib.util
import json

import onnx
import pytest
from refusion.export import census
from refusion.export import tensorrt_build as tb

from refusion.errors import UserError

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def graphs(tiny_graphs):
    return tiny_graphs


@pytest.mark.parametrize(
    ("text", "hw"), [("1080x1920", (1080, 1920)), (" 251X317 ", (251, 317)), ("1x1", (1, 1))]
)
def test_parse_hw(text, hw):
    assert tb.parse_hw(text) == hw


@pytest.mark.parametrize("text", ["1080", "1080*1920", "x640", "0x640", "-1x5", "axb", ""])
def test_parse_hw_rejects(text):
    with pytest.raises(UserError, match="--min"):
        tb.parse_hw(text, "--min")


def test_profile_defaults_and_batch():
    p = tb.make_profile()
    assert p.min == (1, 2, 32, 32) and p.opt == (1, 2, 1080, 1920) and p.max == (1, 2, 2160, 3840)
    p = tb.make_profile((64, 64), (480, 640), (720, 1280), batch=4)
    assert p.min == (1, 2, 64, 64) and p.opt == (4, 2, 480, 640) and p.max == (4, 2, 720, 1280)
    assert p.as_dict() == {"input": "sources", "min": [1, 2, 64, 64], "opt": [4, 2, 480, 640],
                           "max": [4, 2, 720, 1280]}
    assert tb.make_profile((1, 2, 8, 8), (2, 2, 9, 9), (3, 2, 10, 10)).opt == (2, 2, 9, 9)
    # the engine is checked inside its profile: a batch-4-only profile at batch 4, not 2
    four = tb.make_profile((4, 2, 32, 32), (4, 2, 64, 64), (4, 2, 128, 128))
    assert tb.check_shape(four) == (4, 2, 64, 64)
    assert tb.check_shape(p)[0] == 2  # batch 1..4 with opt 4: two frames are enough


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (((500, 500), (480, 640), (720, 1280)), "height must satisfy min <= opt <= max"),
        (((64, 64), (480, 1400), (720, 1280)), "width"),
        (((64, 64), (480, 640), (2, 3, 720, 1280)), r"\(N, 2, H, W\)"),
        (((64, 64, 3), None, None), r"\(H, W\)"),
    ],
)
def test_profile_errors(args, match):
    with pytest.raises(UserError, match=match):
        tb.make_profile(*args)
    with pytest.raises(UserError, match="--batch"):
        tb.make_profile(batch=0)


def test_check_shape_is_real_size_and_inside_profile():
    p = tb.make_profile((64, 64), (2160, 3840), (2160, 3840), batch=8)
    n, c, h, w = tb.check_shape(p)
    assert (n, c) == (2, 2) and max(h, w) == tb.CHECK_MAX_SIDE and (h, w) == (1080, 1920)
    p = tb.make_profile((32, 32), (251, 317), (1080, 1920))
    assert tb.check_shape(p) == (1, 2, 251, 317)


def test_plan_build_fp16_onnx_is_strongly_typed(graphs):
    _, m16 = graphs
    for major in (10, 11):
        s = tb.plan_build(m16, major)
        assert s.strongly_typed and not s.fp16_flag and not s.convert_to_fp16
        assert s.precision == "fp16-strongly-typed" and s.fp32_pins == []
        assert tb.network_model(m16, s) is m16


def test_plan_build_fp32_onnx(graphs):
    m32, _ = graphs
    s10 = tb.plan_build(m32, 10)
    assert s10.fp16_flag and not s10.strongly_typed and s10.precision == "fp16-weak-pinned"
    names = {n.name for n in m32.graph.node}
    assert s10.fp32_pins and set(s10.fp32_pins) <= names
    pinned_ops = {n.op_type for n in m32.graph.node if n.name in set(s10.fp32_pins)}
    assert {"ReduceL2", "LayerNormalization", "Softmax", "Sigmoid"} <= pinned_ops
    s11 = tb.plan_build(m32, 11)
    assert s11.strongly_typed and s11.convert_to_fp16 and not s11.fp16_flag
    assert tb.plan_build(m32, 11, fp16=False).precision == "fp32"
    with pytest.raises(UserError, match="TensorRT 8"):
        tb.plan_build(m32, 8)


def test_network_the_parser_reads(graphs):
    """What TensorRT 11 parses for an FP32 file: the FP16 graph, all ops supported."""
    m32, _ = graphs
    net = tb.network_model(m32, tb.plan_build(m32, 11))
    onnx.checker.check_model(net, full_check=True)
    assert census.unsupported_by_tensorrt(net) == [] and census.double_tensors(net) == []
    assert [i.name for i in net.graph.input] == ["sources"]
    assert [o.name for o in net.graph.output] == ["fused"]
    assert tb.onnx_precision(net) == "fp16"
    assert json.loads({p.key: p.value for p in net.metadata_props}["fp32_islands"])
    ref = tb.reference_model(net)
    assert tb.onnx_precision(ref) == "fp32"


def test_pin_matches():
    pins, tensors = {"/afm/Softmax", "/head_conv2/Conv"}, {"/afm/Softmax_output_0"}
    assert tb.pin_matches("/afm/Softmax", "", [], pins)
    assert tb.pin_matches("/afm/Softmax_3", "", [], pins)  # a helper layer of the node
    assert tb.pin_matches("(Unnamed Layer* 7)", "", ["/afm/Softmax_output_0"], pins, tensors)
    assert tb.pin_matches("x", "[ONNX Layer: /head_conv2/Conv]", ["t"], pins, tensors)
    assert not tb.pin_matches("/afm/Softmax1", "", ["t"], pins, tensors)
    assert not tb.pin_matches("/afm/MatMul", "[ONNX Layer: /afm/MatMul]", ["u"], pins, tensors)


def test_pins_cover_the_island_outputs(graphs):
    m32, _ = graphs
    s = tb.plan_build(m32, 10)
    producer = {o: n.name for n in m32.graph.node for o in n.output}
    assert s.fp32_tensors and all(producer[t] in set(s.fp32_pins) for t in s.fp32_tensors)
    assert "fused" in s.fp32_tensors  # the output sigmoid


def test_sidecar(tmp_path, graphs):
    m32, _ = graphs
    onnx_path = tmp_path / "m.onnx"
    onnx.save(m32, str(onnx_path))
    profile = tb.make_profile((32, 32), (480, 640), (1080, 1920), batch=2)
    settings = tb.plan_build(m32, 10)
    side = tb.make_sidecar(
        onnx_path=onnx_path, profile=profile, settings=settings, trt_version="10.9.0",
        gpu={"name": "NVIDIA H200", "compute_capability": "9.0"}, workspace_gb=4.0,
        timing_cache=tmp_path / "tensorrt.timing.cache",
        accuracy={"psnr_db": 70.0, "max_abs": 1e-3, "shape": [2, 2, 480, 640]},
    )
    from refusion.export.metadata import sha256_file

    assert side["onnx_sha256"] == sha256_file(onnx_path)
    assert side["tensorrt_version"] == "10.9.0" and side["gpu"]["compute_capability"] == "9.0"
    assert side["profiles"] == [profile.as_dict()]
    assert side["precision"] == "fp16-weak-pinned" and side["fp32_pinned_nodes"] > 0
    assert side["input"] == "sources" and side["output"] == "fused"
    plan = tmp_path / "m.plan"
    assert tb.sidecar_path(plan).name == "m.plan.json"
    with pytest.raises(UserError, match="no sidecar"):
        tb.read_plan_sidecar(plan)
    tb.sidecar_path(plan).write_text(json.dumps(side))
    assert tb.read_plan_sidecar(plan)["onnx_sha256"] == side["onnx_sha256"]


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed")
def test_missing_tensorrt_is_one_line(tmp_path, graphs):
    m32, _ = graphs
    onnx_path = tmp_path / "m.onnx"
    onnx.save(m32, str(onnx_path))
    with pytest.raises(UserError) as err:
        tb.build_engine(onnx_path, tmp_path / "m.plan")
    assert str(err.value) == tb.INSTALL_HINT and "\n" not in str(err.value)
    assert "pip install refusion[tensorrt]" in str(err.value)
    assert not (tmp_path / "m.plan").exists()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not HAS_TRT, reason="tensorrt not installed")
@pytest.mark.skipif(HAS_TRT and not _cuda(), reason="no CUDA device")
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_build_engine_real(tmp_path, graphs, precision):
    m32, m16 = graphs
    onnx_path = tmp_path / f"m_{precision}.onnx"
    onnx.save(m16 if precision == "fp16" else m32, str(onnx_path))
    plan = tmp_path / "m.plan"
    cache = tmp_path / "tensorrt.timing.cache"
    for _ in range(2):  # the second build reuses the timing cache
        tb.build_engine(onnx_path, plan, min_shape=(16, 16), opt_shape=(256, 320),
                        max_shape=(512, 640), batch=2, workspace_gb=1.0, timing_cache=cache)
    side = tb.read_plan_sidecar(plan)
    assert plan.stat().st_size > 0 and cache.stat().st_size > 0
    assert side["accuracy"]["psnr_db"] >= 50 and side["precision"].startswith("fp16")


def test_a_plan_from_another_tensorrt_or_gpu_is_named_before_loading():
    from refusion.engine.backends.tensorrt_backend import plan_mismatch, profile_text

    side = {"tensorrt_version": "10.3.0", "gpu": {"compute_capability": "9.0"},
            "profiles": [tb.make_profile((64, 64), (480, 640), (1080, 1920), batch=2).as_dict()]}
    assert plan_mismatch(side, "10.3.0", "9.0") is None
    assert plan_mismatch(side, "10.5.0", "9.0") == (
        "built with TensorRT 10.3.0, this is TensorRT 10.5.0")
    assert plan_mismatch(side, "10.5.0", "8.9") == (
        "built with TensorRT 10.3.0, this is TensorRT 10.5.0; built for compute capability "
        "9.0, this GPU is 8.9")
    assert plan_mismatch({}, "10.5.0", "8.9") is None  # no sidecar: TensorRT itself decides
    assert plan_mismatch({"gpu": {"compute_capability": "unknown"}}, "10.5.0", "8.9") is None
    assert profile_text(side) == "1x2x64x64 .. 2x2x480x640 .. 2x2x1080x1920"
    assert profile_text({}) == "(unknown: no sidecar)"
