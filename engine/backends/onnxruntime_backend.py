"""ONNX Runtime backend: CPU, CUDA or TensorRT execution provider, all graph optimisations,
one intra-op thread per physical core, IO binding on the GPU."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from refusion.engine.base import Backend, default_threads

from refusion.errors import UserError

# The CPU provider is always appended as the fallback for nodes a GPU provider does not take.
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def available_providers() -> list[str]:
    """ONNX Runtime's execution providers on this machine ([] without onnxruntime)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


class OnnxRuntimeBackend(Backend):
    """Run an ONNX export of the fusion module with ONNX Runtime.

    Args:
        model_path: ``.onnx`` file with input ``sources`` ``(N, 2, H, W)`` and output ``fused``
            ``(N, 1, H, W)`` (see :mod:`refusion.engine.onnx_cache` for exporting one).
        device: ``cpu``, ``cuda[:N]``.
        provider: ``cpu``, ``cuda`` or ``tensorrt``; default follows ``device``.
        threads: intra-op threads (default: ``$OMP_NUM_THREADS`` when set, else physical
            cores; :func:`refusion.engine.base.default_threads`).
        optimization: ``all`` (default), ``extended``, ``basic`` or ``none``.
        spin: let idle ORT threads spin; ``False`` leaves the cores to the video decoder and
            encoder threads between frames.
        trt_cache: folder for the TensorRT provider's engine cache.
    """

    name = "onnxruntime"

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str = "cpu",
        *,
        provider: str | None = None,
        threads: int | None = None,
        optimization: str = "all",
        spin: bool = True,
        trt_cache: str | os.PathLike | None = None,
    ) -> None:
        super().__init__(device)
        self.model_path = Path(model_path)
        self.provider = provider or ("cuda" if device.startswith("cuda") else "cpu")
        if self.provider not in PROVIDERS:
            raise UserError(f"onnxruntime provider must be one of {sorted(PROVIDERS)}")
        self.threads = threads
        self.optimization = optimization
        self.spin = spin
        self.trt_cache = trt_cache
        self._session: Any = None
        self._binding: Any = None

    def _activate(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError(
                "--backend onnxruntime needs the onnxruntime package, which is not installed: "
                "pip install 'onnxruntime>=1.18' (for CUDA: pip install onnxruntime-gpu, "
                "after pip uninstall onnxruntime, which would hide its CUDA provider)"
            ) from None
        if not self.model_path.is_file():
            raise UserError(f"ONNX model not found: {self.model_path}")
        wanted = PROVIDERS[self.provider]
        have = set(ort.get_available_providers())
        if wanted[0] not in have:
            raise UserError(
                f"--backend onnxruntime: {wanted[0]} is not available here "
                f"(this onnxruntime has {', '.join(sorted(have))})"
            )
        levels = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        if self.optimization not in levels:
            raise UserError(f"onnxruntime optimisation must be one of {sorted(levels)}")
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[self.optimization]
        so.intra_op_num_threads = self.threads or default_threads()
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        if not self.spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        device_id = int(self.device.split(":")[1]) if ":" in self.device else 0
        providers: list[Any] = []
        for p in wanted:
            if p == "CUDAExecutionProvider":
                providers.append((p, {"device_id": device_id}))
            elif p == "TensorrtExecutionProvider":
                opts: dict[str, Any] = {"device_id": device_id}
                if self.trt_cache:
                    opts.update(trt_engine_cache_enable=True,
                                trt_engine_cache_path=str(self.trt_cache))
                providers.append((p, opts))
            else:
                providers.append(p)
        try:
            self._session = ort.InferenceSession(str(self.model_path), so, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise UserError(f"cannot load ONNX model {self.model_path}: {exc}") from None
        got = self._session.get_providers()
        if not got or got[0] != wanted[0]:
            # ORT only warns when a listed provider fails to load (missing CUDA or cuDNN
            # libraries) and falls back to the CPU: say so now, not at the first frame
            self._session = None
            raise UserError(
                f"--backend onnxruntime: {wanted[0]} is listed but did not load (the session "
                f"got {', '.join(got) or 'no provider'}): check the CUDA and cuDNN libraries "
                "that onnxruntime-gpu needs (onnxruntime.preload_dlls() can load those of an "
                "installed torch), and that the CPU package onnxruntime is not installed beside it"
            )
        names_in = [i.name for i in self._session.get_inputs()]
        names_out = [o.name for o in self._session.get_outputs()]
        if names_in != ["sources"] or names_out[:1] != ["fused"]:
            raise UserError(
                f"{self.model_path} is not a fusion export (inputs {names_in}, outputs "
                f"{names_out}; expected 'sources' -> 'fused')"
            )
        self._device_id = device_id

    def _deactivate(self) -> None:
        self._session = self._binding = None

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        if self.provider == "cpu":
            return self._session.run(["fused"], {"sources": batch})[0]
        # IO binding: input copied to the GPU once, output allocated there by ORT, then one
        # copy back; no intermediate host staging inside run().
        import onnxruntime as ort

        binding = self._session.io_binding()
        x = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", self._device_id)
        binding.bind_ortvalue_input("sources", x)
        binding.bind_output("fused", "cuda", self._device_id)
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(provider=self.provider, optimization=self.optimization,
                 threads=self.threads or default_threads(), model=self.model_path.name)
        if self._session is not None:
            d["providers"] = self._session.get_providers()
        return d
