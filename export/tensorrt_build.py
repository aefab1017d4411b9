"""TensorRT engine of the fusion module: profile, build, sidecar JSON and accuracy check.

Written against the TensorRT 10/11 Python API (``tensorrt`` is imported only here, lazily):
``OnnxParser`` -> network, one optimisation profile for ``sources`` from ``--min/--opt/--max``,
a workspace limit, a timing cache file reused across builds, then
``build_serialized_network``. Precision:

* an FP16 ONNX (``export_onnx(fp16=True)``) is built as a *strongly typed* network: the types
  in the graph, FP32 islands included, are what runs. On TensorRT 10 this is the
  ``STRONGLY_TYPED`` creation flag; TensorRT 11 is always strongly typed.
* an FP32 ONNX on TensorRT 10.0-10.11 is built weakly typed with ``BuilderFlag.FP16`` and the
  island layers (:func:`refusion.export.fp16.choose_fp32_nodes`) pinned to FP32 under
  ``OBEY_PRECISION_CONSTRAINTS``. TensorRT 10.12 deprecated weak typing and 11 removed those
  flags, so from 10.12 on the FP32 ONNX is converted to the FP16 graph in memory first and
  built strongly typed.

The plan is written with a sidecar ``<plan>.json`` (TensorRT version, GPU and compute
capability, ONNX SHA-256, profile, precision, accuracy) and only after the built engine matched
ONNX Runtime FP32 on a real-size input at the FP16 bar (PSNR >= 50 dB, no inf/NaN).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from refusion.export.metadata import INPUT_NAME, OUTPUT_NAME, sha256_file

from refusion.errors import UserError
from refusion.utils.atomic import atomic_write_bytes, atomic_write_text, ensure_writable

log = logging.getLogger("refusion.export")

INSTALL_HINT = "TensorRT is not installed; install it with: pip install refusion[tensorrt]"
DEFAULT_MIN_HW = (32, 32)
DEFAULT_OPT_HW = (1080, 1920)
DEFAULT_MAX_HW = (2160, 3840)
DEFAULT_WORKSPACE_GB = 4.0
#: Largest side the accuracy check runs at (the ORT FP32 reference runs on the CPU).
CHECK_MAX_SIDE = 1920

Shape4 = tuple[int, int, int, int]


def import_tensorrt():
    """``import tensorrt``, or a one-line :class:`UserError` saying what to install."""
    try:
        import tensorrt as trt
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return trt


def tensorrt_version(trt) -> tuple[int, int]:
    """``(major, minor)`` of a ``tensorrt`` module (``"10.12.0.36"`` -> ``(10, 12)``)."""
    parts = (str(trt.__version__).split(".") + ["0"])[:2]
    return int(parts[0]), int(re.match(r"\d*", parts[1]).group() or 0)


#: TensorRT 10.12 deprecated weak typing (builder precision flags); from there on an FP32
#: file is built like on TensorRT 11: converted to FP16 in memory, strongly typed.
WEAK_TYPING_DEPRECATED = (10, 12)


# --------------------------------------------------------------------------------------------
# Shapes and the optimisation profile (pure Python, tested without TensorRT)


def parse_hw(text: str, flag: str = "size") -> tuple[int, int]:
    """``"1080x1920"`` -> ``(1080, 1920)`` (height first); one-line error otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not m:
        raise UserError(f"{flag} must be HEIGHTxWIDTH, e.g. 1080x1920, got {text!r}")
    h, w = int(m.group(1)), int(m.group(2))
    if h < 1 or w < 1:
        raise UserError(f"{flag} must be positive, got {text!r}")
    return h, w


def as_nchw(shape, batch: int = 1) -> Shape4:
    """``(H, W)`` -> ``(batch, 2, H, W)``; ``(N, 2, H, W)`` is checked and returned."""
    dims = tuple(int(v) for v in shape)
    if len(dims) == 2:
        dims = (batch, 2, *dims)
    if len(dims) != 4 or dims[1] != 2 or min(dims) < 1:
        raise UserError(f"a profile shape is (H, W) or (N, 2, H, W), positive, got {shape}")
    return dims  # type: ignore[return-value]


@dataclass(frozen=True)
class Profile:
    """Optimisation profile of the ``sources`` input: min <= opt <= max in every dimension."""

    min: Shape4
    opt: Shape4
    max: Shape4
    input: str = INPUT_NAME

    def as_dict(self) -> dict:
        return {"input": self.input, "min": list(self.min), "opt": list(self.opt),
                "max": list(self.max)}


