"""FP32 (and, through :mod:`refusion.export.fp16`, FP16) ONNX export of the fusion module F.

Only F leaves PyTorch: the loss proposal module P and the reconstruction module R exist for
training. The graph has one input ``sources`` (float32, ``(N, 2, H, W)``, channel 0 = source
a) and one output ``fused`` (float32, ``(N, 1, H, W)`` in [0, 1]); ``N``, ``H`` and ``W`` are
dynamic. The TorchScript-based exporter is used (``dynamo=False``): it needs no onnxscript and
gives the same standard ops (``LayerNormalization``, ``ReduceL2``, ``Softmax``, ``Erf``).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from refusion.export.deploy import StaticChannelLayerNorm, deploy_view, has_deploy_form
from refusion.export.fp16 import drop_unused_initializers
from refusion.export.metadata import INPUT_NAME, OUTPUT_NAME, build_metadata, set_metadata
from torch import nn

from refusion.errors import UserError, require
from refusion.models.fusion import FusionNet
from refusion.models.restormer import ChannelLayerNorm
from refusion.utils.atomic import atomic_path

log = logging.getLogger("refusion.export")

MIN_OPSET = 17
#: ORT vs eager PyTorch, float32: the bar of the export check.
FP32_TOLERANCE = 1e-4
#: Sizes the export checks by default: batch 2 with odd sizes, and a camera-like odd size.
DEFAULT_CHECK_SHAPES: tuple[tuple[int, int, int, int], ...] = ((2, 2, 37, 53), (1, 2, 251, 317))


class ExportCheckError(UserError):
    """An exported graph failed its own accuracy check (the file is not written)."""


@dataclass
class ParityResult:
    """One comparison of two runs of the fusion module on the same input."""

    shape: tuple[int, ...]
    max_abs: float
    psnr_db: float
    finite: bool

    def __str__(self) -> str:
        h, w = self.shape[-2:]
        return f"{self.shape[0]}x{h}x{w}: max|diff| {self.max_abs:.2e}, PSNR {self.psnr_db:.1f} dB"


def psnr(ref: np.ndarray, test: np.ndarray, peak: float = 1.0) -> float:
    """PSNR of ``test`` against ``ref`` in dB (``inf`` when equal)."""
    mse = float(np.mean((ref.astype(np.float64) - test.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak * peak / mse)


def compare(ref: np.ndarray, test: np.ndarray) -> ParityResult:
    """Max abs difference, PSNR and finiteness of ``test`` against ``ref``."""
    finite = bool(np.isfinite(test).all())
    diff = float(np.abs(ref - test).max()) if finite else float("inf")
    return ParityResult(tuple(ref.shape), diff, psnr(ref, test) if finite else -np.inf, finite)


def probe_input(shape: tuple[int, int, int, int], seed: int = 0) -> np.ndarray:
    """A deterministic image-like ``(N, 2, H, W)`` float32 pair in [0, 1].

    Smooth shading, edges and fine texture, different in the two channels, so the attention
    maps see real structure (uniform noise makes them nearly flat and hides FP16 errors).
    """
    n, c, h, w = shape
    if c != 2:
        raise ValueError(f"the fusion module takes 2 channels, got shape {shape}")
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty(shape, np.float32)
    for i in range(n):
        fx, fy = rng.uniform(0.01, 0.08, 2)
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        blob = np.exp(-(((x - cx) / (0.2 * w + 1)) ** 2 + ((y - cy) / (0.2 * h + 1)) ** 2))
        a = 0.15 + 0.7 * blob + 0.05 * np.sin(fx * x) * np.cos(fy * y)
        edges = ((x // max(w // 7, 1) + y // max(h // 5, 1)) % 2).astype(np.float32)
        b = 0.25 + 0.4 * edges + 0.2 * (x / max(w - 1, 1)) + 0.1 * np.sin(0.5 * fx * (x + y))
        noise = rng.normal(0, 0.02, (2, h, w)).astype(np.float32)
        out[i] = np.clip(np.stack([a, b]) + noise, 0.0, 1.0)
    return out


def export_view(model: FusionNet) -> FusionNet:
    """A float32, eval-mode, CPU copy of ``model`` ready for tracing (the original is untouched)."""
    twin = copy.deepcopy(model).to("cpu", torch.float32).eval()

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, ChannelLayerNorm):
                setattr(module, name, StaticChannelLayerNorm(child))
            else:
                swap(child)

    swap(twin)
    return twin


def trace_to_onnx(model: FusionNet, opset: int = MIN_OPSET, layer_norm: str | None = "nchw"):
    """Trace F to an ``onnx.ModelProto`` with dynamic ``N``, ``H``, ``W`` (unchecked).

    ``layer_norm`` picks the traced form: ``"nchw"`` (default, FP32 graphs) or ``"op"`` (FP16
    graphs) trace the inference form of :mod:`refusion.export.deploy`; ``None`` traces the
    training-form network as is.
    """
    import onnx

    if opset < MIN_OPSET:
        raise UserError(f"opset {opset} is too old: LayerNormalization needs opset {MIN_OPSET}+")
    if layer_norm is not None and has_deploy_form(model):
        twin = deploy_view(model, layer_norm)
    else:
        twin = export_view(model)
    dummy = torch.from_numpy(probe_input((1, 2, 64, 80)))
    dyn = {0: "N", 2: "H", 3: "W"}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # Shape checks in forward() are traced as constants; the dims stay dynamic regardless.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            twin,
            (dummy,),
            buf,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: dyn, OUTPUT_NAME: dyn},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return onnx.load_from_string(buf.getvalue())


def simplify(model):
    """Clean-up pass: Constant nodes become initializers, Identity and no-op Casts go.

    Nothing is fused or re-ordered (TensorRT and ONNX Runtime do their own fusion), so the
    arithmetic is unchanged; it makes the graph smaller and the FP16 conversion simpler.
    The onnxsim/onnxslim packages are not needed.
    """
    import onnx
    from onnx import numpy_helper, shape_inference

    g = model.graph
    kept = []
    for node in g.node:
        attrs = node.attribute
        if node.op_type == "Constant" and len(attrs) == 1 and attrs[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(node.attribute[0].t)
            t.name = node.output[0]
            g.initializer.append(t)
        else:
            kept.append(node)
    del g.node[:]
    g.node.extend(kept)

    inferred = shape_inference.infer_shapes(model)
    elem = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    elem.update({v.name: v.type.tensor_type.elem_type for v in g.input})
    elem.update({t.name: t.data_type for t in g.initializer})
    outputs = {o.name for o in g.output}
    rename: dict[str, str] = {}
    kept = []
    for node in g.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        src = node.input[0] if node.input else ""
        noop = node.op_type == "Identity" or (
            node.op_type == "Cast"
            and elem.get(src, 0) != 0
            and elem.get(src) == next(a.i for a in node.attribute if a.name == "to")
        )
        if noop and node.output[0] not in outputs:
            rename[node.output[0]] = src
        else:
            kept.append(node)
    del g.node[:]
    g.node.extend(kept)
    drop_unused_initializers(g)
    # Scalar int constants folded by the tracer may be float64 in odd cases; fail early if so.
    for t in g.initializer:
        if t.data_type == onnx.TensorProto.DOUBLE:
            arr = numpy_helper.to_array(t).astype(np.float32)
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    return shape_inference.infer_shapes(model)


def ort_session(model_or_path, threads: int = 0):
    """A CPU ONNX Runtime session for a ``ModelProto``, serialized bytes or a path."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    src = model_or_path
    if hasattr(model_or_path, "SerializeToString"):
        src = model_or_path.SerializeToString()
    elif isinstance(model_or_path, os.PathLike):
        src = str(model_or_path)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def run_ort(session, x: np.ndarray) -> np.ndarray:
    """Run the fusion graph on ``x`` (``(N, 2, H, W)`` float32)."""
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, np.float32)})[0]


