"""The TensorRT build and backend up to the GPU, against a stand-in ``tensorrt`` module.

TensorRT cannot be installed here, so ``tests/_fake_tensorrt.py`` implements the slice of its
Python API we call and records what it was told: network flags, builder flags, FP32 pins,
profile, workspace, timing cache. These tests check that record, the files written (plan,
sidecar, timing cache, all or nothing) and the errors; what needs a GPU (running the plan)
is replaced by ONNX Runtime where the accuracy gate is under test, and is tested for real in
``tests/test_export_tensorrt.py`` when TensorRT and CUDA are present.
"""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import onnx
import pytest
import torch
from _fake_tensorrt import HELPER_OPS, make_fake_tensorrt, read_fake_plan
from refusion.export import onnx_export as oe
from refusion.export import tensorrt_build as tb

from refusion.errors import UserError
from refusion.models import FusionConfig, FusionNet

PROFILE = {"min_shape": (16, 16), "opt_shape": (48, 64), "max_shape": (96, 128), "batch": 2}


@pytest.fixture(scope="module")
def graphs(tiny_graphs):
    return tiny_graphs


@pytest.fixture
def onnx_files(tmp_path, graphs):
    m32, m16 = graphs
    paths = {"fp32": tmp_path / "m32.onnx", "fp16": tmp_path / "m16.onnx"}
    onnx.save(m32, str(paths["fp32"]))
    onnx.save(m16, str(paths["fp16"]))
    return paths