def make_profile(min_shape=None, opt_shape=None, max_shape=None, batch: int = 1) -> Profile:
    """Build and validate a profile; ``(H, W)`` shapes get batch 1 (min) and ``batch`` (opt/max).

    ``batch`` is the largest batch the engine takes; it is also the batch it is tuned for.
    """
    if batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")
    lo = as_nchw(min_shape or DEFAULT_MIN_HW, 1)
    opt = as_nchw(opt_shape or DEFAULT_OPT_HW, batch)
    hi = as_nchw(max_shape or DEFAULT_MAX_HW, batch)
    names = ("batch", "channels", "height", "width")
    for i, name in enumerate(names):
        if not lo[i] <= opt[i] <= hi[i]:
            raise UserError(
                f"profile {name} must satisfy min <= opt <= max, got "
                f"{lo[i]} / {opt[i]} / {hi[i]} (min {_hw(lo)}, opt {_hw(opt)}, max {_hw(hi)})"
            )
    return Profile(lo, opt, hi)


def _hw(shape: Shape4) -> str:
    return f"{shape[2]}x{shape[3]}"


def check_shape(profile: Profile) -> Shape4:
    """The real-size shape the built engine is checked at: opt, capped for the CPU reference."""
    n, c, h, w = profile.opt
    scale = min(1.0, CHECK_MAX_SIDE / max(h, w))
    h2, w2 = max(int(h * scale), profile.min[2]), max(int(w * scale), profile.min[3])
    # within the profile: at least its minimum batch (a batch-4-only profile is checked at 4)
    return (max(min(n, 2), profile.min[0]), c, h2, w2)


# --------------------------------------------------------------------------------------------
# What will be built (pure Python, tested without TensorRT)


@dataclass
class BuildSettings:
    """How the network is created and configured for one ONNX file and TensorRT version."""

    trt_major: int
    onnx_precision: str  # what the file holds: fp32 or fp16
    precision: str  # what the engine runs: fp16-strongly-typed, fp16-weak-pinned, fp32
    strongly_typed: bool
    fp16_flag: bool
    convert_to_fp16: bool  # build from the in-memory FP16 conversion of an FP32 file
    fp32_pins: list[str] = field(default_factory=list)  # ONNX node names
    fp32_tensors: list[str] = field(default_factory=list)  # their output tensor names


def onnx_precision(model) -> str:
    """``fp16`` when the graph holds FP16 tensors or says so in its metadata, else ``fp32``."""
    from onnx import TensorProto

    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("precision") in ("fp16", "fp32"):
        return meta["precision"]
    has_half = any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
    return "fp16" if has_half else "fp32"


def plan_build(model, trt_version: int | tuple[int, int], fp16: bool = True) -> BuildSettings:
    """Decide typing, flags and FP32 pins for ``model`` (an ``onnx.ModelProto``).

    Args:
        trt_version: TensorRT ``(major, minor)``, or the major alone (minor 0).
        fp16: build an FP16 engine (the default); ``False`` keeps an FP32 ONNX in FP32.
    """
    from refusion.export.fp16 import choose_fp32_nodes

    version = (trt_version, 0) if isinstance(trt_version, int) else tuple(trt_version)
    trt_major = version[0]
    prec = onnx_precision(model)
    if trt_major < 10:
        raise UserError(f"TensorRT {trt_major} is too old: refusion needs TensorRT 10 or newer")
    if prec == "fp16":
        return BuildSettings(trt_major, prec, "fp16-strongly-typed", True, False, False)
    if not fp16:  # strongly typed wherever weak typing is deprecated (all FP32 either way)
        return BuildSettings(trt_major, prec, "fp32", version >= WEAK_TYPING_DEPRECATED, False,
                             False)
    if version < WEAK_TYPING_DEPRECATED:
        pins = choose_fp32_nodes(model)
        wanted = set(pins)
        tensors = [o for n in model.graph.node if n.name in wanted for o in n.output]
        return BuildSettings(
            trt_major, prec, "fp16-weak-pinned", False, True, False, pins, tensors
        )
    return BuildSettings(trt_major, prec, "fp16-strongly-typed", True, False, True)


