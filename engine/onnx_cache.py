"""ONNX models for the ONNX Runtime backend, exported on the fly from a checkpoint and cached.

The export itself belongs to :mod:`refusion.export` (``export_onnx``); until that is importable
this module falls back to a plain ``torch.onnx.export`` with the same contract: input
``sources`` float32 ``(N, 2, H, W)``, output ``fused`` float32 ``(N, 1, H, W)``, N/H/W dynamic.

Cache: ``$REFUSION_CACHE`` or ``~/.cache/refusion``, sub-folder ``onnx/``, one file per content
hash of the weights (plus architecture and opset), written atomically so that two processes
exporting the same checkpoint never see a half-written model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import refusion
from refusion.utils.atomic import atomic_path

OPSET = 17
#: Changes whenever the export traces a different graph for the same weights (e.g. the
#: inference form of refusion.export.deploy), so stale cached files are never reused.
GRAPH_FORM = "inference-form-1"


def cache_dir() -> Path:
    """Folder of exported models (``$REFUSION_CACHE/onnx`` or ``~/.cache/refusion/onnx``)."""
    root = os.environ.get("REFUSION_CACHE") or Path.home() / ".cache" / "refusion"
    return Path(root) / "onnx"


def model_digest(model: nn.Module) -> str:
    """Content hash of a module's architecture and weights (hex, 20 characters)."""
    h = hashlib.sha256(type(model).__qualname__.encode())  # FusionNet vs DecisionFusionNet
    cfg = getattr(model, "config", None)
    h.update(json.dumps(cfg.to_dict() if hasattr(cfg, "to_dict") else repr(cfg)).encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    # the exporter's inputs besides the model: a torch or onnx upgrade may write another graph
    # (cached exports are not re-checked), so it gets its own file
    h.update(f"{refusion.__version__}/{OPSET}/{GRAPH_FORM}/torch {torch.__version__}/onnx "
             f"{_onnx_version()}".encode())
    return h.hexdigest()[:20]


def _onnx_version() -> str:
    try:
        import onnx
    except ImportError:
        return "none"
    return str(onnx.__version__)


def cached_onnx(model: nn.Module, directory: str | os.PathLike | None = None) -> Path:
    """Path of the ONNX export of ``model``, exporting it first when not cached yet."""
    dest = Path(directory) if directory else cache_dir()
    path = dest / f"fusion-{model_digest(model)}.onnx"
    if not path.is_file():
        export_onnx_file(model, path)
    return path


def export_onnx_file(model: nn.Module, path: str | os.PathLike) -> Path:
    """Export ``model`` to ``path`` atomically (``refusion.export`` when present)."""
    path = Path(path)
    try:
        from refusion.export import export_onnx  # type: ignore[attr-defined]
    except ImportError:
        export_onnx = None
    with atomic_path(path) as tmp:
        if export_onnx is not None:
            export_onnx(model, tmp, opset=OPSET, check=False)
        else:
            _fallback_export(model, tmp)
    return path


@contextlib.contextmanager
def _static_layernorm_shape() -> Iterator[None]:
    """The TorchScript exporter traces ``x.shape[1]`` as a tensor, which its LayerNormalization
    symbolic rejects; read the (constant) width from the weight instead while exporting."""
    from refusion.models.restormer import ChannelLayerNorm

    original = ChannelLayerNorm.forward

    def forward(self: ChannelLayerNorm, x: torch.Tensor) -> torch.Tensor:
        width = int(self.weight.numel())
        y = F.layer_norm(x.permute(0, 2, 3, 1), (width,), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)

    ChannelLayerNorm.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        ChannelLayerNorm.forward = original  # type: ignore[method-assign]


def _fallback_export(model: nn.Module, path: Path) -> None:
    import warnings

    model = model.float().cpu().eval()
    x = torch.rand(1, 2, 64, 64)
    axes = {0: "n", 2: "h", 3: "w"}
    with _static_layernorm_shape(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), str(path), input_names=["sources"], output_names=["fused"],
            dynamic_axes={"sources": axes, "fused": axes}, opset_version=OPSET, dynamo=False,
        )