@torch.no_grad()
def run_eager(model: FusionNet, x: np.ndarray) -> np.ndarray:
    """Eager float32 PyTorch reference on the CPU."""
    return model(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()


def check_fp32_parity(
    onnx_model,
    torch_model: FusionNet,
    shapes=DEFAULT_CHECK_SHAPES,
    tol: float = FP32_TOLERANCE,
) -> list[ParityResult]:
    """ORT vs eager PyTorch at each shape; raises :class:`ExportCheckError` above ``tol``."""
    sess = ort_session(onnx_model)
    ref_model = export_view(torch_model)
    results = []
    for shape in shapes:
        x = probe_input(tuple(shape))
        res = compare(run_eager(ref_model, x), run_ort(sess, x))
        log.info("  ORT fp32 vs PyTorch %s", res)
        results.append(res)
        if not res.finite or res.max_abs > tol:
            raise ExportCheckError(
                f"ONNX Runtime output differs from PyTorch at {res}; bar is {tol:g}"
            )
    return results


def _resolve(model_or_ckpt_path) -> tuple[FusionNet, dict]:
    """The model plus the provenance fields of the metadata."""
    if isinstance(model_or_ckpt_path, FusionNet):
        return model_or_ckpt_path, {"task": None, "source_format": "module"}
    if isinstance(model_or_ckpt_path, nn.Module):
        kind = type(model_or_ckpt_path).__name__
        raise UserError(f"only the fusion module F is exported, got a {kind}")
    from refusion.checkpoint import load_fusion_model

    model, ckpt = load_fusion_model(model_or_ckpt_path)
    return model, {
        "task": inferred_task(ckpt),
        "source_format": ckpt.source,
        "source_checkpoint": ckpt.path,
    }


def inferred_task(ckpt) -> str | None:
    """The task of a loaded checkpoint: what its model card records; for the authors' file,
    which records none, ``ivif`` when its name says so (they publish one file per task, named
    after it: ``ReFusion_IVIF.pth``)."""
    if ckpt.task:
        return ckpt.task
    return "ivif" if ckpt.source == "authors" and "ivif" in Path(ckpt.path).name.lower() else None


def export_onnx(
    model_or_ckpt_path: FusionNet | str | os.PathLike,
    path: str | os.PathLike,
    *,
    fp16: bool = False,
    opset: int = MIN_OPSET,
    check: bool = True,
    metadata: dict | None = None,
    task: str | None = None,
    check_shapes=None,
    fp16_check_shape: tuple[int, int, int, int] | None = None,
) -> Path:
    """Export the fusion module F to ONNX, check it, and write it atomically.

    Args:
        model_or_ckpt_path: a :class:`FusionNet`, or one of our ``.safetensors`` checkpoints or
            the authors' ``.pth`` (only F is exported; P and R are training-only).
        path: destination ``.onnx``.
        fp16: write the explicitly typed FP16 graph with FP32 islands (input and output stay
            float32), see :mod:`refusion.export.fp16`.
        opset: default-domain opset, 17 or newer.
        check: run ``onnx.checker`` and the accuracy checks (ORT vs eager PyTorch within
            ``1e-4``; for FP16 also PSNR >= 50 dB against FP32, no inf/NaN). A failed check
            raises :class:`ExportCheckError` and nothing is written.
        metadata: extra metadata properties (may not override the standard keys).
        task: the task to record when the checkpoint records none (a module, an authors'
            file named otherwise); one it records must agree (:class:`UserError`).
        check_shapes: ``(N, 2, H, W)`` shapes of the FP32 check (default: two odd sizes).
        fp16_check_shape: shape of the FP16 check (default ``(1, 2, 256, 320)``).

    Returns:
        The written path.
    """
    require("onnx", "'onnx>=1.16'", "ONNX export")
    if check:
        require("onnxruntime", "'onnxruntime>=1.18'", "the export's accuracy check")
    import onnx
    from refusion.export import fp16 as fp16_mod

    model, prov = _resolve(model_or_ckpt_path)  # traced and checked on an eval-mode copy
    if task:
        if prov.get("task") and prov["task"] != task:
            raise UserError(f"{model_or_ckpt_path} was trained for '{prov['task']}', not "
                            f"'{task}'")
        prov["task"] = task
    log.info("tracing the fusion module (%s, opset %d)", type(model).__name__, opset)
    # FP32: the inference form with the LayerNorms over NCHW channels (fastest on CPU runtimes);
    # FP16: LayerNormalization ops, each one FP32 island of the conversion.
    graph = simplify(trace_to_onnx(model, opset, "op" if fp16 else "nchw"))
    meta = build_metadata(
        task=prov.get("task"),
        model_config=model.config.to_dict(),
        precision="fp16" if fp16 else "fp32",
        opset=opset,
        source_checkpoint=prov.get("source_checkpoint"),
        source_format=prov["source_format"],
        extra=metadata,
    )
    graph.producer_name = "refusion"
    graph.producer_version = meta["refusion_version"]
    graph.doc_string = (
        "ReFusion fusion module F. Input 'sources' float32 (N, 2, H, W): channel 0 = source a, "
        "channel 1 = source b, luma in [0, 1]. Output 'fused' float32 (N, 1, H, W) in [0, 1]."
    )
    if check:
        onnx.checker.check_model(graph, full_check=True)
        log.info("checking the FP32 graph against eager PyTorch")
        check_fp32_parity(graph, model, check_shapes or DEFAULT_CHECK_SHAPES)
    if fp16:
        log.info("converting to FP16 with FP32 islands")
        fp32_graph = graph
        graph, islands = fp16_mod.convert_to_fp16(fp32_graph)
        meta["fp32_islands"] = json.dumps(islands)
        if check:
            onnx.checker.check_model(graph, full_check=True)
            fp16_mod.check_fp16(graph, fp32_graph, fp16_check_shape or (1, 2, 256, 320))
    set_metadata(graph, meta)
    dest = Path(path)
    with atomic_path(dest) as tmp:
        onnx.save(graph, str(tmp))
    log.info("wrote %s (%s, %d nodes)", dest, meta["precision"], len(graph.graph.node))
    return dest
