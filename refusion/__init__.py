"""ReFusion: learning image fusion from reconstruction with a meta-learnt loss.

The package holds the three networks (fusion module F, loss proposal module P, reconstruction
module R), the losses, the meta-learning trainer, metrics, ONNX/TensorRT export
(:mod:`refusion.export`) and the streaming runtime (:mod:`refusion.engine`).
"""

from __future__ import annotations

from pathlib import Path as _Path

__version__ = "0.1.0"

# In a source checkout `export/` and `engine/` sit at the repository root (the wheel maps them to
# refusion/export and refusion/engine); extending __path__ makes `refusion.export` resolve the
# same way in both layouts. The pyproject check keeps this from firing inside site-packages.
_root = _Path(__file__).resolve().parent.parent
if (_root / "pyproject.toml").is_file() and (_root / "export" / "__init__.py").is_file():
    __path__.append(str(_root))  # type: ignore[name-defined]
del _root

__all__ = ["__version__"]
