"""Information metrics: EN, MI, Q_NCIE and FMI (CONVENTIONS.md sections EN, MI, Q_NCIE, FMI).

Histograms are over 256 integer grey levels; images are quantised as the named convention does
(CDDFuse rounds half-to-even, VIFB floors, MATLAB ``uint8`` rounds half away from zero).
"""

from __future__ import annotations

import numpy as np
from scipy.fft import dctn

from ._common import (
    as_image,
    as_triplet,
    degenerate,
    entropy_bits,
    normalize1,
    to_uint8_matlab,
    to_uint8_round_even,
)


def en(f: np.ndarray, convention: str = "cddfuse") -> float:
    """Shannon entropy (bits) of the 256-bin grey-level histogram; 0 for a constant image.

    Conventions (identical on integer images):
        ``cddfuse``: round half-to-even (``np.round``), clip to 0..255.
        ``vifb`` (= ``mefb``): floor.
        ``tang``: MATLAB ``uint8`` (round half away from zero, saturate).
    """
    f = as_image(f)
    if convention == "cddfuse":
        q = to_uint8_round_even(f)
    elif convention in ("vifb", "mefb"):
        q = np.clip(np.floor(f), 0, 255).astype(np.uint8)
    elif convention == "tang":
        q = to_uint8_matlab(f)
    else:
        raise ValueError(f"unknown EN convention {convention!r}")
    return entropy_bits(np.bincount(q.ravel(), minlength=256))


def _mi_pair(x: np.ndarray, f: np.ndarray, saturate_joint: bool) -> float:
    """I(X;F) = H(X) + H(F) - H(X,F) in bits from integer images (uint8)."""
    hx = entropy_bits(np.bincount(x.ravel(), minlength=256))
    hf = entropy_bits(np.bincount(f.ravel(), minlength=256))
    if saturate_joint:
        # Tang indexes the joint histogram with uint8(x) + 1, which saturates at 255: levels 254
        # and 255 share a joint bin while the marginals keep them apart.
        x, f = np.minimum(x, 254), np.minimum(f, 254)
    joint = np.bincount(x.ravel().astype(np.int64) * 256 + f.ravel(), minlength=65536)
    return hx + hf - entropy_bits(joint)


def mi(a: np.ndarray, b: np.ndarray, f: np.ndarray, convention: str = "cddfuse") -> float:
    """Mutual information I(A;F) + I(B;F) (a **sum**) from 256-bin histograms.

    Conventions:
        ``cddfuse`` (= ``vifb`` on 8-bit data): natural log (nats), images rounded
            half-to-even (sklearn on integer labels).
        ``tang``: log2 (bits), MATLAB ``uint8`` quantisation, joint bins 254/255 merged.

    A constant image carries no information: I = 0 for it, not NaN.
    """
    a, b, f = as_triplet(a, b, f)
    if convention in ("cddfuse", "vifb"):
        qa, qb, qf = (to_uint8_round_even(x) for x in (a, b, f))
        bits = _mi_pair(qa, qf, False) + _mi_pair(qb, qf, False)
        return bits * np.log(2.0)
    if convention == "tang":
        qa, qb, qf = (to_uint8_matlab(x) for x in (a, b, f))
        return _mi_pair(qa, qf, True) + _mi_pair(qb, qf, True)
    raise ValueError(f"unknown MI convention {convention!r}")


