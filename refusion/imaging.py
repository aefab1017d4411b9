"""Image I/O and the colour path shared by every command and backend.

Colour convention (the authors'): each source is converted with OpenCV's float YCrCb transform
of its 0..255 values (``Y = 0.299 R + 0.587 G + 0.114 B``; for float input OpenCV centres the
chroma at 0.5); the network fuses the two lumas ``Y/255``; the chroma of the output comes from
the colour source, or, when both are in colour, from both, each pixel weighted by its distance
from neutral (``|C - 0.5|``). A three-channel image whose channels are equal counts as grey.

Output scaling: ``fixed`` maps the network's [0, 1] to [0, 255] (stable across video frames);
``minmax`` stretches each image's own min..max to 0..255, as the authors' test script does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from refusion.errors import UserError
from refusion.utils.atomic import atomic_path

Normalize = Literal["fixed", "minmax"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as stored (grey ``(H, W)`` or BGR ``(H, W, 3)``, 8- or 16-bit).

    Alpha channels are dropped. Raises :class:`UserError` naming the file when it is missing
    or cannot be decoded.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"image not found: {p}")
    data = np.fromfile(str(p), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise UserError(f"cannot decode image: {p}")
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    elif img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.dtype not in (np.uint8, np.uint16, np.float32):
        raise UserError(f"unsupported pixel type {img.dtype} in {p}")
    return img


def is_gray(img: np.ndarray) -> bool:
    """True for single-channel images and three-channel images with equal channels."""
    if img.ndim == 2:
        return True
    c0, c1, c2 = img[..., 0], img[..., 1], img[..., 2]
    return bool(np.array_equal(c0, c1) and np.array_equal(c1, c2))


def to_float255(img: np.ndarray) -> np.ndarray:
    """Pixel values as float32 on the 0..255 scale (16-bit divided by 257, float kept)."""
    if img.dtype == np.uint8:
        return img.astype(np.float32)
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 257.0
    return img.astype(np.float32)


def split_luma(img: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Return ``(Y/255 as float32 (H, W), CrCb float32 (H, W, 2) or None for grey)``."""
    f = to_float255(img)
    if is_gray(img):
        y = f if f.ndim == 2 else f[..., 0]
        return np.ascontiguousarray(y / 255.0, dtype=np.float32), None
    ycrcb = cv2.cvtColor(f, cv2.COLOR_BGR2YCrCb)
    return np.ascontiguousarray(ycrcb[..., 0] / 255.0), np.ascontiguousarray(ycrcb[..., 1:])


def fuse_chroma(crcb_a: np.ndarray, crcb_b: np.ndarray) -> np.ndarray:
    """Combine two chroma planes, weighting each pixel by its distance from neutral (0.5)."""
    wa = np.abs(crcb_a - 0.5)
    wb = np.abs(crcb_b - 0.5)
    return (crcb_a * wa + crcb_b * wb) / (wa + wb + 1e-4)


@dataclass
class PreparedPair:
    """Network-ready lumas of a pair and the chroma to put back on the fused image."""

    a: np.ndarray  # (H, W) float32 in [0, 1]
    b: np.ndarray  # (H, W) float32 in [0, 1]
    chroma: np.ndarray | None  # (H, W, 2) float32 or None for a grey result


def prepare_pair(
    img_a: np.ndarray, img_b: np.ndarray, name_a: str = "a", name_b: str = "b"
) -> PreparedPair:
    """Lumas and output chroma of a pair (see the module docstring for the colour rule)."""
    if img_a.shape[:2] != img_b.shape[:2]:
        raise UserError(
            f"size mismatch: {name_a} is {img_a.shape[1]}x{img_a.shape[0]}, "
            f"{name_b} is {img_b.shape[1]}x{img_b.shape[0]}"
        )
    ya, ca = split_luma(img_a)
    yb, cb = split_luma(img_b)
    if ca is None:
        chroma = cb
    elif cb is None:
        chroma = ca
    else:
        chroma = fuse_chroma(ca, cb)
    return PreparedPair(ya, yb, chroma)


def to_uint8(fused01: np.ndarray, normalize: Normalize = "fixed") -> np.ndarray:
    """Map a fused luma in [0, 1] to 0..255 float32 (not yet rounded)."""
    f = np.asarray(fused01, dtype=np.float32)
    if normalize == "minmax":
        lo, hi = float(f.min()), float(f.max())
        f = (f - lo) / (hi - lo) if hi > lo else np.zeros_like(f)
    elif normalize != "fixed":
        raise UserError(f"--normalize must be 'fixed' or 'minmax', got {normalize!r}")
    return np.clip(f, 0.0, 1.0) * 255.0


def compose(
    fused01: np.ndarray, chroma: np.ndarray | None, normalize: Normalize = "fixed"
) -> np.ndarray:
    """Final 8-bit image: grey ``(H, W)`` or BGR ``(H, W, 3)`` with the pair's chroma."""
    y = to_uint8(fused01, normalize)
    if chroma is None:
        return np.clip(np.rint(y), 0, 255).astype(np.uint8)
    ycrcb = np.concatenate([y[..., None], chroma.astype(np.float32)], axis=2)
    bgr = cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR)
    return np.clip(np.rint(bgr), 0, 255).astype(np.uint8)


def write_image(path: str | os.PathLike, img: np.ndarray) -> Path:
    """Write an image atomically; the format follows the file extension."""
    dest = Path(path)
    ext = dest.suffix.lower() or ".png"
    ok, buf = cv2.imencode(ext, img)
    if not ok:
        raise UserError(f"cannot encode an image as {ext} for {dest}")
    try:
        with atomic_path(dest) as tmp:
            tmp.write_bytes(buf.tobytes())
    except OSError as exc:
        raise UserError(f"cannot write {dest}: {exc.strerror}") from None
    return dest
