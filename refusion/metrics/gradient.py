"""Gradient metrics: SF, AG, Qabf (Xydeas-Petrovic) and Nabf (Shreyamsha Kumar).

Borders follow CONVENTIONS.md exactly: SF uses interior differences only, AG uses MATLAB
``gradient`` (one-sided at the edges), Qabf zero-pads its Sobel 'same' convolution, Nabf mirrors
one pixel without repeating the edge (numpy 'reflect').
"""

from __future__ import annotations

import cv2
import numpy as np

from ._common import as_image, as_triplet, degenerate
from .conventions import accepts_aliases


@accepts_aliases("SF")
def sf(f: np.ndarray, convention: str = "cddfuse") -> float:
    """Spatial frequency sqrt(RF^2 + CF^2) from horizontal and vertical differences.

    Conventions:
        ``cddfuse`` (= ``tang``): each sum divided by its number of differences.
        ``vifb`` (= ``mefb``): both sums divided by M N (always slightly smaller).
    """
    f = as_image(f)
    if min(f.shape) < 2:
        return degenerate("SF", "an image needs at least 2 rows and 2 columns")
    dh = np.diff(f, axis=1)
    dv = np.diff(f, axis=0)
    if convention in ("cddfuse", "tang"):
        return float(np.sqrt(np.mean(dh * dh) + np.mean(dv * dv)))
    if convention in ("vifb", "mefb"):
        return float(np.sqrt((np.sum(dh * dh) + np.sum(dv * dv)) / f.size))
    raise ValueError(f"unknown SF convention {convention!r}")


