"""FP16 ONNX graph with FP32 islands, and the checks that it gives FP32's images.

The conversion is explicit: every float tensor gets a type, FP16 or FP32, and a ``Cast`` sits
on each edge where the two meet. This is the form TensorRT 10/11 builds as a *strongly typed*
network (TensorRT 11 has no weakly typed FP16 flag any more), and what ONNX Runtime runs as is.

What stays FP32 (the *islands*), and why:

* ``ReduceL2``: the L2 normalisation of q and k sums ``H*W`` squares; in FP16 the sum overflows
  65504 above roughly 185x185 pixels. The ``Clip``/``Cast`` that follow on the reduced tensor
  ride along (``clamp_min(1e-12)`` underflows to 0 in FP16); the division by the norm is FP16,
  exactly as the PyTorch model does in half precision.
* ``LayerNormalization``: mean and variance over channels (input cast up, output cast down).
* ``Softmax``: the attention map (``C/heads`` square, tiny), so precision costs nothing here.
* the output: the final ``Sigmoid`` (and the 1-channel head convolution feeding it) so
  ``fused`` is computed and returned in float32.

The graph input and output stay float32 (casts inside), so a runtime feeds FP32 and FP16 graphs
the same way. Verification (:func:`check_fp16`) runs the FP16 graph with ONNX Runtime on the CPU
when it has the kernels, else with :func:`emulate` (op-by-op numpy: FP16 storage, FP32 math per
op, result rounded to FP16, the way GPU FP16 kernels with FP32 accumulation behave) and requires
PSNR >= 50 dB against the FP32 graph with no inf or NaN.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
from refusion.export.metadata import INPUT_NAME, OUTPUT_NAME

log = logging.getLogger("refusion.export")

#: The FP16 bar: PSNR of the FP16 graph against FP32 on the same input.
FP16_MIN_PSNR_DB = 50.0
#: Op types computed in FP32 wherever they occur.
FP32_OPS = frozenset(
    {"ReduceL2", "ReduceSum", "ReduceSumSquare", "ReduceMean", "LayerNormalization", "Softmax"}
)
#: Cheap elementwise ops that stay FP32 when all their float inputs are FP32 (so the reduced
#: statistics of an island are not rounded before use).
FOLLOW_OPS = frozenset({"Cast", "Clip", "Max", "Min", "Sqrt", "Reciprocal", "Identity"})
#: Ops whose float input may be of any type (they only look at shapes / cast themselves).
TYPE_AGNOSTIC_INPUT = frozenset({"Shape", "Cast", "Size"})


def _elem_types(model) -> dict[str, int]:
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in g.value_info}
    types.update({v.name: v.type.tensor_type.elem_type for v in g.input})
    types.update({v.name: v.type.tensor_type.elem_type for v in g.output})
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def _head_nodes(model) -> set[str]:
    """The output node and, when it is a Sigmoid fed by a Conv, that Conv (names)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    out = producer.get(OUTPUT_NAME)
    if out is None:
        return set()
    names = {out.name}
    if out.op_type == "Sigmoid":
        prev = producer.get(out.input[0])
        if prev is not None and prev.op_type == "Conv":
            names.add(prev.name)
    return names


def choose_fp32_nodes(model) -> list[str]:
    """Names of the nodes of an FP32 graph that stay FP32 in the FP16 graph (the islands).

    The same list pins layers to FP32 when TensorRT 10 builds an FP32 ONNX with
    ``BuilderFlag.FP16`` (the weakly typed path).
    """
    from onnx import TensorProto

    types = _elem_types(model)
    consts = {t.name for t in model.graph.initializer}
    head = _head_nodes(model)
    fp32_tensors: set[str] = set()
    chosen = []
    for node in model.graph.node:
        float_in = [i for i in node.input if i and types.get(i) == TensorProto.FLOAT]
        live_in = [i for i in float_in if i not in consts]
        follow = (
            node.op_type in FOLLOW_OPS
            and live_in
            and all(i in fp32_tensors for i in live_in)
        )
        if node.op_type in FP32_OPS or node.name in head or follow:
            chosen.append(node.name)
            fp32_tensors.update(o for o in node.output if types.get(o) == TensorProto.FLOAT)
    return chosen


