"""Differentiable image operators shared by the models, the losses and the metrics.

Each op has a pure-PyTorch reference (always available, used for ONNX export) and, when the
native module ``refusion._C`` is built, CPU/CUDA kernels behind the same function.
"""

from refusion.ops.gate import GeluGate, gelu_gate, gelu_mul
from refusion.ops.sobel import SobelGrad, sobel_grad, sobel_xy

__all__ = ["GeluGate", "SobelGrad", "gelu_gate", "gelu_mul", "sobel_grad", "sobel_xy"]