def q_ncie(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """Wang's nonlinear correlation information entropy (MEFB ``metricsQncie`` = Liu).

    Each image is ``normalize1``-ed; NCC(X,Y) = MI in log-256 units; Q_NCIE = 1 - H_R with H_R
    the base-256 entropy of the eigenvalues/3 of the 3x3 NCC matrix (0 log 0 = 0, eigenvalues
    clipped at 0 against rounding). A constant non-zero image makes ``normalize1`` 0/0: NaN.
    """
    a, b, f = as_triplet(a, b, f)
    na, nb, nf = (normalize1(x) for x in (a, b, f))
    if na is None or nb is None or nf is None:
        return degenerate("Q_NCIE", "a constant image makes normalize1 0/0")
    qa, qb, qf = (x.astype(np.uint8) for x in (na, nb, nf))

    def ncc(x: np.ndarray, y: np.ndarray) -> float:
        return _mi_pair(x, y, False) / 8.0  # log2(256) = 8

    nab, naf, nbf = ncc(qa, qb), ncc(qa, qf), ncc(qb, qf)
    r = np.linalg.eigvalsh(np.array([[1, nab, naf], [nab, 1, nbf], [naf, nbf, 1]]))
    r = np.clip(r, 0, None) / 3
    r = r[r > 0]
    hr = -float(np.sum(r * np.log2(r))) / 8.0
    return 1.0 - hr


# --------------------------------------------------------------------------------------------
# FMI (Haghighat fast-FMI, MEFB metricsFMI = Tang analysis_fmi), vectorised over windows.
#
# The reference loops over 81 joint-PDF cells per 3x3 window. The joint PDF is
# w * C + (1 - w) * outer(pf, px), where C is the Frechet upper (c >= 0) or lower (c < 0)
# coupling. C is non-zero only on a monotone staircase of at most 17 cells, so the 81-cell
# entropy is the closed form for the product part plus a correction on the staircase cells.
# That is exact up to rounding and needs O(18) work per window instead of O(81).
# --------------------------------------------------------------------------------------------

_IDX = np.arange(1, 10, dtype=np.float64)[:, None]
_CHUNK = 4096  # windows per chunk: keeps the (17, n) temporaries in L2 cache

# Arrays below are laid out (cells, windows): reductions over the 9 cells then run along long
# contiguous rows, which is several times faster in numpy than reducing short trailing axes.


def _windows(x: np.ndarray) -> np.ndarray:
    """All valid 3x3 windows as a (9, n_windows) array, cells in MATLAB ``sub(:)`` order."""
    m, n = x.shape
    return np.stack([x[r:r + m - 2, c:c + n - 2].ravel() for c in range(3) for r in range(3)])


def _minmax_norm(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mn, mx = w.min(0), w.max(0)
    const = mx == mn
    span = np.where(const, 1.0, mx - mn)
    return np.where(const, 1.0, (w - mn) / span), const


def _xlog2(t: np.ndarray) -> np.ndarray:
    """t * log2|t| with 0 at t = 0 (the real part MATLAB keeps for negative t)."""
    at = np.abs(t)
    return t * np.log2(np.where(at > 0, at, 1.0))


def _cumsum0(x: np.ndarray) -> np.ndarray:
    # Row-by-row adds: numpy's cumsum over a short leading axis is several times slower.
    out = np.empty_like(x)
    out[0] = x[0]
    for i in range(1, len(x)):
        np.add(out[i - 1], x[i], out=out[i])
    return out


def _staircase(p: np.ndarray, q: np.ndarray):
    """Cells (i, j) and masses of the comonotone coupling of the PDFs p (rows) and q (cols).

    The merged CDF breakpoints cut [0, 1] into segments, each inside one cell of the 9x9 grid;
    zero-length segments carry no mass. The 18th segment lies between the two final CDF values
    (both 1 up to rounding), so only the first 17 are returned, as three (17, n) arrays.
    """
    vals = np.concatenate([_cumsum0(p), _cumsum0(q)], 0)
    order = np.argsort(vals.T, axis=1, kind="stable").T[:17]
    t = np.take_along_axis(vals, order, 0)
    isp = order < 9
    before_p = _cumsum0(isp.astype(np.int64)) - isp
    before_q = np.arange(17)[:, None] - before_p
    mass = np.empty_like(t)
    mass[0] = t[0]
    np.subtract(t[1:], t[:-1], out=mass[1:])
    return np.minimum(before_p, 8), np.minimum(before_q, 8), mass


def _fmi_pair(xn: np.ndarray, cx: np.ndarray, fn: np.ndarray, cf: np.ndarray) -> np.ndarray:
    """Normalised feature MI per window between min-max normalised windows xn and fn (9, n)."""
    px = xn / xn.sum(0)
    pf = fn / fn.sum(0)
    xt = px - px.mean(0)
    ft = pf - pf.mean(0)
    num = np.sum(xt * ft, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(num == 0, 0.0, num / np.sqrt(np.sum(xt * xt, 0) * np.sum(ft * ft, 0)))
    # A constant window becomes the uniform PDF. The reference's mean() of nine 1/9 (summed in
    # order) is one ulp off 1/9, so two constant windows correlate to exactly 1 and one constant
    # window to ~1e-17, where exact arithmetic would give 0/0 -> 0. Reproduce the reference.
    c = np.where(cx & cf, 1.0, np.where(cx | cf, 0.0, c))
    ex, ef = np.sum(px * _IDX, 0), np.sum(pf * _IDX, 0)
    sdx = np.sqrt(np.maximum(np.sum(px * (_IDX * _IDX), 0) - ex * ex, 0.0))
    sdf = np.sqrt(np.maximum(np.sum(pf * (_IDX * _IDX), 0) - ef * ef, 0.0))

    pos = c >= 0
    # Lower Frechet bound = comonotone coupling of pf with px in reversed index order.
    q = np.where(pos, px, px[::-1])
    ii, jj, mass = _staircase(pf, q)
    jj = np.where(pos, jj, 8 - jj)
    # Hoeffding: the coupling's covariance over the index grid 1..9 (= covUp / covLo).
    cov = np.sum(mass * ((ii + 1) * (jj + 1)), 0) - ef * ex
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where((c == 0) | (sdx == 0) | (sdf == 0), 0.0, c * (sdf * sdx) / cov)
    alpha = 1.0 - w

    lx, lf = _xlog2(px), _xlog2(pf)
    sx, sf = px.sum(0), pf.sum(0)
    base = _xlog2(alpha) * sx * sf + alpha * (lf.sum(0) * sx + lx.sum(0) * sf)
    cols = np.arange(px.shape[1])
    prod = alpha * pf[ii, cols] * px[jj, cols]
    corr = _xlog2(w * mass + prod) - _xlog2(prod)
    hj = -(base + corr.sum(0))
    hx, hf = -lx.sum(0), -lf.sum(0)
    mi = hx + hf - hj
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mi == 0, 0.0, 2 * mi / (hx + hf))


def _fmi_chunk(wa: np.ndarray, wb: np.ndarray, wf: np.ndarray) -> np.ndarray:
    """Sum over the windows of a chunk of (FMI_AF + FMI_BF) / 2; windows are (9, n)."""
    eq_a = np.all(wa == wf, 0)
    an, ca = _minmax_norm(wa)
    bn, cb = _minmax_norm(wb)
    fn, cf = _minmax_norm(wf)
    # The reference normalises fSub in place inside the A branch, so the B equality test sees
    # the normalised F window whenever the A windows differed.
    eq_b = np.all(wb == np.where(eq_a, wf, fn), 0)
    total = float(np.count_nonzero(eq_a) + np.count_nonzero(eq_b))
    for eq, xn, cx in ((eq_a, an, ca), (eq_b, bn, cb)):
        m = ~eq
        if m.all():
            total += float(_fmi_pair(xn, cx, fn, cf).sum())
        elif m.any():
            total += float(_fmi_pair(xn[:, m], cx[m], fn[:, m], cf[m]).sum())
    return total / 2


def fmi(a: np.ndarray, b: np.ndarray, f: np.ndarray, convention: str = "pixel") -> float:
    """Feature mutual information (Haghighat fast-FMI, 3x3 windows), mean of the two pairs.

    Conventions:
        ``pixel`` (feature 'none', raw pixels): the "FMI_pixel" of the issue.
        ``dct``: orthonormal 2-D DCT-II of the whole image (MATLAB ``dct2``) as features.
        (MATLAB's default 'edge' and 'wavelet' features are not provided.)

    Returns:
        Mean over all valid 3x3 windows of (FMI_AF + FMI_BF)/2, range 0..1.
    """
    a, b, f = as_triplet(a, b, f)
    if convention in ("pixel", "none"):
        fa, fb, ff = a, b, f
    elif convention == "dct":
        fa, fb, ff = (dctn(x, type=2, norm="ortho") for x in (a, b, f))
    else:
        raise ValueError(f"unknown FMI convention {convention!r}")
    if min(a.shape) < 3:
        return degenerate("FMI", "an image needs at least 3 rows and 3 columns")
    wa, wb, wf = _windows(fa), _windows(fb), _windows(ff)
    n = wa.shape[1]
    total = 0.0
    for s in range(0, n, _CHUNK):
        total += _fmi_chunk(wa[:, s:s + _CHUNK], wb[:, s:s + _CHUNK], wf[:, s:s + _CHUNK])
    return total / n
