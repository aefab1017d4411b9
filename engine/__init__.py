"""The streaming runtime: torch, ONNX Runtime and TensorRT backends (``refusion.engine``).

Public entry points: :class:`Fuser` (numpy image pairs in, fused 8-bit images out, as
``refusion-fuse`` does), :func:`create_backend` (``auto`` picks the fastest available backend),
:class:`Backend` (the interface), and the shared pre/post-processing in
:mod:`refusion.engine.preprocess`. Video lives in :mod:`refusion.engine.video` (sources,
pairing, homography) and :mod:`refusion.engine.pipeline` (threaded decode -> infer -> encode).
"""

from refusion.engine.base import Backend
from refusion.engine.fuser import Fuser
from refusion.engine.registry import BACKENDS, available_backends, create_backend

__all__ = ["BACKENDS", "Backend", "Fuser", "available_backends", "create_backend"]