def network_model(model, settings: BuildSettings):
    """The ``onnx.ModelProto`` the parser will read for these settings."""
    if settings.convert_to_fp16:
        from refusion.export.fp16 import convert_to_fp16
        from refusion.export.metadata import set_metadata

        meta = {p.key: p.value for p in model.metadata_props}
        converted, islands = convert_to_fp16(model)
        meta.update(precision="fp16", fp32_islands=json.dumps(islands))
        set_metadata(converted, meta)
        return converted
    return model


def reference_model(model):
    """The FP32 graph the engine is compared with (the file itself, or its FP32 twin)."""
    if onnx_precision(model) == "fp16":
        from refusion.export.fp16 import upcast_to_fp32

        return upcast_to_fp32(model)
    return model


def pin_matches(
    layer_name: str,
    layer_metadata: str,
    output_names: list[str],
    pins: set[str],
    tensors: set[str] = frozenset(),
) -> bool:
    """Whether a TensorRT layer comes from one of the pinned ONNX nodes.

    The parser keeps ONNX tensor names on the tensors it creates, so the layer that produces a
    pinned node's output is found by name; helper layers of the node are found by their name
    (the node's name, or ``<node>_<k>``) or, on TensorRT 10, by the ``[ONNX Layer: <node>]``
    record in the layer's metadata. Pinning one layer too many costs speed, never accuracy.
    """
    if layer_name in pins or any(o in tensors for o in output_names):
        return True
    m = re.search(r"\[ONNX Layer: ([^\]]+)\]", layer_metadata or "")
    if m and m.group(1) in pins:
        return True
    return any(re.fullmatch(re.escape(p) + r"(_\d+)?", layer_name) for p in pins)


def sidecar_path(plan_path: str | os.PathLike) -> Path:
    """``model.plan`` -> ``model.plan.json``."""
    p = Path(plan_path)
    return p.with_name(p.name + ".json")


def make_sidecar(
    *,
    onnx_path: str | os.PathLike,
    profile: Profile,
    settings: BuildSettings,
    trt_version: str,
    gpu: dict,
    workspace_gb: float,
    timing_cache: str | os.PathLike | None,
    accuracy: dict | None,
    onnx_sha256: str | None = None,
) -> dict:
    """Content of ``<plan>.json``: what the plan was built from, where, and how well it does."""
    from refusion import __version__

    return {
        "format": "refusion-tensorrt-plan",
        "format_version": 1,
        "refusion_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tensorrt_version": trt_version,
        "gpu": gpu,
        "onnx": Path(onnx_path).name,
        "onnx_sha256": onnx_sha256 or sha256_file(onnx_path),
        "onnx_precision": settings.onnx_precision,
        "precision": settings.precision,
        "strongly_typed": settings.strongly_typed,
        "fp32_pinned_nodes": len(settings.fp32_pins),
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "layout": "NCHW",
        "profiles": [profile.as_dict()],
        "workspace_gb": workspace_gb,
        "timing_cache": str(timing_cache) if timing_cache else None,
        "accuracy": accuracy,
    }


def read_plan_sidecar(plan_path: str | os.PathLike) -> dict:
    """Read ``<plan>.json``; one-line :class:`UserError` when missing or unreadable."""
    p = sidecar_path(plan_path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no sidecar {p} next to the plan (built elsewhere?)") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {p} ({exc})") from None


