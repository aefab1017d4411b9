"""Shared building blocks of the metrics: input checks, the degenerate-input policy, MATLAB
rounding, ``normalize1`` and separable window filters.

Degenerate-input policy (one rule for every metric): when the reference computation is
undefined for the given input (0/0, x/0: a constant source in a correlation, a zero VIF
denominator, flat windows in Q_CB, ...) the metric returns ``nan`` and emits a
:class:`DegenerateInputWarning` (a ``RuntimeWarning``) naming the metric and the reason. It never
raises and never substitutes 0 or 1. Well-defined limits stay finite: EN of a constant image is
0, MI with a constant source is 0.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import warnings
from collections.abc import Iterator

import cv2
import numpy as np


class DegenerateInputWarning(RuntimeWarning):
    """A metric is undefined for this input (constant source, flat windows); it returned NaN."""


class InputRangeWarning(UserWarning):
    """The images do not look like the 0..255 scale the metrics expect (e.g. 0..1 floats)."""


#: set while :func:`refusion.metrics.compute_suite` (or ``compute``) runs the metrics of a
#: triplet it has checked already: one warning per call, not one per metric
RANGE_CHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar("range_checked",
                                                                     default=False)


@contextlib.contextmanager
def range_checked() -> Iterator[None]:
    """Within: :func:`check_range` stays silent (the caller has checked the triplet)."""
    token = RANGE_CHECKED.set(True)
    try:
        yield
    finally:
        RANGE_CHECKED.reset(token)


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside this package (the user's call), however
    many wrappers lie between."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) \
            == here:
        frame, level = frame.f_back, level + 1
    return level


def check_range(*images: np.ndarray) -> None:
    """Warn when the images, taken together, are not on the 0..255 scale: all within 0..1
    (floats straight from a network: every metric would be on the wrong scale, EN near 0) or
    beyond 0..255 (16-bit data not scaled). The warning points at the user's call."""
    if RANGE_CHECKED.get():
        return
    lo = min(float(x.min()) for x in images)
    hi = max(float(x.max()) for x in images)
    if 0.0 < hi <= 1.0 and lo >= 0.0:
        warnings.warn("the images are all within 0..1, but the metrics expect the 0..255 "
                      "scale (multiply by 255); computed as given", InputRangeWarning,
                      stacklevel=_caller_stacklevel())
    elif lo < 0.0 or hi > 255.0:
        warnings.warn(f"values from {lo:g} to {hi:g} are outside the 0..255 scale the "
                      "metrics expect (16-bit data: scale by 255/65535); computed as given",
                      InputRangeWarning, stacklevel=_caller_stacklevel())


def degenerate(metric: str, reason: str) -> float:
    """Warn that ``metric`` is undefined here and return NaN (the documented policy)."""
    warnings.warn(f"{metric}: {reason}; returning NaN", DegenerateInputWarning, stacklevel=3)
    return float("nan")


def as_image(x: np.ndarray, name: str = "image", check: bool = True) -> np.ndarray:
    """A 2-D float64 array (a copy only when needed); colour must be converted beforehand.
    ``check``: warn when it is not on the 0..255 scale (:func:`check_range`)."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D grey image, got shape {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or Inf")
    if check and arr.size:
        check_range(arr)
    return arr


def as_triplet(a, b, f) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check and convert a source pair and the fused image (same 2-D shape)."""
    a, b, f = (as_image(x, n, check=False) for x, n in ((a, "a"), (b, "b"), (f, "fused")))
    if not (a.shape == b.shape == f.shape):
        raise ValueError(f"shape mismatch: a {a.shape}, b {b.shape}, fused {f.shape}")
    if a.size:
        check_range(a, b, f)
    return a, b, f


def matlab_round(x: np.ndarray) -> np.ndarray:
    """MATLAB ``round``: halves away from zero (numpy's ``round`` goes to even)."""
    x = np.asarray(x, dtype=np.float64)
    ax = np.abs(x)
    fl = np.floor(ax)
    # ax - fl is exact for |x| < 2**52, so the .5 test is exact (floor(x + .5) is not).
    return np.copysign(fl + (ax - fl >= 0.5), x)


def to_uint8_matlab(x: np.ndarray) -> np.ndarray:
    """MATLAB ``uint8(x)``: round half away from zero, saturate to 0..255."""
    return np.clip(matlab_round(x), 0, 255).astype(np.uint8)


def to_uint8_round_even(x: np.ndarray) -> np.ndarray:
    """``np.uint8(np.round(x))`` as CDDFuse does it, but clipped first (no wrap-around)."""
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def normalize1(x: np.ndarray) -> np.ndarray | None:
    """Liu's ``normalize1``: min-max stretch to 0..255 then MATLAB-round.

    Returns None for a constant non-zero image (the reference divides 0 by 0 there); an
    all-zero image is returned unchanged, as in the reference.
    """
    mx, mn = float(x.max()), float(x.min())
    if mx == 0 and mn == 0:
        return x.astype(np.float64, copy=True)
    if mx == mn:
        return None
    return matlab_round((x - mn) / (mx - mn) * 255)


def gauss1d(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D factor of MATLAB ``fspecial('gaussian', size, sigma)`` (separable)."""
    r = (size - 1) / 2.0
    x = np.arange(-r, r + 1)
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


_BORDERS = {"constant": cv2.BORDER_CONSTANT, "nearest": cv2.BORDER_REPLICATE,
            "reflect": cv2.BORDER_REFLECT, "mirror": cv2.BORDER_REFLECT_101}


def _sep(x: np.ndarray, w1d: np.ndarray, border: int) -> np.ndarray:
    # OpenCV's separable float64 filter: the same sums as scipy.ndimage.correlate1d twice
    # (~1e-16 relative apart), several times faster.
    return cv2.sepFilter2D(np.ascontiguousarray(x, dtype=np.float64), cv2.CV_64F, w1d, w1d,
                           borderType=border)


def filter_valid(x: np.ndarray, w1d: np.ndarray) -> np.ndarray:
    """Correlate with the separable window ``outer(w1d, w1d)``, MATLAB ``filter2(...,'valid')``."""
    h = len(w1d) // 2
    m, n = x.shape
    if m <= 2 * h or n <= 2 * h:
        return np.empty((max(m - 2 * h, 0), max(n - 2 * h, 0)))
    return _sep(x, w1d, cv2.BORDER_CONSTANT)[h : m - h, h : n - h]


def filter_same(x: np.ndarray, w1d: np.ndarray, mode: str) -> np.ndarray:
    """Correlate with ``outer(w1d, w1d)``, same size, border ``mode`` named as in scipy.ndimage
    (``constant`` = zeros, ``nearest``, ``reflect``, ``mirror``)."""
    return _sep(x, w1d, _BORDERS[mode])


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy (log2) of a histogram given as counts, 0 log 0 = 0."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: a single bin gives 0.0, not -0.0
