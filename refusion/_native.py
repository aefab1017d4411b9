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
        return importlib.import_module("refusion._C")
    except ImportError as exc:
        warnings.warn(f"refusion._C is built but does not load ({exc}); the PyTorch "
                      "references run instead", RuntimeWarning, stacklevel=2)
        return None


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
