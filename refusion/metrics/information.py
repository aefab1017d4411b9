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
from .conventions import accepts_aliases


@accepts_aliases("EN")
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


@accepts_aliases("MI")
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
# coupling. The lower bound is the upper one with the X cells in reverse order, and the upper
# one is non-zero only on a monotone staircase: merging the two sorted CDFs P (of F) and Q (of
# X) cuts [0, 1] into 18 segments, each inside one cell. So the 81-cell entropy is the closed
# form of the product part plus a correction on those 18 cells, exact up to rounding.
#
# The merge needs no sort. The segment ending at P_i lies in column #{j: Q_j < P_i} and starts
# at the larger of P_(i-1) and the Q value before it; symmetrically for Q_j, whose row is
# #{i: P_i <= Q_j} (ties put P first, so a Q segment tied with a P value has zero mass). The
# segment past min(P_8, Q_8) lies outside the 9x9 grid (column or row 9): the reference leaves
# it out; here it gets a zero product term and keeps its few-ulp mass, a ~1e-16 effect.
# --------------------------------------------------------------------------------------------

_WINDOWS_PER_CHUNK = 2048  # per chunk (whole image rows): the work arrays stay in L2 cache
_IDX1 = np.arange(1, 10, dtype=np.float64)[:, None]
_MOMENTS = np.stack([np.arange(1, 10.0), np.arange(1, 10.0) ** 2])
_TINY = 5e-324  # log2 of it is finite, so t * log2(max(t, _TINY)) is 0 at t = 0

# Arrays are laid out (cells, windows): reductions over the 9 cells then run along long
# contiguous rows, which is several times faster in numpy than reducing short trailing axes.


def _cumsum0(x: np.ndarray) -> np.ndarray:
    # Row-by-row adds: numpy's cumsum over a short leading axis is several times slower.
    out = np.empty_like(x)
    out[0] = x[0]
    for i in range(1, len(x)):
        np.add(out[i - 1], x[i], out=out[i])
    return out


def _band(x: np.ndarray, r0: int, r1: int) -> np.ndarray:
    """The 3x3 windows of output rows r0..r1-1 as (9, n), cells in MATLAB ``sub(:)`` order."""
    n = x.shape[1] - 2
    return np.stack([x[r0 + r:r1 + r, c:c + n] for c in range(3) for r in range(3)]
                    ).reshape(9, -1)


class _Side:
    """One image's windows as 9-point PDFs: the PDF, its CDF, moments and entropy terms.

    The reference min-max normalises a window and divides by the sum; the span cancels, so the
    PDF is (w - min) / sum(w - min) up to rounding. A constant window becomes all ones there,
    i.e. the uniform PDF.
    """

    def __init__(self, w: np.ndarray):
        mn, mx = w.min(0), w.max(0)
        self.mn, self.mx = mn, mx
        self.const = mx == mn
        d = w - mn
        d += self.const
        p = d / d.sum(0)
        self.p = p
        self.s = p.sum(0)
        self.cdf = _cumsum0(p)
        self.t = p - self.s / 9
        self.tt = np.einsum("ij,ij->j", self.t, self.t)
        self.e, e2 = _MOMENTS @ p
        self.sd = np.sqrt(np.maximum(e2 - self.e * self.e, 0.0))
        lp = np.maximum(p, _TINY)
        np.log2(lp, out=lp)
        self.plogp = np.einsum("ij,ij->j", p, lp)
        self._rcdf: np.ndarray | None = None

    def reversed_cdf(self) -> np.ndarray:
        if self._rcdf is None:
            self._rcdf = _cumsum0(self.p[::-1])
        return self._rcdf


class _Merge:
    """Buffers for the staircase of F against one source; F's halves are filled once.

    Segments 0..8 end at P_i (F's CDF), 9..17 at Q_j (the source's). ``cdf`` and ``prob`` stack
    the source's then F's values so that one ``take`` serves both halves: rows 0..9 of ``cdf``
    are (0, Q_0..Q_8) and rows 10..19 (0, P_0..P_8); ``prob`` rows are (q_0..q_8, 0, p_0..p_8, 0).
    """

    def __init__(self, fs: _Side):
        n = fs.p.shape[1]
        self.fs, self.n, self.col = fs, n, np.arange(n)
        self.cdf = np.empty((20, n))
        self.cdf[0] = self.cdf[10] = 0.0
        self.cdf[11:] = fs.cdf
        self.prob = np.empty((20, n))
        self.prob[9] = self.prob[19] = 0.0
        self.prob[10:19] = fs.p
        self.lt = np.empty((9, 9, n), dtype=bool)
        self.idx = np.empty((18, n), dtype=np.intp)
        self.wgt = np.empty((18, n))
        self.mass = np.empty((18, n))
        self.pq = np.empty((18, n))
        self.buf = np.empty((18, n))


