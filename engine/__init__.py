"""The streaming runtime: torch, ONNX Runtime and TensorRT backends (``refusion.engine``)."""
