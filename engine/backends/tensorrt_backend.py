"""TensorRT backend: a serialized plan from ``refusion-export`` run with TensorRT 10's named
tensor API (``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) on one CUDA
stream, with device buffers preallocated as torch CUDA tensors (no pycuda needed).

The plan's sidecar ``<plan>.json`` (written by ``refusion.export.build_engine``) is read when
present, for the optimisation profile's shape range; it is informative only, the engine itself
is the authority and reports a shape outside its profile as an error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from refusion.engine.base import Backend

from refusion.errors import UserError


def tensorrt_available() -> tuple[bool, str]:
    """Whether TensorRT and a CUDA device are usable, and the reason when not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False, "the tensorrt package is not installed"
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA device is available"
    return True, ""


def plan_mismatch(sidecar: dict, trt_version: str, capability: str) -> str | None:
    """Why a plan cannot run here, from its sidecar, or None when nothing says so.

    A plan runs only under the TensorRT version that built it and on GPUs of the compute
    capability it was built for (our builds set neither compatibility flag). Checking the
    sidecar first turns TensorRT's bare deserialisation failure into a message that says which.
    """
    built, cc = sidecar.get("tensorrt_version"), (sidecar.get("gpu") or {}).get(
        "compute_capability")
    problems = []
    if built and built != "unknown" and built != trt_version:
        problems.append(f"built with TensorRT {built}, this is TensorRT {trt_version}")
    if cc and cc != "unknown" and cc != capability:
        problems.append(f"built for compute capability {cc}, this GPU is {capability}")
    return "; ".join(problems) or None


def profile_text(sidecar: dict) -> str:
    """The optimisation profile(s) of a plan's sidecar, as ``min .. opt .. max`` shapes."""
    shapes = ["x".join(map(str, s)) for p in sidecar.get("profiles") or []
              for s in (p.get("min"), p.get("opt"), p.get("max")) if s]
    return " .. ".join(shapes) if shapes else "(unknown: no sidecar)"


class TensorRTBackend(Backend):
    """Run a TensorRT engine (``.plan``) of the fusion module.

    Args:
        plan_path: serialized engine with input ``sources`` and output ``fused``.
        device: ``cuda[:N]``.

    Buffers are allocated for the largest shape seen so far and reused; a new shape only
    calls ``set_input_shape`` (and grows the buffers when it is larger).
    """

    name = "tensorrt"

    def __init__(self, plan_path: str | os.PathLike, device: str = "cuda") -> None:
        if not device.startswith("cuda"):
            raise UserError("--backend tensorrt runs on CUDA only (use --device cuda)")
        super().__init__(device)
        self.plan_path = Path(plan_path)
        self.sidecar: dict[str, Any] = {}
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._in: Any = None
        self._out: Any = None
        self._dtypes: dict[str, Any] = {}

    def _activate(self) -> None:
        ok, why = tensorrt_available()
        if not ok:
            raise UserError(f"--backend tensorrt: {why}")
        import tensorrt as trt
        import torch

        if not self.plan_path.is_file():
            raise UserError(f"TensorRT plan not found: {self.plan_path}")
        side = self.plan_path.with_name(self.plan_path.name + ".json")
        if side.is_file():
            try:
                self.sidecar = json.loads(side.read_text())
            except (OSError, ValueError):
                self.sidecar = {}
        major, minor = torch.cuda.get_device_capability(torch.device(self.device))
        why = plan_mismatch(self.sidecar, trt.__version__, f"{major}.{minor}")
        if why:
            raise UserError(f"{self.plan_path} cannot run here ({why}): rebuild it with "
                            "refusion-export --engine")
        # an engine is bound to the GPU that is current when it is deserialized (TensorRT's
        # developer guide), so cuda:N must be current first
        torch.cuda.set_device(torch.device(self.device))
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        self._engine = runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self._engine is None:
            raise UserError(
                f"cannot deserialize {self.plan_path} (built by another TensorRT version or "
                "for another GPU? rebuild it with refusion-export)"
            )
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        if "sources" not in names or "fused" not in names:
            raise UserError(f"{self.plan_path} is not a fusion engine (tensors {names})")
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream(device=self.device)
        to_torch = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
        for n in ("sources", "fused"):
            self._dtypes[n] = to_torch[self._engine.get_tensor_dtype(n)]

    def _deactivate(self) -> None:
        self._context = self._engine = self._stream = self._in = self._out = None

    def _buffers(self, shape: tuple[int, int, int, int]) -> tuple[Any, Any]:
        import torch

        n, _, h, w = shape
        need = n * h * w
        if self._in is None or self._in.numel() < 2 * need:
            self._in = torch.empty(2 * need, dtype=self._dtypes["sources"], device=self.device)
            self._out = torch.empty(need, dtype=self._dtypes["fused"], device=self.device)
        return self._in[: 2 * need].view(n, 2, h, w), self._out[:need].view(n, 1, h, w)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        shape = tuple(batch.shape)
        x, y = self._buffers(shape)  # type: ignore[arg-type]
        if not self._context.set_input_shape("sources", shape):
            raise UserError(
                f"{self.plan_path}: input shape {shape} is outside the engine's optimisation "
                f"profile {profile_text(self.sidecar)} (rebuild it with refusion-export)"
            )
        self._context.set_tensor_address("sources", x.data_ptr())
        self._context.set_tensor_address("fused", y.data_ptr())
        with torch.cuda.stream(self._stream):
            x.copy_(torch.from_numpy(batch).pin_memory(), non_blocking=True)
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution failed for shape {shape}")
            out = y.float().cpu()  # synchronises the stream
        return out.numpy().copy()

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(plan=self.plan_path.name)
        if self.sidecar:
            d["precision"] = self.sidecar.get("precision", self.sidecar.get("fp16"))
        return d
