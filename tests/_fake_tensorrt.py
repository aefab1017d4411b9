"""A stand-in ``tensorrt`` module for tests on machines without TensorRT.

It implements the slice of the TensorRT 10/11 Python API that ``refusion.export.tensorrt_build``
and the TensorRT backend call, strictly: an attribute the real API lacks raises AttributeError,
and calls are recorded so tests can check what was configured. The "network" is the parsed
ONNX graph, one layer per node, with the element types ONNX shape inference gives each output;
some ops also get a helper layer (see ``HELPER_OPS``), as the real parser makes; the "plan"
is JSON describing the build, so a test can read back what the builder was told. It refuses
what TensorRT refuses where that could hide a bug: precision hints on a strongly typed
network, an invalid optimisation profile (``add_optimization_profile`` returns -1), a build
with a network input no profile covers (``build_serialized_network`` returns None).

Nothing here imitates TensorRT's numerics: code after deserialisation needs a GPU and is tested
on one.
"""

from __future__ import annotations

import enum
import json
import types
from pathlib import Path

import onnx
from onnx import TensorProto

PLAN_MAGIC = b"FAKE-TRT-PLAN\n"


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT32 = 3
    BOOL = 4
    INT64 = 8


_ONNX_TO_TRT = {TensorProto.FLOAT: DataType.FLOAT, TensorProto.FLOAT16: DataType.HALF,
                TensorProto.INT64: DataType.INT64, TensorProto.INT32: DataType.INT32,
                TensorProto.BOOL: DataType.BOOL}


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class Tensor:
    def __init__(self, name: str, dtype: DataType) -> None:
        self.name, self.dtype = name, dtype


#: ONNX ops the stand-in parser expands into two layers, as the real one does for some ops:
#: the node's own layer and a helper with an internal output, named ``<node>_1`` or unnamed
#: (``(Unnamed Layer* k) [Shuffle]``, known only by its metadata on TensorRT 10)
HELPER_OPS = {"LayerNormalization": "suffix", "Softmax": "unnamed"}


class Layer:
    def __init__(self, name: str, node: str, outputs: list[Tensor], major: int,
                 strongly_typed: bool) -> None:
        self.name = name
        self._outputs = outputs
        self._precision = None
        self._strongly_typed = strongly_typed
        self.output_types: dict[int, DataType] = {}
        if major == 10:  # ILayer.metadata: the ONNX node a layer came from
            self.metadata = f"[ONNX Layer: {node}]"

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_output(self, j: int) -> Tensor:
        return self._outputs[j]

    @property
    def precision(self):
        return self._precision

    @precision.setter
    def precision(self, dtype: DataType) -> None:
        self._check_weak("precision")
        self._precision = dtype

    def set_output_type(self, j: int, dtype: DataType) -> None:
        self._check_weak("set_output_type")
        self.output_types[j] = dtype

    def _check_weak(self, what: str) -> None:
        # TensorRT refuses precision hints on a strongly typed network (the types are the
        # graph's); an error here catches pins applied on the wrong path
        if self._strongly_typed:
            raise RuntimeError(f"ILayer.{what}: not allowed on a strongly typed network")


class Network:
    def __init__(self, flags: int, strongly_typed: bool) -> None:
        self.flags = flags
        self.strongly_typed = strongly_typed
        self.layers: list[Layer] = []
        self.inputs: dict[str, int] = {}  # name -> rank
        self.onnx_model: onnx.ModelProto | None = None

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, i: int) -> Layer:
        return self.layers[i]


class Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}
        self.valid = True

    def set_shape(self, name: str, min, opt, max) -> None:  # noqa: A002 - TensorRT's names
        lo, mid, hi = tuple(min), tuple(opt), tuple(max)
        # TensorRT logs an invalid shape triple and marks the profile invalid (checked when it
        # is added to a config)
        if not (len(lo) == len(mid) == len(hi)) or any(
                not (1 <= x <= y <= z) for x, y, z in zip(lo, mid, hi)):
            self.valid = False
        self.shapes[name] = (lo, mid, hi)


