"""Reading images for the metrics: grey 0..255 float64, colour -> luma as the toolboxes do."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np

from refusion.errors import UserError
from refusion.imaging import IMAGE_SUFFIXES, unit_float_to_255  # noqa: F401 - re-exported

from ._common import InputRangeWarning

#: pixel types the metrics read (others, e.g. signed integers, have no agreed 0..255 mapping)
_DTYPES = (np.uint8, np.uint16, np.float32, np.float64)


def to_grey255(img: np.ndarray, name: str = "the image") -> np.ndarray:
    """Convert a decoded image to a float64 0..255 grey image with integer values.

    Colour (BGR/BGRA) becomes the Y channel of OpenCV's BGR2YCrCb (0.299/0.587/0.114, what
    CDDFuse and the toolboxes use), rounded to integers. 16-bit data is scaled by 255/65535
    and rounded; float data is taken as 0..1 when its values lie within -0.05..1.05 (a float
    TIFF written by most tools, a network's slight under- or overshoot allowed) and scaled by
    255, else as 0..255 (other integer arrays are taken as 0..255 values). Values then outside
    0..255 are clipped, with an :class:`InputRangeWarning` naming ``name``.

    Args:
        img: (H, W), (H, W, 3) or (H, W, 4) array as returned by ``cv2.imread``.
        name: what the warnings call the image (``read_grey`` passes the file).
    Returns:
        (H, W) float64 array.
    Raises:
        ValueError: a non-numeric pixel type, or NaN/Inf in float data.
    """
    if img.dtype.kind not in "biuf":
        raise ValueError(f"unsupported pixel type {img.dtype} in {name}")
    if img.dtype.kind == "f" and not np.all(np.isfinite(img)):
        raise ValueError(f"{name} contains NaN or Inf")
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
    if img.dtype == np.uint8:
        return y
    if img.dtype == np.uint16:
        y = y * (255.0 / 65535.0)
        # raw thermal data spans a few thousand of the 65536 levels: on 0..255 that is a
        # nearly flat image, scored very differently from what the fusion saw
        if y.size and int(img.max()) - int(img.min()) < 4096:
            warnings.warn(
                f"{name}: a 16-bit image using only levels {int(img.min())}..{int(img.max())} "
                "of 65535; the metrics scale 16-bit data by 255/65535 (as the toolboxes do), "
                "so it scores as nearly flat: give the metrics the 8-bit images your fusion "
                "saw (refusion-fuse maps 16-bit sources by robust percentiles)",
                InputRangeWarning, stacklevel=2)
    y = np.round(y)
    if y.size and (y.min() < 0.0 or y.max() > 255.0):
        warnings.warn(f"{name}: values {y.min():g}..{y.max():g} are outside 0..255 and were "
                      "clipped", InputRangeWarning, stacklevel=2)
    return np.clip(y, 0, 255)


def read_grey(path: str | Path) -> np.ndarray:
    """Read an image file as a float64 0..255 grey image (see :func:`to_grey255`).

    Raises:
        UserError: the file cannot be read or decoded, holds an unsupported pixel type, or
            NaN/Inf.
    """
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise UserError(f"cannot read image {path}")
    if img.dtype not in _DTYPES:  # a file's signed integers have no agreed 0..255 mapping
        raise UserError(f"unsupported pixel type {img.dtype} in {path} (the metrics read "
                        "8- and 16-bit unsigned and float images)")
    try:
        return to_grey255(img, str(path))
    except ValueError as exc:
        raise UserError(str(exc)) from None
