"""When to use the native kernels instead of the pure-PyTorch references."""

from __future__ import annotations

import torch

from refusion._native import cuda_kernels_usable, native_module

_NATIVE_DTYPES = (torch.float32, torch.float16, torch.float64)


def exporting() -> bool:
    """True while torch is tracing for ONNX export, ``torch.export`` or TorchScript.

    Exported graphs must contain only standard ops, so the references run there.
    ``torch.export`` (the base of the dynamo ONNX exporter) counts as exporting;
    ``torch.compile`` does not and sees the custom ops.
    """
    if torch.onnx.is_in_onnx_export():
        return True
    is_exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.5
    if is_exporting is not None and is_exporting():
        return True
    return bool(torch.jit.is_tracing() or torch.jit.is_scripting())


@torch.compiler.assume_constant_result
def _has_kernels(device_type: str, index: int = 0) -> bool:
    # A constant for dynamo (the module, its flags and a device's probe do not change during a
    # run), so compiled graphs neither trace the import machinery nor guard on it.
    mod = native_module()
    if mod is None or not getattr(mod, f"has_{device_type}_kernels", False):
        return False
    return device_type != "cuda" or cuda_kernels_usable(index)


def _transformed() -> bool:
    """True under a ``torch.func`` transform (grad, jvp, vmap, ...) or forward-mode AD: the
    custom ops' autograd covers reverse mode only (a jvp through them would be zero), so the
    references, which torch differentiates in every mode, serve these calls."""
    if torch.compiler.is_compiling():
        # While dynamo traces, the functorch interpreter stack is never empty (transform or
        # not), so it tells nothing; the forward-AD level is what dynamo raises for jvp and
        # dual levels, and leaves at -1 in a plain compiled function (measured on torch 2.13).
        # Returning False here used to give a compiled jvp of 0. A compiled torch.func.grad
        # is not seen (it reaches the op, which torch refuses under functorch: an error).
        return getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0
    functorch = getattr(torch._C, "_functorch", None)
    if functorch is not None and functorch.peek_interpreter_stack() is not None:
        return True
    return getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0


def use_native(x: torch.Tensor) -> bool:
    """Whether a native kernel may serve ``x`` (built, not exporting, not under a torch.func
    transform or forward-mode AD, supported dtype/device)."""
    if exporting() or x.dtype not in _NATIVE_DTYPES or _transformed():
        return False
    if x.device.type not in ("cpu", "cuda"):
        return False
    return _has_kernels(x.device.type, x.device.index or 0)