class TimingCache:
    def __init__(self, blob: bytes, owner: types.ModuleType) -> None:
        self.blob, self._owner = bytes(blob), owner

    def serialize(self) -> bytes:
        return self._owner.TIMING_SIGNATURE + b"builds=%d" % self._owner.builds


def make_fake_tensorrt(
    version: str = "10.9.0.34",
    *,
    parse_errors: list[str] | None = None,
    build_fails: bool = False,
    timing_signature: bytes = b"GPU-9.0|",
    foreign_cache: str = "refuse",
) -> types.ModuleType:
    """A fresh stand-in module; put it in ``sys.modules["tensorrt"]`` with monkeypatch.

    Args:
        version: ``__version__``; the major (10 or 11) selects the API slice (TensorRT 11 has
            no weak-typing builder flags).
        parse_errors: the parser reports these and fails.
        build_fails: ``build_serialized_network`` returns None (what TensorRT does on failure).
        timing_signature: the "GPU" of this module; a timing cache that starts with another
            signature is refused.
        foreign_cache: how a foreign cache is refused: ``refuse`` (``set_timing_cache(cache,
            ignore_mismatch=False)`` returns False), ``none`` (``create_timing_cache`` returns
            None) or ``raise`` (it raises RuntimeError).
    """
    trt = types.ModuleType("tensorrt")
    major = int(version.split(".")[0])
    trt.__version__ = version
    trt.events = []  # (what, detail) in call order
    trt.builds = 0
    trt.TIMING_SIGNATURE = timing_signature
    trt.DataType = DataType
    trt.float32, trt.float16 = DataType.FLOAT, DataType.HALF
    trt.int64, trt.int32 = DataType.INT64, DataType.INT32
    trt.MemoryPoolType = MemoryPoolType
    trt.NetworkDefinitionCreationFlag = enum.IntEnum(
        "NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
    flags = {"DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 5}
    if major == 10:  # removed with weak typing in TensorRT 11
        flags.update(FP16=0, PREFER_PRECISION_CONSTRAINTS=10, OBEY_PRECISION_CONSTRAINTS=11)
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", flags)

    class Logger:
        WARNING = 2

        def __init__(self, severity: int = 2) -> None:
            self.severity = severity

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self._network, self._errors = network, []

        def parse(self, data: bytes) -> bool:
            if parse_errors:
                self._errors = list(parse_errors)
                return False
            model = onnx.load_from_string(bytes(data))
            inferred = onnx.shape_inference.infer_shapes(model)
            dtypes = {v.name: _ONNX_TO_TRT.get(v.type.tensor_type.elem_type, DataType.FLOAT)
                      for v in [*inferred.graph.value_info, *inferred.graph.output]}
            net = self._network
            net.onnx_model = model
            net.inputs = {i.name: len(i.type.tensor_type.shape.dim) for i in model.graph.input}
            for n in model.graph.node:
                outs = [Tensor(o, dtypes.get(o, DataType.FLOAT)) for o in n.output if o]
                net.layers.append(Layer(n.name, n.name, outs, major, net.strongly_typed))
                if n.op_type in HELPER_OPS:
                    aux = [Tensor(f"{n.name}_aux", outs[0].dtype)]
                    name = (f"{n.name}_1" if HELPER_OPS[n.op_type] == "suffix"
                            else f"(Unnamed Layer* {len(net.layers)}) [Shuffle]")
                    net.layers.append(Layer(name, n.name, aux, major, net.strongly_typed))
            trt.events.append(("parse", len(model.graph.node)))
            return True

        @property
        def num_errors(self) -> int:
            return len(self._errors)

        def get_error(self, i: int) -> str:
            return self._errors[i]

    class BuilderConfig:
        def __init__(self) -> None:
            self.pool_limits: dict[MemoryPoolType, int] = {}
            self.flags: set = set()
            self.profiles: list[Profile] = []
            self._cache: TimingCache | None = None

        def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
            self.pool_limits[pool] = int(size)

        def set_flag(self, flag) -> None:
            self.flags.add(trt.BuilderFlag(flag))

        def add_optimization_profile(self, profile: Profile) -> int:
            if not profile.valid or not profile.shapes:
                return -1  # what TensorRT returns for an invalid profile
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, blob: bytes) -> TimingCache | None:
            trt.events.append(("create_timing_cache", len(blob)))
            if blob and not bytes(blob).startswith(timing_signature):
                if foreign_cache == "none":
                    return None
                if foreign_cache == "raise":
                    raise RuntimeError("timing cache: version or device mismatch")
            return TimingCache(blob, trt)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            ok = not cache.blob or ignore_mismatch or cache.blob.startswith(timing_signature)
            trt.events.append(("set_timing_cache", len(cache.blob), ok))
            if ok:
                self._cache = cache
            return ok

        def get_timing_cache(self) -> TimingCache | None:
            return self._cache

    class Builder:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0) -> Network:
            trt.events.append(("create_network", flags))
            strongly = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
            return Network(flags, bool(flags & strongly) or major >= 11)

        def create_builder_config(self) -> BuilderConfig:
            return BuilderConfig()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: BuilderConfig):
            trt.events.append(("build", None))
            # every input is dynamic (N, H, W) in our exports: each needs a shape in a profile
            covered = {name for p in config.profiles for name in p.shapes}
            if build_fails or not set(network.inputs) <= covered or any(
                    len(p.shapes.get(n, ((),))[0]) != r for p in config.profiles
                    for n, r in network.inputs.items()):
                return None
            trt.builds += 1
            initializer_types = {t.data_type for t in network.onnx_model.graph.initializer}
            description = {
                "strongly_typed": network.strongly_typed,
                "flags": sorted(f.name for f in config.flags),
                "workspace": config.pool_limits.get(MemoryPoolType.WORKSPACE),
                "profiles": [{k: [list(s) for s in v] for k, v in p.shapes.items()}
                             for p in config.profiles],
                "pinned_layers": [ly.name for ly in network.layers
                                  if ly.precision == DataType.FLOAT],
                "pinned_outputs": sum(
                    1 for ly in network.layers for t in ly.output_types.values()
                    if t == DataType.FLOAT),
                "fp16_initializers": TensorProto.FLOAT16 in initializer_types,
                "timing_cache_bytes": len(config._cache.blob) if config._cache else None,
                "io": {"sources": _io_type(network.onnx_model, "sources"),
                       "fused": _io_type(network.onnx_model, "fused")},
            }
            return PLAN_MAGIC + json.dumps(description).encode()

    class Engine:
        def __init__(self, description: dict) -> None:
            self._io = description["io"]

        @property
        def num_io_tensors(self) -> int:
            return len(self._io)

        def get_tensor_name(self, i: int) -> str:
            return list(self._io)[i]

        def get_tensor_dtype(self, name: str) -> DataType:
            return DataType(self._io[name])

        def create_execution_context(self):
            trt.events.append(("context", None))
            return types.SimpleNamespace()

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, plan: bytes):
            data = bytes(plan)
            trt.events.append(("deserialize", len(data)))
            if not data.startswith(PLAN_MAGIC):
                return None  # what TensorRT does with a plan it cannot read
            return Engine(json.loads(data[len(PLAN_MAGIC):]))

    trt.Logger, trt.OnnxParser, trt.Builder, trt.Runtime = Logger, OnnxParser, Builder, Runtime
    return trt


def _io_type(model: onnx.ModelProto, name: str) -> int:
    for v in [*model.graph.input, *model.graph.output]:
        if v.name == name:
            return int(_ONNX_TO_TRT[v.type.tensor_type.elem_type])
    raise KeyError(name)


def read_fake_plan(path) -> dict:
    """What the fake builder was told, from a plan file it wrote."""
    data = Path(path).read_bytes()
    assert data.startswith(PLAN_MAGIC), "not a plan from the stand-in TensorRT"
    return json.loads(data[len(PLAN_MAGIC):])