def gpu_info() -> dict:
    """Name and compute capability of CUDA device 0 (via torch), or ``unknown``."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except Exception:  # noqa: BLE001 - informative only
        pass
    return {"name": "unknown", "compute_capability": "unknown"}


# --------------------------------------------------------------------------------------------
# The TensorRT part


def _make_logger(trt):
    return trt.Logger(trt.Logger.WARNING)


def _create_network(trt, builder, settings: BuildSettings):
    flags = 0
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    # TensorRT 11 is strongly typed whatever the flag (which it keeps for compatibility).
    if settings.strongly_typed and strongly is not None:
        flags |= 1 << int(strongly)
    return builder.create_network(flags)


def _parse(trt, network, logger, onnx_bytes: bytes) -> object:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise UserError(f"TensorRT could not parse the ONNX graph: {'; '.join(errors)[:500]}")
    return parser  # keep alive as long as the network


def _apply_pins(trt, network, settings: BuildSettings) -> int:
    """Pin the island layers to FP32 (weakly typed TensorRT 10 only); returns how many."""
    pins, tensors, count = set(settings.fp32_pins), set(settings.fp32_tensors), 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        names = [layer.get_output(j).name for j in range(layer.num_outputs)]
        meta = getattr(layer, "metadata", "") or ""
        if not pin_matches(layer.name, meta, names, pins, tensors):
            continue
        outs = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype == trt.float32]
        if not outs:
            continue  # shape arithmetic (int64) has no precision to pin
        layer.precision = trt.float32
        for j in outs:
            layer.set_output_type(j, trt.float32)
        count += 1
    return count


def _configure(trt, builder, network, settings: BuildSettings, profile: Profile, workspace_gb):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if settings.fp16_flag:
        fp16_flag = getattr(trt.BuilderFlag, "FP16", None)
        if fp16_flag is None:  # plan_build only asks for it on TensorRT 10
            raise UserError("this TensorRT has no BuilderFlag.FP16; export with --fp16")
        config.set_flag(fp16_flag)
        obey = getattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS", None)
        config.set_flag(obey if obey is not None else trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        pinned = _apply_pins(trt, network, settings)
        log.info("  pinned %d layers to FP32 (weakly typed FP16 build)", pinned)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(profile.input, profile.min, profile.opt, profile.max)
    if config.add_optimization_profile(opt_profile) < 0:
        raise UserError(f"TensorRT refused the optimisation profile min {_hw(profile.min)}, "
                        f"opt {_hw(profile.opt)}, max {_hw(profile.max)} (see its log above)")
    return config


def _attach_timing_cache(config, cache_path: Path) -> None:
    """Give the builder the timing cache in ``cache_path``, or a new one.

    A cache from another GPU or TensorRT version is refused by TensorRT: by
    ``set_timing_cache(..., ignore_mismatch=False)`` returning False, or already by
    ``create_timing_cache`` (None or an exception, depending on the version). Either way the
    build goes on with a fresh cache rather than failing, and the file is replaced afterwards.
    """
    ensure_writable(cache_path)  # a folder or a read-only place fails now, not after the build
    try:
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
    except OSError as exc:
        raise UserError(f"cannot read the timing cache {cache_path} ({exc.strerror})") from None
    log.info("  timing cache %s (%s)", cache_path, f"{len(blob)} bytes" if blob else "new")
    if blob:
        try:
            cache = config.create_timing_cache(blob)
        except (RuntimeError, TypeError, ValueError):
            cache = None
        if cache is not None and config.set_timing_cache(cache, False):
            return
        log.warning("  timing cache %s is for another GPU or TensorRT; starting a new one",
                    cache_path)
    config.set_timing_cache(config.create_timing_cache(b""), False)


def engine_check_problem() -> str | None:
    """Why the engine's accuracy check cannot run here (it runs the plan through torch's CUDA
    tensors), or None. Asked before the build, so that minutes of building are not lost."""
    import torch

    if not torch.cuda.is_available():
        return "the engine accuracy check needs a CUDA build of torch (or check=False)"
    return None


def run_engine(trt, plan: bytes, x):
    """Run a serialized plan on one float32 ``(N, 2, H, W)`` numpy input (needs CUDA torch)."""
    import numpy as np
    import torch

    why = engine_check_problem()
    if why:
        raise UserError(why)
    logger = _make_logger(trt)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise UserError("TensorRT could not deserialize the plan it just built")
    ctx = engine.create_execution_context()
    if not ctx.set_input_shape(INPUT_NAME, tuple(x.shape)):
        raise UserError(f"TensorRT refused the check input shape {tuple(x.shape)} (outside the "
                        "engine's optimisation profile)")
    inp = torch.from_numpy(np.ascontiguousarray(x, np.float32)).cuda()
    out = torch.empty((x.shape[0], 1, *x.shape[2:]), dtype=torch.float32, device="cuda")
    ctx.set_tensor_address(INPUT_NAME, inp.data_ptr())
    ctx.set_tensor_address(OUTPUT_NAME, out.data_ptr())
    # a stream of its own: on the legacy default stream enqueueV3 adds synchronisations
    # (and TensorRT warns), as the runtime backend avoids too
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # the uploads above are on that one
    if not ctx.execute_async_v3(stream.cuda_stream):
        raise UserError("TensorRT failed to run the engine")
    stream.synchronize()
    return out.cpu().numpy()


def build_engine(
    onnx_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    *,
    min_shape=DEFAULT_MIN_HW,
    opt_shape=DEFAULT_OPT_HW,
    max_shape=DEFAULT_MAX_HW,
    batch: int = 1,
    workspace_gb: float = DEFAULT_WORKSPACE_GB,
    timing_cache: str | os.PathLike | None = None,
    fp16: bool = True,
    check: bool = True,
) -> Path:
    """Build a TensorRT engine from an exported ONNX file; write the plan and ``<plan>.json``.

    Args:
        onnx_path: an ``.onnx`` from :func:`refusion.export.export_onnx` (FP32 or FP16).
        plan_path: destination of the serialized engine.
        min_shape, opt_shape, max_shape: ``(H, W)`` or ``(N, 2, H, W)`` of the profile.
        batch: largest batch (used for ``(H, W)`` opt/max shapes).
        workspace_gb: workspace memory pool limit.
        timing_cache: a timing cache file, read when present and updated after the build, so
            later builds on the same GPU skip kernel timing.
        fp16: build an FP16 engine (default); ``False`` builds an FP32 ONNX in FP32.
        check: compare the engine with ONNX Runtime FP32 on a real-size input and refuse to
            write it below the FP16 bar (PSNR >= 50 dB, finite).

    Raises:
        UserError: TensorRT missing (names the extra to install), bad profile, parse/build
            failure, or a failed accuracy check (``ExportCheckError``).
    """
    import onnx

    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if not onnx_path.is_file():
        raise UserError(f"ONNX model not found: {onnx_path}")
    profile = make_profile(min_shape, opt_shape, max_shape, batch)
    trt = import_tensorrt()
    why = engine_check_problem() if check else None
    if why:  # before the build, not after it
        raise UserError(why)
    model = onnx.load(str(onnx_path))
    settings = plan_build(model, tensorrt_version(trt), fp16)
    net_model = network_model(model, settings)
    log.info(
        "building TensorRT %s engine (%s), profile min %s opt %s max %s, batch <= %d",
        trt.__version__, settings.precision, _hw(profile.min), _hw(profile.opt),
        _hw(profile.max), profile.max[0],
    )
    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    network = _create_network(trt, builder, settings)
    parser = _parse(trt, network, logger, net_model.SerializeToString())
    config = _configure(trt, builder, network, settings, profile, workspace_gb)
    cache_path = Path(timing_cache) if timing_cache else None
    if cache_path is not None:
        _attach_timing_cache(config, cache_path)
    plan = builder.build_serialized_network(network, config)
    del parser
    if plan is None:
        raise UserError("TensorRT failed to build the engine (see its log above)")
    plan_bytes = bytes(plan)
    timing = config.get_timing_cache() if cache_path is not None else None
    if timing is not None:  # None: no cache attached after all
        atomic_write_bytes(cache_path, bytes(timing.serialize()))

    accuracy = None
    if check:
        accuracy = check_engine(trt, plan_bytes, reference_model(model), check_shape(profile))
    atomic_write_bytes(plan_path, plan_bytes)
    sidecar = make_sidecar(
        onnx_path=onnx_path, profile=profile, settings=settings, trt_version=trt.__version__,
        gpu=gpu_info(), workspace_gb=workspace_gb, timing_cache=cache_path, accuracy=accuracy,
    )
    atomic_write_text(sidecar_path(plan_path), json.dumps(sidecar, indent=2) + "\n")
    log.info("wrote %s and %s", plan_path, sidecar_path(plan_path).name)
    return plan_path


def check_engine(trt, plan: bytes, fp32_model, shape: Shape4) -> dict:
    """Engine vs ONNX Runtime FP32 at ``shape``; raises ``ExportCheckError`` below the bar."""
    from refusion.export.fp16 import FP16_MIN_PSNR_DB
    from refusion.export.onnx_export import (
        ExportCheckError,
        compare,
        ort_session,
        probe_input,
        run_ort,
    )

    x = probe_input(shape)
    res = compare(run_ort(ort_session(fp32_model), x), run_engine(trt, plan, x))
    log.info("  TensorRT vs ORT FP32 %s", res)
    if not res.finite or res.psnr_db < FP16_MIN_PSNR_DB:
        raise ExportCheckError(
            f"the TensorRT engine is not accurate enough: {res} (bar {FP16_MIN_PSNR_DB:g} dB, "
            "finite); the plan was not written"
        )
    return {"shape": list(shape), "max_abs": res.max_abs, "psnr_db": round(res.psnr_db, 2),
            "reference": "onnxruntime-cpu-fp32"}


