"""When to use the native kernels instead of the pure-PyTorch references."""

from __future__ import annotations

import torch

from refusion._native import native_module


def exporting() -> bool:
    """True while torch is tracing for ONNX export or TorchScript (references only there)."""
    if torch.onnx.is_in_onnx_export():
        return True
    return bool(torch.jit.is_tracing() or torch.jit.is_scripting())


def use_native(x: torch.Tensor) -> bool:
    """Whether a native kernel may serve ``x`` (built, not exporting, supported dtype/device)."""
    if exporting() or native_module() is None:
        return False
    if x.dtype not in (torch.float32, torch.float16, torch.float64):
        return False
    mod = native_module()
    if x.device.type == "cpu":
        return bool(getattr(mod, "has_cpu_kernels", False))
    if x.device.type == "cuda":
        return bool(getattr(mod, "has_cuda_kernels", False))
    return False
