"""Reading images for the metrics: grey 0..255 float64, colour -> luma as the toolboxes do."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from refusion.errors import UserError
from refusion.imaging import IMAGE_SUFFIXES, unit_float_to_255  # noqa: F401 - re-exported


def to_grey255(img: np.ndarray) -> np.ndarray:
    """Convert a decoded image to a float64 0..255 grey image with integer values.

    Colour (BGR/BGRA) becomes the Y channel of OpenCV's BGR2YCrCb (0.299/0.587/0.114, what
    CDDFuse and the toolboxes use), rounded to integers. 16-bit data is scaled by 255/65535
    and rounded; float data is taken as 0..1 when it lies within 0..1 (a float TIFF written
    by most tools) and scaled by 255, else as 0..255.

    Args:
        img: (H, W), (H, W, 3) or (H, W, 4) array as returned by ``cv2.imread``.
    Returns:
        (H, W) float64 array.
    """
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3:
        img = img[:, :, :3]  # alpha is not part of the picture (nor of its value range)
    img = unit_float_to_255(img)
    if img.ndim == 3:
        if img.dtype == np.uint8:
            return cv2.cvtColor(img, cv2.COLOR_BGR2YCrCb)[:, :, 0].astype(np.float64)
        y = cv2.cvtColor(img.astype(np.float32), cv2.COLOR_BGR2YCrCb)[:, :, 0].astype(np.float64)
    else:
        y = img.astype(np.float64)
    if img.dtype == np.uint16:
        y = y * (255.0 / 65535.0)
    return np.clip(np.round(y), 0, 255) if img.dtype != np.uint8 else y


def read_grey(path: str | Path) -> np.ndarray:
    """Read an image file as a float64 0..255 grey image (see :func:`to_grey255`).

    Raises:
        UserError: the file cannot be read or decoded.
    """
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise UserError(f"cannot read image {path}")
    return to_grey255(img)
