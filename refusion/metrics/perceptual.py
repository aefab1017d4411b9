"""Perceptual metrics: VIF (Sheikh-Bovik vifp, summed over sources) and Q_CB (Chen-Blum).

See CONVENTIONS.md sections VIF and Q_CB for the exact constants reproduced here.
"""

from __future__ import annotations

import numpy as np
from scipy import fft

from ._common import as_triplet, degenerate, filter_same, filter_valid, gauss1d, normalize1
from .conventions import accepts_aliases

_EPS = 1e-10
_SIGMA_NSQ = 2.0


def _vifp_terms(refs: list[np.ndarray], dist: np.ndarray) -> list[tuple[float, float]]:
    """(num, den) of multiscale pixel-domain VIF for each reference against ``dist``."""
    acc = [[0.0, 0.0] for _ in refs]
    for scale in range(1, 5):
        n = 2 ** (5 - scale) + 1
        w = gauss1d(n, n / 5.0)
        if scale > 1:
            refs = [filter_valid(r, w)[::2, ::2] for r in refs]
            dist = filter_valid(dist, w)[::2, ::2]
        if min(dist.shape) < n:
            break
        mu2 = filter_valid(dist, w)
        s2 = np.maximum(filter_valid(dist * dist, w) - mu2 * mu2, 0.0)
        for k, ref in enumerate(refs):
            mu1 = filter_valid(ref, w)
            s1 = np.maximum(filter_valid(ref * ref, w) - mu1 * mu1, 0.0)
            s12 = filter_valid(ref * dist, w) - mu1 * mu2
            g = s12 / (s1 + _EPS)
            sv = s2 - g * s12
            # The reference's masked assignments, in its order, as whole-array selects.
            low1 = s1 < _EPS
            low2 = s2 < _EPS
            g = np.where(low1 | low2, 0.0, g)
            sv = np.where(low2, 0.0, np.where(low1, s2, sv))
            s1 = np.where(low1, 0.0, s1)
            neg = g < 0
            sv = np.where(neg, s2, sv)
            g = np.where(neg, 0.0, g)
            np.maximum(sv, _EPS, out=sv)
            acc[k][0] += float(np.sum(np.log10(1 + g * g * s1 / (sv + _SIGMA_NSQ))))
            acc[k][1] += float(np.sum(np.log10(1 + s1 / _SIGMA_NSQ)))
    return [(num, den) for num, den in acc]


def vif(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """VIF = vifp(A,F) + vifp(B,F) (a **sum**, can exceed 1); CDDFuse ``VIFF`` = Tang.

    Sheikh & Bovik's pixel-domain vifp: 4 scales, Gaussian windows 17/9/5/3 (sigma N/5),
    'valid' filtering, sigma_n^2 = 2 on 0..255 data.

    A constant source makes its denominator 0: NaN with a warning (CDDFuse would silently
    substitute 1 for that source).
    """
    a, b, f = as_triplet(a, b, f)
    (na, da), (nb, db) = _vifp_terms([a, b], f)
    if da == 0 or db == 0:
        return degenerate("VIF", "a constant (or too small) source gives vifp = 0/0")
    return na / da + nb / db


def _csf_rfft(m: int, n: int) -> np.ndarray:
    """Chen-Blum DoG contrast sensitivity on MATLAB's ``freqspace`` grid, ifftshift-ed and cut
    to the half spectrum of ``rfft2``.

    fftshift(fft2(I)) .* S then ifftshift equals fft2(I) .* ifftshift(S). S depends on |u|, |v|
    only, so it is symmetric and the filtered image is real: the reference's imaginary part is
    rounding (~1e-14), and a real FFT gives the real part at half the cost.
    """
    u = (np.arange(n) - n // 2) * (2.0 / n) * (n / 30.0)
    v = (np.arange(m) - m // 2) * (2.0 / m) * (m / 30.0)
    r = np.sqrt(u[None, :] ** 2 + v[:, None] ** 2)
    s = np.exp(-((r / 15.3870) ** 2)) - 0.7622 * np.exp(-((r / 1.3456) ** 2))
    return fft.ifftshift(s)[:, : n // 2 + 1]


def _gauss31(sigma: float) -> np.ndarray:
    # The 31x31 exp(-(x^2+y^2)/2s^2)/(2 pi s^2), not renormalised, is the outer product of
    # this factor with itself.
    x = np.arange(-15, 16, dtype=np.float64)
    return np.exp(-(x * x) / (2 * sigma * sigma)) / np.sqrt(2 * np.pi * sigma * sigma)


def _local_contrast(im: np.ndarray, g2: np.ndarray, g4: np.ndarray) -> np.ndarray:
    """C' = |C|^3 / (|C|^2 + 1e-4), C = (I * G2) / (I * G4) - 1, zero-padded 'same' filters
    (filter2 of the symmetric kernels: correlation = convolution)."""
    b2 = filter_same(im, g2, "constant")
    b4 = filter_same(im, g4, "constant")
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.abs(b2 / b4 - 1)
        c2 = c * c
        return c2 * c / (c2 + 1e-4)


@accepts_aliases("Q_CB")
def q_cb(a: np.ndarray, b: np.ndarray, f: np.ndarray, convention: str = "vifb") -> float:
    """Chen & Blum (2009) perceptual fusion quality Q_CB (VIFB = MEFB = Liu ``metricChenBlum``).

    Conventions:
        ``vifb`` (= ``liu``): ``normalize1`` applied to the 0..255 images.
        ``mefb``: ``im2double`` (/255) before ``normalize1`` (differs only in .5 roundings).

    A constant image, or any pixel where a contrast ratio is 0/0, makes the reference NaN: NaN
    with a warning. The contrast filters are direct sums as filter2's, so this is ~1e-15 from a
    transcription of the reference; the toolboxes themselves differ by ~1e-5 (normalize1's
    .5 roundings).
    """
    a, b, f = as_triplet(a, b, f)
    if convention in ("vifb", "liu"):
        ims = [normalize1(x) for x in (a, b, f)]
    elif convention == "mefb":
        ims = [normalize1(x / 255.0) for x in (a, b, f)]
    else:
        raise ValueError(f"unknown Q_CB convention {convention!r}")
    if any(x is None for x in ims):
        return degenerate("Q_CB", "a constant image makes normalize1 0/0")
    m, n = a.shape
    s = _csf_rfft(m, n)
    g2, g4 = _gauss31(2.0), _gauss31(4.0)
    c1, c2, cf = (_local_contrast(fft.irfft2(fft.rfft2(x) * s, (m, n)), g2, g4) for x in ims)
    with np.errstate(divide="ignore", invalid="ignore"):
        # The reference blends with a mask (ratio*mask + inverse*(1-mask)), so a zero
        # contrast gives Inf*0 = NaN; keep that arithmetic.
        m1 = (c1 < cf).astype(np.float64)
        q1 = (c1 / cf) * m1 + (cf / c1) * (1 - m1)
        m2 = (c2 < cf).astype(np.float64)
        q2 = (c2 / cf) * m2 + (cf / c2) * (1 - m2)
        den = c1 * c1 + c2 * c2
        q = (c1 * c1 / den) * q1 + (c2 * c2 / den) * q2
    val = float(q.mean())
    if np.isnan(val):
        return degenerate("Q_CB", "flat regions make the contrast ratios 0/0")
    return val
