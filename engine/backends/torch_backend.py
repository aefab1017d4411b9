"""Eager PyTorch backend: channels-last, inference mode, optional ``torch.compile``; BF16 on CPUs
with native BF16 (AVX512-BF16/AMX) and on CUDA; on CUDA the native kernels (used by the model
automatically when built), optional FP16 and CUDA graphs."""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from refusion.engine.base import Backend, default_threads
from torch import nn

from refusion.errors import UserError


@contextlib.contextmanager
def native_disabled() -> Iterator[None]:
    """Run the pure-PyTorch references of :mod:`refusion.ops` (the benchmark baseline)."""
    from refusion import _native

    old = os.environ.get("REFUSION_DISABLE_NATIVE")
    os.environ["REFUSION_DISABLE_NATIVE"] = "1"
    _native.native_module.cache_clear()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("REFUSION_DISABLE_NATIVE", None)
        else:
            os.environ["REFUSION_DISABLE_NATIVE"] = old
        _native.native_module.cache_clear()


def load_module(weights: str | os.PathLike | nn.Module) -> nn.Module:
    """A fusion module from a checkpoint path (ours or the authors') or a module as is."""
    if isinstance(weights, nn.Module):
        return weights
    suffix = str(weights).lower()
    if suffix.endswith((".onnx", ".plan", ".engine", ".trt")):
        raise UserError(
            f"--weights {weights}: the torch backend needs a checkpoint (.safetensors or .pth), "
            "not an exported model"
        )
    from refusion.checkpoint import load_fusion_model

    return load_fusion_model(weights, "cpu")[0]


