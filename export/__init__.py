"""Export of the fusion module: ONNX (FP32/FP16) and TensorRT engines (``refusion.export``).

Only the fusion module F leaves PyTorch (P and R are training-only). Contract used by
:mod:`refusion.engine`:

* ONNX input ``sources``: float32 ``(N, 2, H, W)``, channel 0 = source a, luma in [0, 1];
  output ``fused``: float32 ``(N, 1, H, W)`` in [0, 1]; ``N``, ``H``, ``W`` dynamic. FP16
  graphs keep float32 input and output (the casts are inside).
* :func:`export_onnx`, :func:`build_engine`, :func:`read_onnx_metadata`; a plan's sidecar JSON
  is ``<plan>.json`` (:func:`read_plan_sidecar`).

TensorRT is imported lazily, only by :func:`build_engine`. See ``docs/export.md``.
"""

from refusion.export.census import TENSORRT_OPS, op_census, unsupported_by_tensorrt
from refusion.export.fp16 import FP16_MIN_PSNR_DB, convert_to_fp16
from refusion.export.metadata import INPUT_NAME, OUTPUT_NAME, read_onnx_metadata
from refusion.export.onnx_export import ExportCheckError, export_onnx
from refusion.export.tensorrt_build import build_engine, read_plan_sidecar

__all__ = [
    "FP16_MIN_PSNR_DB",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "TENSORRT_OPS",
    "ExportCheckError",
    "build_engine",
    "convert_to_fp16",
    "export_onnx",
    "op_census",
    "read_onnx_metadata",
    "read_plan_sidecar",
    "unsupported_by_tensorrt",
]