def _ensure_names(model) -> None:
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def convert_to_fp16(fp32_model):
    """Convert an FP32 fusion graph to the explicitly typed FP16 graph with FP32 islands.

    Returns:
        ``(fp16_model, islands)``: a new ``ModelProto`` and the names of the nodes kept FP32.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper, shape_inference

    model = onnx.ModelProto()
    model.CopyFrom(fp32_model)
    _ensure_names(model)
    types = _elem_types(model)
    islands = choose_fp32_nodes(model)
    fp32_nodes = set(islands)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16

    dtype_of: dict[str, int] = {i.name: FLOAT for i in g.input}  # current type of float tensors
    cast_cache: dict[tuple[str, int], str] = {}
    const_cache: dict[tuple[str, int], str] = {}
    new_inits: list = []
    new_nodes: list = []

    def as_type(name: str, want: int) -> str:
        if name in inits:
            if inits[name].data_type == want:
                return name
            key = (name, want)
            if key not in const_cache:
                arr = numpy_helper.to_array(inits[name])
                conv = arr.astype(np.float16 if want == HALF else np.float32)
                if want == HALF and np.isfinite(arr).all() and not np.isfinite(conv).all():
                    raise ValueError(f"constant {name} overflows FP16")
                new = f"{name}__{'fp16' if want == HALF else 'fp32'}"
                new_inits.append(numpy_helper.from_array(conv, new))
                const_cache[key] = new
            return const_cache[key]
        if dtype_of.get(name, want) == want:
            return name
        key = (name, want)
        if key not in cast_cache:
            out = f"{name}__to_{'fp16' if want == HALF else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [out], name=f"Cast_{out}", to=want))
            cast_cache[key] = out
        return cast_cache[key]

    for node in g.node:
        want = FLOAT if node.name in fp32_nodes else HALF
        touches_float = any(types.get(i) == FLOAT for i in node.input if i) or any(
            types.get(o) == FLOAT for o in node.output
        )
        if touches_float and node.op_type not in TYPE_AGNOSTIC_INPUT:
            for k, name in enumerate(node.input):
                if name and types.get(name) == FLOAT:
                    node.input[k] = as_type(name, want)
        if node.op_type == "Cast":
            to = next(a for a in node.attribute if a.name == "to")
            if to.i == FLOAT:
                to.i = want
        for o in node.output:
            if types.get(o) == FLOAT:
                dtype_of[o] = want
        new_nodes.append(node)

    # The graph output keeps float32: rename the producer's tensor and cast it back.
    for out in g.output:
        if dtype_of.get(out.name) == HALF:
            inner = f"{out.name}__fp16"
            for n in new_nodes:
                n.output[:] = [inner if o == out.name else o for o in n.output]
                n.input[:] = [inner if i == out.name else i for i in n.input]
            new_nodes.append(
                helper.make_node("Cast", [inner], [out.name], name="Cast_output", to=FLOAT)
            )

    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    drop_unused_initializers(g)
    model = shape_inference.infer_shapes(model, strict_mode=True)
    return model, islands


def upcast_to_fp32(fp16_model):
    """The FP32 twin of an FP16 graph (FP16 constants and casts turned to FP32).

    Used as the reference when only the FP16 ONNX is at hand; its weights carry the FP16
    rounding, so it measures the arithmetic error of FP16, not the weight rounding.
    """
    import onnx
    from onnx import TensorProto, numpy_helper, shape_inference

    model = onnx.ModelProto()
    model.CopyFrom(fp16_model)
    for t in model.graph.initializer:
        if t.data_type == TensorProto.FLOAT16:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
    for n in model.graph.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT16:
                a.i = TensorProto.FLOAT
    del model.graph.value_info[:]
    for kv in model.metadata_props:
        if kv.key == "precision":
            kv.value = "fp32"
    return shape_inference.infer_shapes(model)


def float_types(model) -> dict[str, int]:
    """Elem type of every tensor of ``model`` (inputs, outputs, values, initializers)."""
    return _elem_types(model)


# --------------------------------------------------------------------------------------------
# Running the FP16 graph on the CPU


def ort_runs_fp16(model) -> bool:
    """Whether ONNX Runtime's CPU provider can run this FP16 graph at all."""
    from refusion.export.onnx_export import ort_session, probe_input, run_ort

    try:
        y = run_ort(ort_session(model), probe_input((1, 2, 16, 16)))
    except Exception as exc:  # noqa: BLE001 - NOT_IMPLEMENTED and friends
        log.info("  ONNX Runtime CPU has no FP16 kernels for this graph (%s)", str(exc)[:120])
        return False
    return y.shape == (1, 1, 16, 16)


