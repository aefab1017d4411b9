"""Eager PyTorch backend: channels-last, inference mode, optional ``torch.compile``; on CUDA the
native kernels (used by the model automatically when built), optional FP16 and CUDA graphs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from refusion.engine.base import Backend, physical_cores
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


class TorchBackend(Backend):
    """Run the fusion module with PyTorch.

    Args:
        weights: checkpoint path or an ``nn.Module``.
        device: ``cpu`` or ``cuda[:N]``.
        channels_last: NHWC memory format; default on CUDA only (tensor cores), because on
            CPU the model's many reshapes and depthwise convolutions ran slower with it.
        compile: wrap the model in ``torch.compile`` (first call per shape compiles).
        half: FP16 weights and activations (CUDA only).
        cuda_graphs: capture one CUDA graph per input shape and replay it (CUDA only).
        native: keep the native kernels of :mod:`refusion.ops` when built (``False`` forces
            the pure-PyTorch references, as the benchmark baseline does).
        threads: intra-op threads on CPU (default: physical cores).
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
        cuda_graphs: bool = True,
        native: bool = True,
        threads: int | None = None,
        retain_memory: bool | None = None,
        inference_form: bool | None = None,
    ) -> None:
        super().__init__(device)
        self.weights = weights
        self.channels_last = device.startswith("cuda") if channels_last is None else channels_last
        self.compile = compile
        self.half = half and device.startswith("cuda")
        self.cuda_graphs = cuda_graphs and device.startswith("cuda") and not compile
        self.native = native
        self.threads = threads
        on_cpu = device == "cpu"
        self.retain_memory = on_cpu if retain_memory is None else retain_memory
        self.inference_form = on_cpu if inference_form is None else inference_form
        self._model: nn.Module | None = None
        self._run: Any = None
        self._graphs: dict[tuple[int, ...], tuple[Any, torch.Tensor, torch.Tensor]] = {}

    def _activate(self) -> None:
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("--backend torch --device cuda: no CUDA device is available")
        if self.device == "cpu":
            torch.set_num_threads(self.threads or physical_cores())
        if self.retain_memory:
            from refusion.engine.memory import retain_freed_memory

            retain_freed_memory()
        model = load_module(self.weights).eval()
        if self.inference_form:
            from refusion.export.deploy import deploy_view, has_deploy_form

            self.inference_form = has_deploy_form(model)
            if self.inference_form:
                model = deploy_view(model)
        model = model.to(self.device)
        if self.half:
            model = model.half()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        for p in model.parameters():
            p.requires_grad_(False)
        self._model = model
        self._run = torch.compile(model, dynamic=False) if self.compile else model

    def _deactivate(self) -> None:
        self._graphs.clear()
        self._model = self._run = None
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def _to_input(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(batch)
        if self.device != "cpu":
            x = x.pin_memory().to(self.device, non_blocking=True)
        if self.half:
            x = x.half()
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

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        from refusion.engine.memory import memory_status

        d.update(channels_last=self.channels_last, compile=self.compile, half=self.half,
                 cuda_graphs=self.cuda_graphs, native=self.native,
                 inference_form=self.inference_form, memory=memory_status())
        if self.device == "cpu":
            d["threads"] = torch.get_num_threads()
        return d