def _matlab_gradient(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gx = np.empty_like(f)
    gx[:, 1:-1] = (f[:, 2:] - f[:, :-2]) / 2
    gx[:, 0] = f[:, 1] - f[:, 0]
    gx[:, -1] = f[:, -1] - f[:, -2]
    gy = np.empty_like(f)
    gy[1:-1] = (f[2:] - f[:-2]) / 2
    gy[0] = f[1] - f[0]
    gy[-1] = f[-1] - f[-2]
    return gx, gy


@accepts_aliases("AG")
def ag(f: np.ndarray, convention: str = "cddfuse") -> float:
    """Average gradient: g = sqrt((gx^2 + gy^2)/2) with MATLAB ``gradient`` differences.

    Conventions:
        ``cddfuse``: mean of g over M N.
        ``tang`` (= ``vifb`` = ``mefb``): sum of g divided by (M-1)(N-1).
    """
    f = as_image(f)
    if min(f.shape) < 2:
        return degenerate("AG", "an image needs at least 2 rows and 2 columns")
    gx, gy = _matlab_gradient(f)
    g = np.sqrt((gx * gx + gy * gy) / 2)
    if convention == "cddfuse":
        return float(np.mean(g))
    if convention in ("tang", "vifb", "mefb"):
        m, n = f.shape
        return float(np.sum(g) / ((m - 1) * (n - 1)))
    raise ValueError(f"unknown AG convention {convention!r}")


_SMOOTH = np.array([1.0, 2.0, 1.0])
_DERIV = np.array([-1.0, 0.0, 1.0])


def _sep3(x: np.ndarray, kx: np.ndarray, ky: np.ndarray, border: int) -> np.ndarray:
    # 3-tap separable correlation (OpenCV, float64): kx along rows, ky down columns. On
    # integer images every sum is exact whatever the order.
    return cv2.sepFilter2D(np.ascontiguousarray(x), cv2.CV_64F, kx, ky, borderType=border)


def _qabf_sobel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # True convolution with [-1 0 1; -2 0 2; -1 0 1] (Sx) and [1 2 1; 0 0 0; -1 -2 -1] (Sy),
    # zero padding; as correlations the kernels are flipped.
    sx = _sep3(x, -_DERIV, _SMOOTH, cv2.BORDER_CONSTANT)
    sy = _sep3(x, _SMOOTH, _DERIV, cv2.BORDER_CONSTANT)
    g = np.sqrt(sx * sx + sy * sy)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(sx == 0, np.pi / 2, np.arctan(sy / sx))
    return g, alpha


def _qabf_q(ga, aa, gf, af) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        # gA == gF gives gF (sic), not 1: the shipped code's branch, kept on purpose.
        gaf = np.where(ga > gf, gf / ga, np.where(ga < gf, ga / gf, gf))
    aaf = 1 - np.abs(aa - af) / (np.pi / 2)
    qg = 0.9994 / (1 + np.exp(-15 * (gaf - 0.5)))
    qa = 0.9879 / (1 + np.exp(-22 * (aaf - 0.8)))
    return qg * qa


def qabf(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """Xydeas & Petrovic Qabf as every toolbox ships it (CDDFuse = Tang = VIFB = MEFB).

    Returns sum(Q_AF gA + Q_BF gB) / sum(gA + gB), range 0..1; NaN with a warning when both
    sources have no gradient at all.
    """
    a, b, f = as_triplet(a, b, f)
    ga, aa = _qabf_sobel(a)
    gb, ab = _qabf_sobel(b)
    gf, af = _qabf_sobel(f)
    den = float(np.sum(ga + gb))
    if den == 0:
        return degenerate("Qabf", "both sources are constant (zero gradient everywhere)")
    num = float(np.sum(_qabf_q(ga, aa, gf, af) * ga + _qabf_q(gb, ab, gf, af) * gb))
    return num / den


def _kumar_sobel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Correlation with [-1 0 1;-2 0 2;-1 0 1]/8 (gv) and [-1 -2 -1;0 0 0;1 2 1]/8 (gh) after a
    # 1-pixel mirror extension without repeating the edge (OpenCV REFLECT_101).
    gv = _sep3(x, _DERIV, _SMOOTH, cv2.BORDER_REFLECT_101) / 8
    gh = _sep3(x, _SMOOTH, _DERIV, cv2.BORDER_REFLECT_101) / 8
    g = np.sqrt(gh * gh + gv * gv)
    both0 = (gv == 0) & (gh == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(both0, 0.0, np.arctan(gv / gh))
    return g, alpha, both0


def _kumar_q(gx, ax, gf, af) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where((gx == 0) | (gf == 0), 0.0,
                     np.where(gx > gf, gf / gx, gx / gf))
    aaf = np.abs(np.abs(ax - af) - np.pi / 2) * 2 / np.pi
    qg = 0.9999 / (1 + np.exp(-19 * (r - 0.5)))
    qa = 0.9995 / (1 + np.exp(-22 * (aaf - 0.5)))
    return np.sqrt(qg * qa)


def _nabf_kumar(fused: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> float:
    ga, aa, _ = _kumar_sobel(s1)
    gb, ab, _ = _kumar_sobel(s2)
    gf, af, _ = _kumar_sobel(fused)
    qa = _kumar_q(ga, aa, gf, af)
    qb = _kumar_q(gb, ab, gf, af)
    with np.errstate(invalid="ignore"):
        # g^1.5 as g*sqrt(g): one ulp from MATLAB's power, several times cheaper.
        wa = np.where(ga >= 2, ga * np.sqrt(ga), 0.001)
        wb = np.where(gb >= 2, gb * np.sqrt(gb), 0.001)
    na = (gf > ga) & (gf > gb)
    return float(np.sum(na * ((1 - qa) * wa + (1 - qb) * wb)) / np.sum(wa + wb))


@accepts_aliases("Nabf")
def nabf(a: np.ndarray, b: np.ndarray, f: np.ndarray, convention: str = "vifb_cbf") -> float:
    """Fusion artefacts Nabf, Shreyamsha Kumar's modification of Petrovic (lower is better).

    Conventions:
        ``vifb_cbf`` (= ``tang_fused_first``): the function as written, fused image first.
        ``tang_as_called``: what Tang's ``analysis_Reference`` reports, calling the function
            with A in the fused slot (sources B and F). Kept only to reproduce those tables.
    """
    a, b, f = as_triplet(a, b, f)
    if convention in ("vifb_cbf", "tang_fused_first"):
        return _nabf_kumar(f, a, b)
    if convention == "tang_as_called":
        return _nabf_kumar(a, b, f)
    raise ValueError(f"unknown Nabf convention {convention!r}")
