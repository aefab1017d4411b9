"""FMI: the vectorised implementation against a literal loop-for-loop port of the reference
(MEFB ``metricsFMI`` / Tang ``analysis_fmi``, sequential sums as Octave does them)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from refusion.metrics import fmi

# formulas are checked on small hand-made values, often off the 0..255 scale on purpose
pytestmark = pytest.mark.filterwarnings("ignore::refusion.metrics.InputRangeWarning")


def _seqsum(v):
    s = 0.0
    for x in v:
        s += x
    return s


def _log2c_real(x):
    # real(-x*log2(x)) for possibly negative x (MATLAB returns a complex log there)
    return -x * math.log2(abs(x))


def _pair(xs, fs):
    """xs, fs: 9-lists (column-major window). Returns (fmi, fs_after) as the reference does."""
    if all(x == y for x, y in zip(xs, fs)):
        return 1.0, fs
    def norm(v):
        mx, mn = max(v), min(v)
        return [1.0] * 9 if mx == mn else [(x - mn) / (mx - mn) for x in v]
    xs, fs = norm(xs), norm(fs)
    sx, sf = _seqsum(xs), _seqsum(fs)
    xp = [x / sx for x in xs]
    fp = [x / sf for x in fs]
    xc, fc = [xp[0]], [fp[0]]
    for i in range(1, 9):
        xc.append(xp[i] + xc[i - 1])
        fc.append(fp[i] + fc[i - 1])
    mx_, mf_ = _seqsum(xp) / 9, _seqsum(fp) / 9
    xt = [x - mx_ for x in xp]
    ft = [x - mf_ for x in fp]
    num = _seqsum([a * b for a, b in zip(xt, ft)])
    den = math.sqrt(_seqsum([a * a for a in xt]) * _seqsum([b * b for b in ft]))
    c = 0.0 if num == 0 else num / den
    ex = ex2 = ef = ef2 = 0.0
    for i in range(1, 10):
        ex += i * xp[i - 1]
        ex2 += i * i * xp[i - 1]
        ef += i * fp[i - 1]
        ef2 += i * i * fp[i - 1]
    sdx = math.sqrt(max(ex2 - ex * ex, 0.0))
    sdf = math.sqrt(max(ef2 - ef * ef, 0.0))
    H = 0.0
    if c >= 0:
        up = lambda u, v: 0.5 * (u + v - abs(u - v))  # noqa: E731
        if c == 0 or sdx == 0 or sdf == 0:
            w = 0.0
        else:
            cov = 0.0
            for i in range(9):
                for j in range(9):
                    cov += up(fc[i], xc[j]) - fc[i] * xc[j]
            w = c / (cov / (sdf * sdx))
        cop = up
    else:
        lo = lambda u, v: 0.5 * (u + v - 1 + abs(u + v - 1))  # noqa: E731
        if sdx == 0 or sdf == 0:
            w = 0.0
        else:
            cov = 0.0
            for i in range(9):
                for j in range(9):
                    cov += lo(fc[i], xc[j]) - fc[i] * xc[j]
            w = c / (cov / (sdf * sdx))
        cop = lo
    for i in range(9):
        for j in range(9):
            m = cop(fc[i], xc[j])
            if i > 0:
                m -= cop(fc[i - 1], xc[j])
            if j > 0:
                m -= cop(fc[i], xc[j - 1])
            if i > 0 and j > 0:
                m += cop(fc[i - 1], xc[j - 1])
            jp = w * m + (1 - w) * fp[i] * xp[j]
            if jp != 0:
                H += _log2c_real(jp)
    hx = _seqsum([-p * math.log2(p) for p in xp if p != 0])
    hf = _seqsum([-p * math.log2(p) for p in fp if p != 0])
    mi = hx + hf - H
    return (0.0 if mi == 0 else 2 * mi / (hx + hf)), fs


def fmi_reference(a, b, f) -> float:
    a, b, f = (np.asarray(x, dtype=np.float64) for x in (a, b, f))
    m, n = a.shape
    vals = []
    for p in range(1, m - 1):
        for q in range(1, n - 1):
            wa = list(a[p - 1:p + 2, q - 1:q + 2].T.ravel())
            wb = list(b[p - 1:p + 2, q - 1:q + 2].T.ravel())
            wf = list(f[p - 1:p + 2, q - 1:q + 2].T.ravel())
            faf, wf2 = _pair(wa, wf)
            fbf, _ = _pair(wb, wf2)
            vals.append((faf + fbf) / 2)
    return float(np.mean(vals))


def _cases():
    rng = np.random.default_rng(1)
    for trial in range(6):
        a = rng.integers(0, 256, (10, 12)).astype(float)
        b = rng.integers(0, 256, (10, 12)).astype(float)
        f = np.round(0.5 * a + 0.5 * b + rng.normal(0, 10, a.shape)).clip(0, 255)
        if trial == 1:  # flat windows, equal and different levels
            a[:5, :6], f[:5, :6], b[:4, :4] = 7, 9, 3
        if trial == 2:  # few grey levels: ties in the CDFs
            a, b, f = np.round(a / 64) * 64, np.round(b / 100) * 100, np.round(f / 50) * 50
        if trial == 3:
            f = a.copy()
        if trial == 4:  # B all ones: the in-place-normalised F quirk
            b[:] = 1
            f[:, :6] = 100
        if trial == 5:
            a, b, f = np.round(a / 128), np.round(b / 128), np.round(f / 128)
        yield trial, a, b, f


@pytest.mark.parametrize("trial,a,b,f", list(_cases()))
def test_fmi_matches_literal_port(trial, a, b, f):
    assert fmi(a, b, f) == pytest.approx(fmi_reference(a, b, f), rel=1e-10, abs=1e-12)


def test_fmi_dct_matches_literal_port():
    from scipy.fft import dctn

    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 256, (2, 9, 11)).astype(float)
    f = np.round((a + b) / 2)
    ref = fmi_reference(*(dctn(x, norm="ortho") for x in (a, b, f)))
    assert fmi(a, b, f, "dct") == pytest.approx(ref, rel=1e-10)


def test_fmi_identical_images_is_one():
    a = np.random.default_rng(0).integers(0, 256, (8, 8)).astype(float)
    assert fmi(a, a, a) == 1.0
    assert math.isfinite(fmi(a, a.T.copy(), a))
