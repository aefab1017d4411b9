"""Access to the optional native module ``refusion._C``.

The package works without it (pure-PyTorch references); set ``REFUSION_DISABLE_NATIVE=1`` to
force the references, e.g. to compare speed or to rule the kernels out while debugging.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import warnings
from types import ModuleType


@functools.cache
def native_module() -> ModuleType | None:
    """Return ``refusion._C`` or ``None`` when it is not built or disabled.

    A module that is built but does not load (built against another torch or Python, a
    missing shared library) also gives ``None``, with a warning that says why: silently
    falling back would hide a broken build behind slower results.
    """
    if os.environ.get("REFUSION_DISABLE_NATIVE", "") not in ("", "0"):
        return None
    if importlib.util.find_spec("refusion._C") is None:
        return None  # not built: the references are the intended path
    try:
        mod = importlib.import_module("refusion._C")
    except ImportError as exc:
        warnings.warn(f"refusion._C is built but does not load ({exc}); the PyTorch "
                      "references run instead", RuntimeWarning, stacklevel=2)
        return None
    _check_isa_request(mod)
    return mod


def _check_isa_request(mod: ModuleType) -> None:
    """Warn when ``REFUSION_CPU_ISA`` names kernels this CPU cannot run or that do not exist:
    the module then uses the widest ones, which a benchmark meant to pin an ISA must know."""
    want = os.environ.get("REFUSION_CPU_ISA", "")
    isas = getattr(mod, "cpu_isas", None)
    if not want or isas is None:
        return
    have = list(isas())
    if want not in have:
        warnings.warn(f"REFUSION_CPU_ISA={want!r} is not one of the CPU kernels this machine "
                      f"runs ({', '.join(have)}); using {mod.cpu_isa()}", RuntimeWarning,
                      stacklevel=3)


@functools.cache
def cuda_kernels_usable(index: int) -> bool:
    """Whether the native CUDA kernels can run on ``cuda:<index>`` (asked once per device).

    A module built with CUDA may still not run on a GPU: one older than every architecture
    compiled in, or a driver older than the CUDA runtime the module carries. The module's probe
    loads the kernels on the device without launching them; when it fails, a warning names the
    device, CUDA's reason and the architectures built, and the PyTorch references serve that
    device, instead of an error at the first op.
    """
    mod = native_module()
    if mod is None or not getattr(mod, "has_cuda_kernels", False):
        return False
    probe = getattr(mod, "cuda_probe", None)
    if probe is None:  # built before the probe existed: trust it, as before
        return True
    why = probe(int(index))
    if why is None:
        return True
    archs = dict(mod.build_info()).get("cuda_architectures", "unknown")
    warnings.warn(
        f"refusion's CUDA kernels cannot run on cuda:{index} ({why}; built for architectures "
        f"{archs}, CUDA runtime {_cuda_version(mod, 'cuda_runtime_version')}, the driver "
        f"supports {_cuda_version(mod, 'cuda_driver_version')}); the PyTorch references run "
        "there instead (rebuild with -DCMAKE_CUDA_ARCHITECTURES=native to fix it)",
        RuntimeWarning,
        stacklevel=2,
    )
    return False


def _cuda_version(mod: ModuleType, fn: str) -> str:
    """``12080`` -> ``"12.8"``; ``"none"`` for 0 (no driver), ``"unknown"`` if not reported."""
    get = getattr(mod, fn, None)
    v = int(get()) if get is not None else -1
    return "unknown" if v < 0 else "none" if v == 0 else f"{v // 1000}.{v % 1000 // 10}"


def native_available() -> bool:
    """Whether the native module can be used."""
    return native_module() is not None


def build_info() -> dict:
    """How the native module was built, or ``{"available": False}``."""
    mod = native_module()
    if mod is None:
        return {"available": False}
    info = {"available": True, **dict(mod.build_info())}
    if hasattr(mod, "cpu_isa"):  # modules built before run-time ISA selection lack it
        info["cpu_isa"] = mod.cpu_isa()
        info["cpu_isas"] = list(mod.cpu_isas())
    if hasattr(mod, "cuda_probe"):
        info["cuda_runtime"] = _cuda_version(mod, "cuda_runtime_version")
        info["cuda_driver"] = _cuda_version(mod, "cuda_driver_version")
        import torch

        if torch.cuda.is_available():  # per GPU: "ok" or why the references run there
            info["cuda_devices"] = {f"cuda:{i}": mod.cuda_probe(i) or "ok"
                                    for i in range(torch.cuda.device_count())}
    return info