@pytest.fixture
def use_trt(monkeypatch):
    """Install a stand-in ``tensorrt`` (keyword arguments as ``make_fake_tensorrt``)."""

    def install(**kwargs):
        trt = make_fake_tensorrt(**kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        return trt

    return install


def _build(onnx_path, plan, **kwargs):
    return tb.build_engine(onnx_path, plan, check=kwargs.pop("check", False),
                           **{**PROFILE, **kwargs})


def test_fp16_onnx_is_built_strongly_typed(use_trt, onnx_files, tmp_path):
    trt = use_trt(version="10.9.0.34")
    plan = tmp_path / "out" / "m.plan"
    plan.parent.mkdir()
    assert _build(onnx_files["fp16"], plan, workspace_gb=0.5) == plan
    told = read_fake_plan(plan)
    assert told["strongly_typed"] and told["flags"] == [] and told["pinned_layers"] == []
    # FP16 inside, FP32 at the boundary (the FP16 export keeps float32 inputs and outputs)
    assert told["fp16_initializers"] and told["io"] == {"sources": 0, "fused": 0}
    assert told["workspace"] == 1 << 29
    assert told["profiles"] == [{"sources": [[1, 2, 16, 16], [2, 2, 48, 64], [2, 2, 96, 128]]}]
    assert ("create_network", 1 << 1) in trt.events  # the STRONGLY_TYPED creation flag
    side = tb.read_plan_sidecar(plan)
    assert side["tensorrt_version"] == "10.9.0.34" and side["precision"] == "fp16-strongly-typed"
    assert side["onnx"] == "m16.onnx" and side["accuracy"] is None
    assert side["profiles"] == [tb.make_profile(**PROFILE).as_dict()]
    assert side["timing_cache"] is None and not list(plan.parent.glob("*.cache"))


@pytest.mark.parametrize("version", ["10.0.1.6", "10.11.0.33"])
def test_fp32_onnx_on_tensorrt10_pins_the_islands(use_trt, onnx_files, graphs, tmp_path,
                                                  version):
    use_trt(version=version)
    m32, _ = graphs
    plan = tmp_path / "m.plan"
    _build(onnx_files["fp32"], plan)
    told = read_fake_plan(plan)
    assert not told["strongly_typed"] and not told["fp16_initializers"]
    assert told["flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    settings = tb.plan_build(m32, 10)
    pinned = set(told["pinned_layers"])
    # every island node with a float output is pinned, its outputs too; integer shape
    # arithmetic is left alone (no precision to pin) and nothing outside the islands is pinned
    inferred = onnx.shape_inference.infer_shapes(m32)
    elem = {v.name: v.type.tensor_type.elem_type
            for v in [*inferred.graph.value_info, *inferred.graph.output]}
    float_islands = {n.name for n in m32.graph.node if n.name in set(settings.fp32_pins)
                     and any(elem.get(o) == onnx.TensorProto.FLOAT for o in n.output)}
    # the parser's helper layers of an island are pinned too: found by name (<node>_1) or,
    # unnamed, by the node in their metadata
    helpers = {n.name: n.op_type for n in m32.graph.node
               if n.name in float_islands and n.op_type in HELPER_OPS}
    assert set(helpers.values()) == set(HELPER_OPS)
    by_suffix = {f"{n}_1" for n, op in helpers.items() if HELPER_OPS[op] == "suffix"}
    unnamed = {p for p in pinned if p.startswith("(Unnamed Layer*")}
    assert pinned == float_islands | by_suffix | unnamed and len(float_islands) >= 10
    assert len(unnamed) == sum(HELPER_OPS[op] == "unnamed" for op in helpers.values())
    assert told["pinned_outputs"] >= len(pinned)
    assert {n.op_type for n in m32.graph.node if n.name in pinned} >= {
        "Softmax", "Sigmoid", "LayerNormalization", "ReduceL2"}
    assert tb.read_plan_sidecar(plan)["precision"] == "fp16-weak-pinned"


@pytest.mark.parametrize("version", ["11.0.0.1", "10.12.0.36", "10.13.2.6"])
def test_fp32_onnx_from_tensorrt10_12_is_converted_in_memory(use_trt, onnx_files, tmp_path,
                                                            version):
    # TensorRT 10.12 deprecated weak typing, 11 removed it: both build the FP16 graph
    use_trt(version=version)
    plan = tmp_path / "m.plan"
    before = onnx_files["fp32"].read_bytes()
    _build(onnx_files["fp32"], plan)
    told = read_fake_plan(plan)
    # no weak-typing flags: the parser got the FP16 graph, strongly typed
    assert told["strongly_typed"] and told["flags"] == [] and told["fp16_initializers"]
    assert onnx_files["fp32"].read_bytes() == before  # converted in memory only
    side = tb.read_plan_sidecar(plan)
    assert side["onnx_precision"] == "fp32" and side["precision"] == "fp16-strongly-typed"
    _build(onnx_files["fp32"], plan, fp16=False)
    told = read_fake_plan(plan)
    assert not told["fp16_initializers"] and tb.read_plan_sidecar(plan)["precision"] == "fp32"
    assert told["strongly_typed"] and told["flags"] == []  # no deprecated weak typing either


@pytest.mark.parametrize("refusal", ["refuse", "none", "raise"])
def test_timing_cache_is_reused_and_a_foreign_one_replaced(use_trt, onnx_files, tmp_path,
                                                           caplog, refusal):
    cache = tmp_path / "tensorrt.timing.cache"
    trt = use_trt(timing_signature=b"GPU-9.0|")
    plan = tmp_path / "m.plan"
    _build(onnx_files["fp16"], plan, timing_cache=cache)
    assert cache.read_bytes() == b"GPU-9.0|builds=1"
    assert read_fake_plan(plan)["timing_cache_bytes"] == 0  # a new cache
    _build(onnx_files["fp16"], plan, timing_cache=cache)
    assert read_fake_plan(plan)["timing_cache_bytes"] == len(b"GPU-9.0|builds=1")
    assert cache.read_bytes() == b"GPU-9.0|builds=2"
    assert tb.read_plan_sidecar(plan)["timing_cache"] == str(cache)
    assert [e for e in trt.events if e[0] == "set_timing_cache"] == [
        ("set_timing_cache", 0, True), ("set_timing_cache", 16, True)]

    # the same file on another GPU: TensorRT refuses it, the build goes on with a fresh cache
    other = use_trt(timing_signature=b"GPU-8.9|", foreign_cache=refusal)
    with caplog.at_level(logging.WARNING, logger="refusion.export"):
        _build(onnx_files["fp16"], plan, timing_cache=cache)
    assert "is for another GPU or TensorRT" in caplog.text
    refused = [("set_timing_cache", 16, False)] if refusal == "refuse" else []
    assert [e for e in other.events if e[0] == "set_timing_cache"] == [
        *refused, ("set_timing_cache", 0, True)]
    assert read_fake_plan(plan)["timing_cache_bytes"] == 0
    assert cache.read_bytes() == b"GPU-8.9|builds=1"  # replaced by this GPU's


def test_tensorrt_version():
    import types

    for text, want in [("10.12.0.36", (10, 12)), ("11.0.0.1", (11, 0)), ("10", (10, 0)),
                       ("10.13rc1", (10, 13))]:
        assert tb.tensorrt_version(types.SimpleNamespace(__version__=text)) == want


@pytest.mark.parametrize(
    ("fake", "match"),
    [
        ({"parse_errors": ["node /afm/Softmax: unsupported", "second"]},
         "could not parse the ONNX graph: node /afm/Softmax: unsupported; second"),
        ({"build_fails": True}, "failed to build the engine"),
        ({"version": "8.6.1"}, "TensorRT 8 is too old"),
    ],
)
def test_failures_are_one_line_and_keep_the_old_plan(use_trt, onnx_files, tmp_path, fake,
                                                     match):
    use_trt()
    plan = tmp_path / "m.plan"
    _build(onnx_files["fp16"], plan)
    old_plan, old_side = plan.read_bytes(), tb.sidecar_path(plan).read_bytes()
    use_trt(**fake)
    with pytest.raises(UserError, match=match) as err:
        _build(onnx_files["fp16"], plan, timing_cache=tmp_path / "c.cache")
    assert "\n" not in str(err.value)
    assert plan.read_bytes() == old_plan and tb.sidecar_path(plan).read_bytes() == old_side
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.plan", "m.plan.json", "m16.onnx",
                                                          "m32.onnx"]


def test_a_refused_profile_is_named(use_trt, onnx_files, tmp_path, monkeypatch):
    use_trt()
    # a profile TensorRT finds invalid (here forced: ours are validated before) is an error
    # naming the sizes, not a failed build minutes later
    monkeypatch.setattr(tb, "make_profile", lambda *a, **k: tb.Profile(
        (1, 2, 64, 64), (1, 2, 32, 32), (1, 2, 128, 128)))
    with pytest.raises(UserError, match="refused the optimisation profile min 64x64, opt "
                                        "32x32, max 128x128"):
        _build(onnx_files["fp16"], tmp_path / "m.plan")
    assert not (tmp_path / "m.plan").exists()


def test_missing_onnx_is_named_before_tensorrt(use_trt, tmp_path):
    trt = use_trt()
    with pytest.raises(UserError, match="ONNX model not found: .*nope.onnx"):
        _build(tmp_path / "nope.onnx", tmp_path / "m.plan")
    assert trt.events == []


def test_a_timing_cache_that_cannot_be_written_fails_before_the_build(use_trt, onnx_files,
                                                                     tmp_path):
    trt = use_trt()
    (tmp_path / "cache_dir").mkdir()
    with pytest.raises(UserError, match="cannot write .*cache_dir: it is a folder"):
        _build(onnx_files["fp16"], tmp_path / "m.plan", timing_cache=tmp_path / "cache_dir")
    assert ("build", None) not in trt.events and not (tmp_path / "m.plan").exists()


def _ort_runner(graphs, noise: float):
    def run(trt, plan, x):
        assert plan.startswith(b"FAKE-TRT-PLAN")  # what the builder made is what would run
        ref = oe.run_ort(oe.ort_session(tb.reference_model(graphs[1])), x)
        return ref + noise * np.random.default_rng(0).standard_normal(ref.shape).astype(
            np.float32)

    return run


def test_accuracy_gate(use_trt, onnx_files, graphs, tmp_path, monkeypatch):
    use_trt()
    plan = tmp_path / "m.plan"
    seen = []
    run = _ort_runner(graphs, 1e-4)
    monkeypatch.setattr(tb, "engine_check_problem", lambda: None)  # ORT stands in for CUDA
    monkeypatch.setattr(tb, "run_engine", lambda t, p, x: seen.append(x.shape) or run(t, p, x))
    _build(onnx_files["fp16"], plan, check=True)
    acc = tb.read_plan_sidecar(plan)["accuracy"]
    assert seen == [(2, 2, 48, 64)] and acc["shape"] == [2, 2, 48, 64]
    assert 50 <= acc["psnr_db"] < 120 and acc["reference"] == "onnxruntime-cpu-fp32"
    old = plan.read_bytes()

    # an engine below the FP16 bar is not written (and the previous plan stays)
    monkeypatch.setattr(tb, "run_engine", _ort_runner(graphs, 3e-2))
    with pytest.raises(oe.ExportCheckError, match="not accurate enough.*plan was not written"):
        _build(onnx_files["fp16"], plan, check=True)
    assert plan.read_bytes() == old


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_accuracy_check_without_cuda_says_so(use_trt, onnx_files, tmp_path):
    use_trt()
    cache = tmp_path / "t.cache"
    with pytest.raises(UserError, match="needs a CUDA build of torch \\(or check=False\\)"):
        _build(onnx_files["fp16"], tmp_path / "m.plan", check=True, timing_cache=cache)
    # refused before the build: no plan, and no timing cache written by a build
    assert not (tmp_path / "m.plan").exists() and not cache.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_export_cli_refuses_an_unrunnable_check_before_any_work(use_trt, tmp_path, capsys):
    from refusion.cli.export import main

    use_trt()
    out = tmp_path / "m.onnx"
    with pytest.raises(SystemExit):
        main(["ivif", "-o", str(out), "--engine", str(tmp_path / "m.plan")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--no-check" in err[0], err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_export_cli_builds_the_engine(use_trt, tmp_path, capsys):
    from refusion.checkpoint import save_checkpoint
    from refusion.cli.export import main

    net = FusionNet(FusionConfig(dim=8, blocks=1, heads=2))
    ckpt = save_checkpoint(tmp_path / "tiny.safetensors", {"fusion": net}, task="mfif")
    use_trt()
    plan = tmp_path / "engines" / "m.plan"
    argv = [str(ckpt), "-o", str(tmp_path / "m.onnx"), "--fp16", "--engine", str(plan),
            "--min", "16x16", "--opt", "48x64", "--max", "96x128", "--batch", "3",
            "--workspace-gb", "0.25", "--no-check"]
    assert main(argv) == 0
    told = read_fake_plan(plan)
    assert told["profiles"] == [{"sources": [[1, 2, 16, 16], [3, 2, 48, 64], [3, 2, 96, 128]]}]
    assert told["workspace"] == 1 << 28 and told["strongly_typed"]
    # the timing cache lands next to the plan unless --timing-cache says otherwise
    assert (plan.parent / "tensorrt.timing.cache").is_file()
    assert f"wrote {plan} and m.plan.json" in capsys.readouterr().err
    side = json.loads((plan.parent / "m.plan.json").read_text())
    assert side["onnx"] == "m.onnx" and side["onnx_precision"] == "fp16"


# --------------------------------------------------------------------------------------------
# The backend, up to the GPU: it reads the sidecar and refuses a plan for another GPU or
# TensorRT before TensorRT's bare deserialisation failure.


@pytest.fixture
def pretend_cuda(monkeypatch):
    """torch reports one CUDA device of compute capability 9.0 (nothing runs on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: object())


def _backend(plan):
    from refusion.engine.backends.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(plan, device="cuda")


def test_backend_loads_a_plan_built_here(use_trt, pretend_cuda, onnx_files, tmp_path):
    trt = use_trt()
    plan = tmp_path / "m.plan"
    _build(onnx_files["fp16"], plan)
    side = json.loads(tb.sidecar_path(plan).read_text())
    side["gpu"] = {"name": "NVIDIA H200", "compute_capability": "9.0"}
    tb.sidecar_path(plan).write_text(json.dumps(side))
    be = _backend(plan)
    be._activate()
    assert be._dtypes == {"sources": torch.float32, "fused": torch.float32}
    assert be.describe()["precision"] == "fp16-strongly-typed"
    assert ("context", None) in trt.events


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"tensorrt_version": "10.3.0"},
         r"cannot run here \(built with TensorRT 10.3.0, this is TensorRT 10.9.0.34\)"),
        ({"gpu": {"compute_capability": "8.9"}},
         r"built for compute capability 8.9, this GPU is 9.0\): rebuild it"),
    ],
)
def test_backend_names_a_foreign_plan_before_deserialising(use_trt, pretend_cuda, onnx_files,
                                                           tmp_path, edit, match):
    trt = use_trt()
    plan = tmp_path / "m.plan"
    _build(onnx_files["fp16"], plan)
    side = json.loads(tb.sidecar_path(plan).read_text())
    tb.sidecar_path(plan).write_text(json.dumps({**side, **edit}))
    with pytest.raises(UserError, match=match):
        _backend(plan)._activate()
    assert not [e for e in trt.events if e[0] == "deserialize"]


def test_backend_errors(use_trt, pretend_cuda, tmp_path):
    use_trt()
    with pytest.raises(UserError, match="TensorRT plan not found: .*none.plan"):
        _backend(tmp_path / "none.plan")._activate()
    junk = tmp_path / "junk.plan"
    junk.write_bytes(b"not a plan")  # no sidecar: TensorRT itself decides, and refuses it
    with pytest.raises(UserError, match="cannot deserialize .*junk.plan"):
        _backend(junk)._activate()
    with pytest.raises(UserError, match="runs on CUDA only"):
        from refusion.engine.backends.tensorrt_backend import TensorRTBackend

        TensorRTBackend(junk, device="cpu")