def _fmi_pair(mg: _Merge, xs: _Side) -> np.ndarray:
    """Normalised feature MI, per window, between F (``mg.fs``) and the source ``xs``."""
    fs, n = mg.fs, mg.n
    num = np.einsum("ij,ij->j", xs.t, fs.t)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(num == 0, 0.0, num / np.sqrt(xs.tt * fs.tt))
    # A constant window becomes the uniform PDF. The reference's mean() of nine 1/9 (summed in
    # order) is one ulp off 1/9, so two constant windows correlate to exactly 1 and one constant
    # window to ~1e-17, where exact arithmetic would give 0/0 -> 0. Reproduce the reference.
    c = np.where(xs.const & fs.const, 1.0, np.where(xs.const | fs.const, 0.0, c))
    pos = c >= 0
    # The source's side of the buffers: its PDF q and CDF Q, cells reversed where c < 0.
    q, qcdf = mg.prob[:9], mg.cdf[1:10]
    np.copyto(q, xs.p)
    np.copyto(qcdf, xs.cdf)
    qmean = xs.e
    if not pos.all():
        neg = ~pos
        np.copyto(q, xs.p[::-1], where=neg)
        np.copyto(qcdf, xs.reversed_cdf(), where=neg)
        qmean = np.where(pos, xs.e, 10.0 - xs.e)

    lt = mg.lt
    for i in range(9):
        np.less(qcdf, fs.cdf[i], out=lt[i])  # lt[i, j] = Q_j < P_i
    lt8 = lt.view(np.uint8)
    col_p = np.add.reduce(lt8, axis=1, dtype=np.uint8)  # column of P_i's segment
    n_le = np.add.reduce(lt8, axis=0, dtype=np.uint8)  # 9 - row of Q_j's segment
    idx, wgt = mg.idx, mg.wgt
    idx[:9] = col_p
    np.subtract(19, n_le, out=idx[9:], dtype=np.intp, casting="unsafe")
    # (row + 1) * (column + 1) of each segment's cell, for the coupling's covariance.
    np.add(col_p, 1, out=wgt[:9], dtype=np.float64, casting="unsafe")
    np.subtract(10, n_le, out=wgt[9:], dtype=np.float64, casting="unsafe")
    wgt[:9] *= _IDX1
    wgt[9:] *= _IDX1
    idx *= n
    idx += mg.col

    mass = np.take(mg.cdf, idx, out=mg.mass)  # the other CDF's value below the segment's end
    np.maximum(mass[:9], mg.cdf[10:19], out=mass[:9])
    np.maximum(mass[9:], mg.cdf[0:9], out=mass[9:])
    np.subtract(fs.cdf, mass[:9], out=mass[:9])
    np.subtract(qcdf, mass[9:], out=mass[9:])
    pq = np.take(mg.prob, idx, out=mg.pq)  # product-PDF value of the segment's cell
    pq[:9] *= fs.p
    pq[9:] *= q

    # Hoeffding: the coupling's covariance over the index grid (covUp / covLo of the
    # reference); reversing X's cells negates it.
    cov = np.einsum("ij,ij->j", mass, wgt) - fs.e * qmean
    cov = np.where(pos, cov, -cov)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where((c == 0) | (xs.sd == 0) | (fs.sd == 0), 0.0, c * (fs.sd * xs.sd) / cov)
    alpha = 1.0 - w

    buf = mg.buf
    spq = pq.sum(0)
    np.maximum(pq, _TINY, out=buf)
    np.log2(buf, out=buf)
    xpq = np.einsum("ij,ij->j", pq, buf)  # sum of pq log2 pq over the staircase
    joint = pq
    joint *= alpha
    mass *= w
    joint += mass  # the joint PDF on the staircase cells
    np.abs(joint, out=buf)  # MATLAB keeps the real part of log2 of a negative value
    np.maximum(buf, _TINY, out=buf)
    np.log2(buf, out=buf)
    xjoint = np.einsum("ij,ij->j", joint, buf)

    la = np.log2(np.where(alpha == 0, 1.0, np.abs(alpha)))
    # sum over all 81 cells of xlog2(alpha p_i q_j), then swap the staircase cells' terms.
    prod_part = alpha * la * xs.s * fs.s + alpha * (fs.plogp * xs.s + xs.plogp * fs.s)
    stair = xjoint - alpha * (xpq + la * spq)
    hj = -(prod_part + stair)
    hx, hf = -xs.plogp, -fs.plogp
    mi = hx + hf - hj
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mi == 0, 0.0, 2 * mi / (hx + hf))


def _fmi_band(fa: np.ndarray, fb: np.ndarray, ff: np.ndarray, r0: int, r1: int) -> float:
    """Sum over the windows of output rows r0..r1-1 of (FMI_AF + FMI_BF) / 2."""
    wa, wb, wf = _band(fa, r0, r1), _band(fb, r0, r1), _band(ff, r0, r1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sa, sb, sf = _Side(wa), _Side(wb), _Side(wf)
        eq_a = np.all(wa == wf, 0)
        # The reference normalises fSub in place inside the A branch, so the B equality test
        # sees the normalised F window (values in [0, 1]) whenever the A windows differed.
        eq_b = eq_a & np.all(wb == wf, 0)
        cand = ~eq_a & (sb.mn >= 0) & (sb.mx <= 1)
        if cand.any():
            span = np.where(sf.const, 1.0, sf.mx - sf.mn)[cand]
            fn = np.where(sf.const[cand], 1.0, (wf[:, cand] - sf.mn[cand]) / span)
            eq_b[cand] = np.all(wb[:, cand] == fn, 0)
        mg = _Merge(sf)
        va = _fmi_pair(mg, sa)
        vb = _fmi_pair(mg, sb)
    return float(np.where(eq_a, 1.0, va).sum() + np.where(eq_b, 1.0, vb).sum()) / 2


@accepts_aliases("FMI")
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
    rows, cols = a.shape[0] - 2, a.shape[1] - 2
    step = max(1, _WINDOWS_PER_CHUNK // cols)
    total = sum(_fmi_band(fa, fb, ff, r0, min(rows, r0 + step)) for r0 in range(0, rows, step))
    return total / (rows * cols) + 0.0  # never -0.0
