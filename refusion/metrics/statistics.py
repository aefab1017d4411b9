"""Global statistics: SD, CC, SCD, MSE and PSNR (CONVENTIONS.md sections SD, CC, SCD, PSNR/MSE).

All inputs are 2-D float64 arrays on the 0..255 scale, ``a``/``b`` the sources, ``f`` fused.
"""

from __future__ import annotations

import numpy as np

from ._common import as_image, as_triplet, degenerate
from .conventions import accepts_aliases


def sd(f: np.ndarray) -> float:
    """Standard deviation, population form (ddof = 0); all toolboxes agree.

    Args:
        f: fused image, (H, W).
    Returns:
        The SD on the 0..255 scale.
    """
    return float(np.std(as_image(f)))


def _corr(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation over all pixels (MATLAB ``corr2``); None when undefined."""
    dx, dy = x - x.mean(), y - y.mean()
    den = np.sqrt(np.sum(dx * dx) * np.sum(dy * dy))
    if den == 0:
        return None
    return float(np.sum(dx * dy) / den)


def cc(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """Correlation coefficient, the **mean** (corr(A,F) + corr(B,F)) / 2 (CDDFuse = Tang).

    A constant source or fused image makes a correlation 0/0: NaN with a warning (Tang's code
    would give +/-Inf there, CDDFuse NaN).
    """
    a, b, f = as_triplet(a, b, f)
    r1, r2 = _corr(a, f), _corr(b, f)
    if r1 is None or r2 is None:
        return degenerate("CC", "a constant image makes the correlation 0/0")
    return (r1 + r2) / 2


def scd(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """Sum of the correlations of differences, corr(F-B, A) + corr(F-A, B) (a **sum**).

    NaN with a warning when a source or a difference image is constant.
    """
    a, b, f = as_triplet(a, b, f)
    r1, r2 = _corr(f - b, a), _corr(f - a, b)
    if r1 is None or r2 is None:
        return degenerate("SCD", "a constant source or difference image makes a correlation 0/0")
    return r1 + r2


def _mse_pair(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    return (float(np.mean((a - f) ** 2)) + float(np.mean((b - f) ** 2))) / 2


def _vifb_mse(x: np.ndarray, f: np.ndarray) -> float:
    # VIFB's "mse" is sqrt(sum of squares) / (M N), which is not a mean squared error.
    return float(np.sqrt(np.sum((x - f) ** 2)) / x.size)


@accepts_aliases("MSE")
def mse(a: np.ndarray, b: np.ndarray, f: np.ndarray, convention: str = "cddfuse") -> float:
    """Mean squared error, the **mean** over the two sources.

    Conventions:
        ``cddfuse``: (mean((A-F)^2) + mean((B-F)^2)) / 2 on 0..255.
        ``tang``: the same on images divided by 255 (= cddfuse / 65025).
        ``vifb`` (= ``mefb``): mean over sources of sqrt(sum (X-F)^2) / (M N) (their odd "mse").
    """
    a, b, f = as_triplet(a, b, f)
    if convention == "cddfuse":
        return _mse_pair(a, b, f)
    if convention == "tang":
        return _mse_pair(a, b, f) / 65025.0
    if convention in ("vifb", "mefb"):
        return (_vifb_mse(a, f) + _vifb_mse(b, f)) / 2
    raise ValueError(f"unknown MSE convention {convention!r}")


@accepts_aliases("PSNR")
def psnr(a: np.ndarray, b: np.ndarray, f: np.ndarray, convention: str = "cddfuse") -> float:
    """Peak signal-to-noise ratio in dB against both sources.

    Conventions:
        ``cddfuse``: 10 log10(max(F)^2 / MSE), peak max(F), MSE the cddfuse mean (10..23 dB).
        ``tang``: 20 log10(255 / sqrt(MSE on [0,1] data)) (the "60-70 dB" of IVIF papers).
        ``vifb`` (= ``mefb``): 20 log10(255 / sqrt(mean of VIFB's two "mse" values)).

    MSE = 0 (or a zero peak) leaves the ratio undefined: NaN with a warning.
    """
    a, b, f = as_triplet(a, b, f)
    if convention == "cddfuse":
        m, peak2 = _mse_pair(a, b, f), float(np.max(f)) ** 2
    elif convention == "tang":
        m, peak2 = _mse_pair(a, b, f) / 65025.0, 65025.0
    elif convention in ("vifb", "mefb"):
        m, peak2 = (_vifb_mse(a, f) + _vifb_mse(b, f)) / 2, 65025.0
    else:
        raise ValueError(f"unknown PSNR convention {convention!r}")
    if m == 0 or peak2 == 0:
        return degenerate("PSNR", "zero MSE or zero peak makes the ratio undefined")
    return float(10 * np.log10(peak2 / m))
