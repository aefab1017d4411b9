"""Access to the optional native module ``refusion._C``.

The package works without it (pure-PyTorch references); set ``REFUSION_DISABLE_NATIVE=1`` to
force the references, e.g. to compare speed or to rule the kernels out while debugging.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType


@functools.cache
def native_module() -> ModuleType | None:
    """Return ``refusion._C`` or ``None`` when it is not built or disabled."""
    if os.environ.get("REFUSION_DISABLE_NATIVE", "") not in ("", "0"):
        return None
    try:
        from refusion import _C  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _C


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
    return info
