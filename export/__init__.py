"""Export of the fusion module: ONNX (FP32/FP16) and TensorRT engines (``refusion.export``)."""