def has_bf16_hardware(device: str = "cpu") -> bool:
    """Whether ``device`` computes in BF16 natively (CPU: AVX512-BF16 or AMX; CUDA: sm_80+)."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, c, lambda: False)()) for c in checks)


def _warn_without_bf16_hardware(device: str) -> None:
    if not has_bf16_hardware(device):
        warnings.warn(f"{device} has no native BF16 arithmetic: --bf16 will run slower than FP32",
                      RuntimeWarning, stacklevel=3)


RECOMPILE_LIMIT = 64  # compiled shapes per network class before torch.compile falls back


def _frozen(compiled: Any) -> Any:
    """Run a compiled module with Inductor's freezing: the (constant) weights are folded into
    the graph and prepacked for oneDNN. Compilation happens lazily at each new shape, so the
    setting must hold around every call; ``torch.compile(options={"freezing": True})`` gave
    0.59 s against 0.46-0.48 s a BF16 480x640 frame here, so it is not enough."""
    import torch._inductor.config as inductor_config

    def run(x: torch.Tensor) -> torch.Tensor:
        with inductor_config.patch(freezing=True):
            return compiled(x)

    return run


class TorchBackend(Backend):
    """Run the fusion module with PyTorch.

    Args:
        weights: checkpoint path or an ``nn.Module``.
        device: ``cpu`` or ``cuda[:N]``.
        channels_last: NHWC memory format; default on CUDA (tensor cores) and for BF16 (oneDNN's
            BF16 convolutions: 1.12 s against 1.99 s a 480x640 frame in eager mode on this
            project's 2-core CPU); off for FP32 on CPU, where the model's many reshapes and
            depthwise convolutions ran slower with it.
        compile: wrap the model in ``torch.compile`` (first call per shape compiles, 15-25 s
            on a 2-core CPU); on CPU with Inductor's freezing (weights folded as constants,
            oneDNN weight prepacking), which the compiled graphs need to beat ONNX Runtime.
        half: FP16 weights and activations (CUDA only).
        bf16: BF16 weights and activations (reductions still accumulate in float32), output
            returned as float32. Not the same images as FP32: about 56 dB PSNR against it
            (``tests/test_engine_precision.py`` gates at 50 dB). Fast only where the hardware has
            BF16 arithmetic (CPU: AVX512-BF16 or AMX; CUDA: Ampere or newer); elsewhere a
            warning says it will be slower than FP32.
        cuda_graphs: capture one CUDA graph per input shape and replay it (CUDA only).
        native: keep the native kernels of :mod:`refusion.ops` when built (``False`` forces
            the pure-PyTorch references, as the benchmark baseline does). Default: on, except
            with ``compile``, where Inductor fuses the reference GELU gate into the loops around
            it and the opaque native op would block that (FP32 at 480x640: 0.92 s a frame with
            the native gate, 0.53-0.71 s without in five measurements).
        threads: intra-op threads on CPU (default: ``$OMP_NUM_THREADS`` when set, else
            physical cores; :func:`refusion.engine.base.default_threads`).
        retain_memory: keep freed memory in the process
            (:func:`refusion.engine.memory.retain_freed_memory`: process-wide, for the rest of
            the process); default on CPU, where PyTorch's uncached allocator otherwise faults
            every activation in again each frame.
        inference_form: run the re-parameterised network of :mod:`refusion.export.deploy`
            (split convolutions, LayerNorm folded into them; same images to float32 rounding);
            default on CPU. Ignored for networks without one (it needs a ``FusionNet`` or the
            decision-map ablation).
    """

    name = "torch"

    def __init__(
        self,
        weights: str | os.PathLike | nn.Module,
        device: str = "cpu",
        *,
        channels_last: bool | None = None,
        compile: bool = False,
        half: bool = False,
        bf16: bool = False,
        cuda_graphs: bool = True,
        native: bool | None = None,
        threads: int | None = None,
        retain_memory: bool | None = None,
        inference_form: bool | None = None,
    ) -> None:
        super().__init__(device)
        if half and bf16:
            raise UserError("choose one of --fp16 (half) and --bf16, not both")
        if half and not device.startswith("cuda"):
            # FP16 convolutions on the CPU are emulated and slower than FP32: never silently
            raise UserError(f"--fp16 (half) runs on CUDA only, not on {device}; on the CPU "
                            "--bf16 is the reduced-precision mode")
        self.weights = weights
        self.bf16 = bf16
        if channels_last is None:
            channels_last = device.startswith("cuda") or bf16
        self.channels_last = channels_last
        self.compile = compile
        self.half = half
        self.cuda_graphs = cuda_graphs and device.startswith("cuda") and not compile
        self.native = not compile if native is None else native
        self.threads = threads
        on_cpu = device == "cpu"
        self.retain_memory = on_cpu if retain_memory is None else retain_memory
        self.inference_form = on_cpu if inference_form is None else inference_form
        self._model: nn.Module | None = None
        self._run: Any = None
        self._graphs: dict[tuple[int, ...], tuple[Any, torch.Tensor, torch.Tensor]] = {}
        self._host_threads: int | None = None  # the process's torch threads while active

    def _activate(self) -> None:
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("--backend torch --device cuda: no CUDA device is available")
        if self.device == "cpu":
            # torch's thread count is process-wide: the host application's own setting comes
            # back at deactivate()
            self._host_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads or default_threads())
        if self.retain_memory:
            from refusion.engine.memory import retain_freed_memory

            retain_freed_memory()
        model = load_module(self.weights)
        if model is self.weights:
            # .to()/.half() convert a module in place: the caller's module must stay as it was
            model = copy.deepcopy(model)
        model = model.eval()
        if self.inference_form:
            from refusion.export.deploy import deploy_view, has_deploy_form

            self.inference_form = has_deploy_form(model)
            if self.inference_form:
                model = deploy_view(model)
        model = model.to(self.device)
        if self.half:
            model = model.half()
        elif self.bf16:
            _warn_without_bf16_hardware(self.device)
            model = model.to(torch.bfloat16)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        for p in model.parameters():
            p.requires_grad_(False)
        self._model = model
        self._run = model
        if self.compile:
            # Dynamo counts recompilations per code object (this network class's forward), not
            # per module: past the limit (8) it silently runs eager. Each frame size, batch and
            # backend instance in the process takes one entry.
            limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
            torch._dynamo.config.recompile_limit = limit
            self._run = torch.compile(model, dynamic=False)
            if self.device == "cpu":
                self._run = _frozen(self._run)

    def _deactivate(self) -> None:
        self._graphs.clear()
        self._model = self._run = None
        if self._host_threads is not None:
            torch.set_num_threads(self._host_threads)
            self._host_threads = None
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def _to_input(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(batch)
        if self.device != "cpu":
            x = x.pin_memory().to(self.device, non_blocking=True)
        if self.half:
            x = x.half()
        elif self.bf16:
            x = x.to(torch.bfloat16)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.inference_mode()
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        x = self._to_input(batch)
        with contextlib.nullcontext() if self.native else native_disabled():
            y = self._graph_run(x) if self.cuda_graphs else self._run(x)
        # contiguous(): channels-last output of one channel is already NCHW-compatible, but
        # .numpy() needs a plain strided tensor; .copy() hands the caller its own array.
        return y.float().contiguous().cpu().numpy().copy()

    def _graph_run(self, x: torch.Tensor) -> torch.Tensor:
        """Replay a CUDA graph captured for this shape (captured on first sight)."""
        key = tuple(x.shape)
        if key not in self._graphs:
            static_in = x.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up outside the graph (cuDNN autotuning, allocator)
                    self._run(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._run(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out

    @property
    def compiles_per_shape(self) -> bool:
        return self.compile or self.cuda_graphs

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        from refusion.engine.memory import memory_status

        d.update(channels_last=self.channels_last, compile=self.compile, half=self.half,
                 bf16=self.bf16,
                 cuda_graphs=self.cuda_graphs, native=self.native,
                 inference_form=self.inference_form, memory=memory_status())
        if self.device == "cpu":
            d["threads"] = torch.get_num_threads()
        return d