def emulate(model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run an ONNX graph op by op in numpy, honouring each tensor's declared type.

    Every op computes in float32 from its (possibly FP16) inputs and rounds its result to the
    declared type of its output, as GPU FP16 kernels with FP32 accumulation do. The work is
    done in chunks (numpy ufuncs with a float32 loop writing FP16 output, per-channel
    convolutions, per-row reductions) and tensors are freed after their last use, so the full
    network runs at 1920x1080 in about 2 GB. Convolutions and matrix products call torch's
    float32 CPU kernels on each chunk, for speed.
    """
    from onnx import TensorProto, helper, numpy_helper

    types = _elem_types(model)
    np_type = {
        TensorProto.FLOAT: np.float32,
        TensorProto.FLOAT16: np.float16,
        TensorProto.INT64: np.int64,
        TensorProto.INT32: np.int32,
        TensorProto.BOOL: np.bool_,
        TensorProto.DOUBLE: np.float64,
    }
    env: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    env.update(feeds)
    uses: dict[str, int] = defaultdict(int)
    for n in model.graph.node:
        for i in n.input:
            uses[i] += 1
    keep = {o.name for o in model.graph.output} | set(env)
    nodes = list(model.graph.node)
    big = sum(v.size for v in feeds.values()) >= 1 << 20
    for k, node in enumerate(nodes):
        if big and k and k % (len(nodes) // 4) == 0:
            log.info("  FP16 emulation %d%%", round(100 * k / len(nodes)))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs["__dtype__"] = np_type.get(types.get(node.output[0], 0), np.float32)
        outs = _OPS[node.op_type](node, attrs, *[env[i] if i else None for i in node.input])
        if not isinstance(outs, tuple):
            outs = (outs,)
        for name, val in zip(node.output, outs):
            want = np_type.get(types.get(name, 0))
            val = np.asarray(val)
            env[name] = val.astype(want, copy=False) if want is not None else val
        del outs
        for i in node.input:
            uses[i] -= 1
            if i and uses[i] == 0 and i not in keep:
                env.pop(i, None)
    return {o.name: env[o.name] for o in model.graph.output}


_CHUNK = 16  # channels (or rows) per chunk of the chunked kernels


def _f32(x: np.ndarray) -> np.ndarray:
    """float32 view/copy (torch's vectorised conversion: numpy's FP16 casts are slow)."""
    if x.dtype != np.float16:
        return x

    return _t(x).numpy()


def _t(v: np.ndarray):
    """float32 torch tensor of ``v`` (copied when read-only or strided; torch needs both)."""
    import torch

    if not (v.flags.writeable and v.flags.c_contiguous):
        v = np.array(v)
    return torch.from_numpy(v).float()


def _store(y, dtype) -> np.ndarray:
    """Round a float32 torch tensor or array to ``dtype`` (FP16 via torch), as numpy."""
    import torch

    t = torch.as_tensor(y)
    if dtype == np.float16:
        t = t.half()
    elif dtype == np.float32:
        t = t.float()
    return t.numpy()


def _chunked(fn, xs, dtype) -> np.ndarray:
    """Elementwise ``fn`` on float32 torch chunks of broadcast operands, stored as ``dtype``."""
    import torch

    shape = np.broadcast_shapes(*(v.shape for v in xs))
    xs = [v.reshape((1,) * (len(shape) - v.ndim) + v.shape) for v in xs]
    out = np.empty(shape, dtype)
    if out.size == 0:
        return out
    axis = next((i for i, d in enumerate(shape) if d > 1), 0)
    inner = int(np.prod(shape[axis + 1 :], dtype=np.int64)) or 1
    step = max(1, (1 << 22) // inner)
    lead = (slice(None),) * axis
    for s0 in range(0, shape[axis], step):
        cut = lead + (slice(s0, s0 + step),)
        parts = [v if v.shape[axis] == 1 else v[cut] for v in xs]
        ts = [_t(v) for v in parts]
        with torch.no_grad():
            out[cut] = _store(fn(*ts), dtype)
    return out


def _conv(node, a, x, w, b=None):
    import torch
    import torch.nn.functional as F

    pads = a.get("pads", [0, 0, 0, 0])
    if pads[0] != pads[2] or pads[1] != pads[3]:
        raise NotImplementedError("asymmetric Conv padding")
    group = a.get("group", 1)
    kw = dict(
        stride=tuple(a.get("strides", [1, 1])),
        padding=(pads[0], pads[1]),
        dilation=tuple(a.get("dilations", [1, 1])),
    )
    cout, cin = w.shape[0], x.shape[1]
    depthwise = group == cin == cout
    if group not in (1, cin) or (group != 1 and not depthwise):
        raise NotImplementedError("grouped Conv other than depthwise")
    xt = None if depthwise else _t(x)
    out = None
    with torch.no_grad():
        for c0 in range(0, cout, _CHUNK):
            c1 = min(c0 + _CHUNK, cout)
            wt = _t(w[c0:c1])
            bt = None if b is None else _t(b[c0:c1])
            if depthwise:
                xi = _t(x[:, c0:c1])
                y = F.conv2d(xi, wt, bt, groups=c1 - c0, **kw)
            else:
                y = F.conv2d(xt, wt, bt, **kw)
            if out is None:
                out = np.empty((x.shape[0], cout, *y.shape[2:]), a["__dtype__"])
            out[:, c0:c1] = _store(y, out.dtype)
    return out


def _matmul(node, a, x, y):
    import torch

    lead = np.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    xb = np.broadcast_to(x, (*lead, *x.shape[-2:]))
    yb = np.broadcast_to(y, (*lead, *y.shape[-2:]))
    out = np.empty((*lead, x.shape[-2], y.shape[-1]), a["__dtype__"])
    with torch.no_grad():
        for idx in np.ndindex(*lead):  # one attention head at a time
            xi = _t(xb[idx])
            yi = _t(yb[idx])
            out[idx] = _store(torch.matmul(xi, yi), out.dtype)
    return out


def _rows(x: np.ndarray, fn, out_cols: int, dtype) -> np.ndarray:
    """Apply ``fn`` (float32 ``(rows, n)`` -> ``(rows, out_cols)``) to row chunks of ``x``."""
    flat = x.reshape(-1, x.shape[-1])
    out = np.empty((flat.shape[0], out_cols), dtype)
    step = max(1, (1 << 22) // max(flat.shape[1], 1))
    for r0 in range(0, flat.shape[0], step):
        out[r0 : r0 + step] = _store(fn(_f32(flat[r0 : r0 + step])), dtype)
    return out.reshape(*x.shape[:-1], out_cols)


def _layernorm(node, a, x, scale, bias=None):
    if a.get("axis", -1) not in (-1, x.ndim - 1):
        raise NotImplementedError("LayerNormalization over more than the last axis")
    eps, s = a.get("epsilon", 1e-5), _f32(scale)
    t = 0.0 if bias is None else _f32(bias)

    def fn(v):
        mean = v.mean(axis=1, keepdims=True)
        d = v - mean
        return d / np.sqrt((d * d).mean(axis=1, keepdims=True) + eps) * s + t

    return _rows(x, fn, x.shape[-1], a["__dtype__"])


def _softmax(node, a, x):
    x = _f32(x)
    e = np.exp(x - x.max(axis=a.get("axis", -1), keepdims=True))
    return e / e.sum(axis=a.get("axis", -1), keepdims=True)


def _slice(node, a, x, starts, ends, axes=None, steps=None):
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    idx = [slice(None)] * x.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        idx[int(ax)] = slice(int(s), int(e), int(st))
    return x[tuple(idx)]


def _split(node, a, x, split=None):
    axis = a.get("axis", 0)
    if split is None:
        split = [x.shape[axis] // len(node.output)] * len(node.output)
    return tuple(np.split(x, np.cumsum(split)[:-1], axis=axis))


def _reduce_l2(node, a, x, axes=None):
    axes = a.get("axes", axes)
    axes = [int(v) % x.ndim for v in np.atleast_1d(axes)] if axes is not None else None
    if axes != [x.ndim - 1] or not a.get("keepdims", 1):
        raise NotImplementedError("ReduceL2 other than over the last axis with keepdims")
    return _rows(x, lambda v: np.sqrt((v * v).sum(axis=1, keepdims=True)), 1, a["__dtype__"])


def _clip(node, a, x, lo=None, hi=None):
    x = _f32(x)
    if lo is not None:
        x = np.maximum(x, _f32(lo))
    if hi is not None:
        x = np.minimum(x, _f32(hi))
    return x


def _binary(fn, int_fn):
    """Elementwise op: float32 math on chunks, result rounded to the output type."""

    def op(node, a, x, y):
        if x.dtype.kind != "f" and y.dtype.kind != "f":
            return int_fn(x, y)  # shape arithmetic
        return _chunked(fn, [x, y], a["__dtype__"])

    return op


def _unary(fn):
    return lambda node, a, x: _chunked(fn, [x], a["__dtype__"])


def _cast(node, a, x):
    if x.dtype.kind == "f" and np.dtype(a["__dtype__"]).kind == "f":
        return _chunked(lambda t: t, [x], a["__dtype__"])
    return x.astype(a["__dtype__"])


def _transpose(node, a, x):
    import torch

    perm = a.get("perm") or list(range(x.ndim))[::-1]
    src = x if x.flags.writeable and x.flags.c_contiguous else np.array(x)
    return torch.from_numpy(src).permute(*perm).contiguous().numpy()


def _leaky_relu(node, a, x):
    import torch.nn.functional as F

    return _chunked(lambda t: F.leaky_relu(t, a.get("alpha", 0.01)), [x], a["__dtype__"])


_OPS = {
    "Add": _binary(lambda x, y: x + y, np.add),
    "Sub": _binary(lambda x, y: x - y, np.subtract),
    "Mul": _binary(lambda x, y: x * y, np.multiply),
    "Div": _binary(lambda x, y: x / y, np.floor_divide),
    "Cast": _cast,
    "Clip": _clip,
    "Concat": lambda n, a, *xs: np.concatenate(xs, axis=a["axis"]),
    "Conv": _conv,
    "Erf": _unary(lambda t: t.erf()),
    "Gather": lambda n, a, x, i: np.take(x, i, axis=a.get("axis", 0)),
    "Identity": lambda n, a, x: x,
    "LayerNormalization": _layernorm,
    "LeakyRelu": _leaky_relu,
    "MatMul": _matmul,
    "ReduceL2": _reduce_l2,
    "Reshape": lambda n, a, x, s: x.reshape(
        [x.shape[i] if v == 0 else int(v) for i, v in enumerate(s)]
    ),
    "Shape": lambda n, a, x: np.array(x.shape, np.int64),
    "Sigmoid": _unary(lambda t: t.sigmoid()),
    "Slice": _slice,
    "Softmax": _softmax,
    "Split": _split,
    "Transpose": _transpose,
    "Unsqueeze": lambda n, a, x, axes=None: np.expand_dims(
        x, tuple(int(v) for v in (a.get("axes") if axes is None else axes))
    ),
}


def run_fp16(model, x: np.ndarray, use_ort: bool | None = None) -> np.ndarray:
    """Run the FP16 graph on ``x``: ONNX Runtime when it can, else :func:`emulate`."""
    from refusion.export.onnx_export import ort_session, run_ort

    if use_ort is None:
        use_ort = ort_runs_fp16(model)
    if use_ort:
        return run_ort(ort_session(model), x)
    return emulate(model, {INPUT_NAME: np.ascontiguousarray(x, np.float32)})[OUTPUT_NAME]


def check_fp16(fp16_model, fp32_model, shape=(1, 2, 256, 320), min_psnr: float = FP16_MIN_PSNR_DB):
    """FP16 graph vs FP32 graph on one probe input; raises ``ExportCheckError`` below the bar.

    Returns:
        The :class:`~refusion.export.onnx_export.ParityResult`.
    """
    from refusion.export.onnx_export import (
        ExportCheckError,
        compare,
        ort_session,
        probe_input,
        run_ort,
    )

    x = probe_input(tuple(shape))
    ref = run_ort(ort_session(fp32_model), x)
    res = compare(ref, run_fp16(fp16_model, x))
    log.info("  FP16 vs FP32 %s", res)
    if not res.finite:
        raise ExportCheckError(f"the FP16 graph produced inf or NaN at {shape}")
    if res.psnr_db < min_psnr:
        raise ExportCheckError(
            f"the FP16 graph is not accurate enough: {res} (bar {min_psnr:g} dB)"
        )
    return res


def drop_unused_initializers(g) -> None:
    """Remove the initializers no node reads, and the stale ``value_info`` (a graph edit
    invalidates it; shape inference rebuilds it)."""
    used = {name for n in g.node for name in n.input}
    live = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(live)
    del g.value_info[:]
