"""Eager PyTorch inference of the fusion module on numpy lumas."""

from __future__ import annotations

import numpy as np
import torch

from refusion.errors import UserError
from refusion.models.fusion import FusionNet


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU is a user error."""
    name = str(name)  # a torch.device is accepted as its text
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA device is available")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"--device must be cpu, cuda or auto, got {name!r}")
    return torch.device(name)


@torch.inference_mode()
def fuse_lumas(model: FusionNet, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fuse two ``(H, W)`` float32 lumas in [0, 1]; returns the ``(H, W)`` fused luma."""
    p = next(model.parameters())
    x = torch.from_numpy(np.stack([a, b])[None]).to(device=p.device, dtype=p.dtype)
    return model(x)[0, 0].float().cpu().numpy()
