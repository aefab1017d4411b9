"""Op-type census of an exported graph, and the ONNX ops TensorRT's parser accepts.

The TensorRT set is the operator list of the ONNX-TensorRT parser shipped with TensorRT 10
(``onnx-tensorrt/docs/operators.md``), restricted to ops whose support does not hinge on rare
attributes. The census test fails when export starts emitting an op outside
:data:`EXPECTED_OPS` (a new op to review) or outside :data:`TENSORRT_OPS` (one that would break
the engine build), and when any tensor is float64 (TensorRT has no double precision).
"""

from __future__ import annotations

from collections import Counter

TENSORRT_OPS = frozenset(
    {
        "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan",
        "Atanh", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Celu", "Clip", "Concat",
        "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum",
        "DepthToSpace", "DequantizeLinear", "Div", "Einsum", "Elu", "Equal", "Erf", "Exp",
        "Expand", "EyeLike", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gelu",
        "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Greater", "GreaterOrEqual",
        "GroupNormalization", "HardSigmoid", "HardSwish", "Identity", "If",
        "InstanceNormalization", "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu", "Less",
        "LessOrEqual", "Log", "LogSoftmax", "Loop", "LRN", "MatMul", "Max", "MaxPool", "Mean",
        "Min", "Mod", "Mul", "Neg", "NonZero", "Not", "OneHot", "Or", "Pad", "Pow", "PRelu",
        "QuantizeLinear", "RandomNormal", "RandomUniform", "Range", "Reciprocal", "ReduceL1",
        "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
        "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize", "Round",
        "ScatterElements", "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid", "Sign", "Sin",
        "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split",
        "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu", "Tile", "TopK",
        "Transpose", "Trilu", "Unsqueeze", "Where", "Xor",
    }
)

#: What the fusion module's FP32 and FP16 graphs are made of today. A new op type is not wrong
#: by itself, but it has to be looked at (TensorRT support, FP16 behaviour) before it ships.
#: ``Gelu`` replaces the ``Erf`` form from ``--opset 20`` on (a standard op since opset 20;
#: TensorRT's parser takes it, and FP16 GELU is as safe as the Erf form it replaces).
EXPECTED_OPS = frozenset(
    {
        "Add", "Cast", "Clip", "Concat", "Constant", "Conv", "Div", "Erf", "Gather", "Gelu",
        "LayerNormalization", "LeakyRelu", "MatMul", "Mul", "ReduceL2", "ReduceMean",
        "Reshape", "Shape", "Sigmoid", "Slice", "Softmax", "Split", "Sqrt", "Sub", "Transpose",
        "Unsqueeze",
    }
)


def op_census(model) -> Counter:
    """``Counter`` of op types of an ``onnx.ModelProto`` (custom domains as ``domain::Op``)."""
    return Counter(
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
        for n in model.graph.node
    )


def unsupported_by_tensorrt(model) -> list[str]:
    """Op types of ``model`` that TensorRT's ONNX parser does not take, sorted."""
    return sorted(op for op in op_census(model) if op not in TENSORRT_OPS)


def unexpected_ops(model) -> list[str]:
    """Op types outside :data:`EXPECTED_OPS`, sorted."""
    return sorted(op for op in op_census(model) if op not in EXPECTED_OPS)


def double_tensors(model) -> list[str]:
    """Names of float64 initializers, constants and typed values (TensorRT has none)."""
    import onnx

    dbl = onnx.TensorProto.DOUBLE
    names = [t.name for t in model.graph.initializer if t.data_type == dbl]
    for n in model.graph.node:
        if n.op_type == "Constant":
            names += [
                n.output[0] for a in n.attribute if a.name == "value" and a.t.data_type == dbl
            ]
        if n.op_type == "Cast":
            names += [n.output[0] for a in n.attribute if a.name == "to" and a.i == dbl]
    vis = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    names += [v.name for v in vis if v.type.tensor_type.elem_type == dbl]
    return sorted(set(names))
