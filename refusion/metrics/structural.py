"""Structural metrics: SSIM, MS-SSIM and Q_Y (CONVENTIONS.md sections SSIM, MS-SSIM, Q_Y).

Each source is compared with the fused image and the two results are combined by a **sum** or a
**mean**, as the convention names say.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from ._common import as_triplet, degenerate, filter_same, filter_valid, gauss1d
from .conventions import accepts_aliases

_MS_WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])


def _torch_gauss1d(size: int, sigma: float) -> np.ndarray:
    # pytorch-msssim builds its window in float32 (torch's exp) before casting to the input
    # dtype; numpy's float32 exp differs by an ulp, so use torch itself.
    import torch

    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).double().numpy()


def _ssim_vs_fused(srcs, f, filt, c1, c2, cov_norm=1.0):
    """SSIM and contrast-structure maps of each source against F with the local filter
    ``filt``; F's local mean and variance are computed once for all sources."""
    mf = filt(f)
    vf = cov_norm * (filt(f * f) - mf * mf)
    out = []
    for x in srcs:
        mx = filt(x)
        vx = cov_norm * (filt(x * x) - mx * mx)
        vxf = cov_norm * (filt(x * f) - mx * mf)
        cs = (2 * vxf + c2) / (vx + vf + c2)
        out.append((((2 * mx * mf + c1) / (mx * mx + mf * mf + c1)) * cs, cs))
    return out


def _box7(z: np.ndarray) -> np.ndarray:
    # scipy.ndimage.uniform_filter(z, 7, mode="reflect") as skimage runs it; OpenCV's box filter
    # with the same border (edge sample repeated) is ~1e-15 relative from it and much faster.
    return cv2.boxFilter(z, -1, (7, 7), borderType=cv2.BORDER_REFLECT)


def _ssim_skimage(srcs, f, data_range: float) -> list[float]:
    # skimage structural_similarity defaults: 7x7 uniform window, sample covariance,
    # 'reflect' borders, a (7-1)//2 = 3 pixel border cropped before the mean.
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    maps = _ssim_vs_fused(srcs, f, _box7, c1, c2, cov_norm=49 / 48)
    return [float(s[3:-3, 3:-3].mean()) for s, _ in maps]


def _ssim_skimage_float32(srcs, f, data_range: float) -> list[float]:
    """skimage ``structural_similarity(F, X, data_range=...)`` for each source X, on float32
    images in skimage's own order of operations, as CDDFuse runs it (its ``image_read_cv2``
    yields float32 and skimage then computes in float32). With data_range 2 the constants are
    ~0, so that rounding of E[x^2] - E[x]^2 moves the result ~1e-5 relative from float64.
    F's filtered moments are shared between the sources (the same values skimage computes).
    """
    def filt(z):
        return ndimage.uniform_filter(z, size=7)

    cov_norm = 49 / 48
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    x = f.astype(np.float32)
    ux, uxx = filt(x), filt(x * x)
    vx = cov_norm * (uxx - ux * ux)
    out = []
    for src in srcs:
        y = src.astype(np.float32)
        uy, uyy, uxy = filt(y), filt(y * y), filt(x * y)
        vy = cov_norm * (uyy - uy * uy)
        vxy = cov_norm * (uxy - ux * uy)
        a1, a2 = 2 * ux * uy + c1, 2 * vxy + c2
        b1, b2 = ux**2 + uy**2 + c1, vx + vy + c2
        s = (a1 * a2) / (b1 * b2)
        out.append(float(s[3:-3, 3:-3].mean(dtype=np.float64)))
    return out


def _ssim_gauss_valid(srcs, f, w1d: np.ndarray,
                      data_range: float = 255.0) -> list[tuple[float, float]]:
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    maps = _ssim_vs_fused(srcs, f, lambda z: filter_valid(z, w1d), c1, c2)
    return [(float(s.mean()), float(cs.mean())) for s, cs in maps]


def _ssim_matlab_emul(srcs, f) -> list[float]:
    # MATLAB ssim on double 0..255 input: DynamicRange 1 (C1 = 1e-4, C2 = 9e-4), 11x11 Gaussian
    # sigma 1.5, full-size map with replicate borders.
    w = gauss1d(11, 1.5)
    maps = _ssim_vs_fused(srcs, f, lambda z: filter_same(z, w, "nearest"), 1e-4, 9e-4)
    return [float(s.mean()) for s, _ in maps]


@accepts_aliases("SSIM")
def ssim(a: np.ndarray, b: np.ndarray, f: np.ndarray, convention: str = "cddfuse") -> float:
    """SSIM of each source with F, combined by sum or mean.

    Conventions:
        ``cddfuse``: **sum**, skimage 0.19 as run by CDDFuse: 7x7 uniform window, sample
            covariance, reflect borders, 3 px crop, data_range 2 (C1 = 4e-4, C2 = 3.6e-3),
            computed in float32 like CDDFuse's float32 images (~1e-5 from float64 here).
        ``skimage_dr255_sum``: the same with data_range 255, in float64.
        ``vifb``: **sum**, Wang's code: 11x11 Gaussian (sigma 1.5), 'valid' map, L = 255.
        ``tang_matlab_ssim_emul``: **mean**, an emulation of MATLAB's built-in ``ssim`` on
            double input (11x11 Gaussian, replicate borders, C1 = 1e-4, C2 = 9e-4).
        ``pytorch_msssim_sum``: **sum**, pytorch-msssim ``ssim`` (separable float32 Gaussian
            window, 'valid', data_range 255).
    """
    a, b, f = as_triplet(a, b, f)
    if convention in ("cddfuse", "skimage_dr255_sum"):
        if min(a.shape) < 7:
            return degenerate("SSIM", "images smaller than the 7x7 window")
        if convention == "cddfuse":
            sa, sb = _ssim_skimage_float32([a, b], f, 2.0)
            return sa + sb
        sa, sb = _ssim_skimage([a, b], f, 255.0)
        return sa + sb
    if convention in ("vifb", "pytorch_msssim_sum"):
        if min(a.shape) < 11:
            return degenerate("SSIM", "images smaller than the 11x11 window")
        w = gauss1d(11, 1.5) if convention == "vifb" else _torch_gauss1d(11, 1.5)
        (sa, _), (sb, _) = _ssim_gauss_valid([a, b], f, w)
        return sa + sb
    if convention == "tang_matlab_ssim_emul":
        sa, sb = _ssim_matlab_emul([a, b], f)
        return 0.5 * sa + 0.5 * sb
    raise ValueError(f"unknown SSIM convention {convention!r}")


def _avg_pool_torch(x: np.ndarray) -> np.ndarray:
    # F.avg_pool2d(kernel 2, padding = size % 2): zero padding on both sides, counted in the
    # average (count_include_pad=True).
    ph, pw = x.shape[0] % 2, x.shape[1] % 2
    xp = np.pad(x, ((ph, ph), (pw, pw)))
    oh, ow = (xp.shape[0] - 2) // 2 + 1, (xp.shape[1] - 2) // 2 + 1
    return (xp[0:2 * oh:2, 0:2 * ow:2] + xp[1:2 * oh:2, 0:2 * ow:2]
            + xp[0:2 * oh:2, 1:2 * ow:2] + xp[1:2 * oh:2, 1:2 * ow:2]) / 4


def _ms_ssim_torch(srcs, f) -> list[float]:
    """pytorch-msssim ``ms_ssim`` of each source against F."""
    w = _torch_gauss1d(11, 1.5)
    mcs: list[list[float]] = [[] for _ in srcs]
    for level in range(5):
        vals = _ssim_gauss_valid(srcs, f, w)
        if level < 4:
            for k, (_, cs) in enumerate(vals):
                mcs[k].append(max(cs, 0.0))
            srcs, f = [_avg_pool_torch(x) for x in srcs], _avg_pool_torch(f)
    return [float(np.prod(np.array(m + [max(s, 0.0)]) ** _MS_WEIGHTS))
            for m, (s, _) in zip(mcs, vals)]


def _wang_down(x: np.ndarray) -> np.ndarray:
    # filter2(ones(2)/4, im, 'valid') then every other sample from the first.
    m, n = x.shape
    box = np.array([0.5, 0.5])
    return ndimage.correlate1d(ndimage.correlate1d(x, box, axis=0, origin=-1), box,
                               axis=1, origin=-1)[0:m - 1:2, 0:n - 1:2]


def _ms_ssim_wang(srcs, f) -> list[float | None]:
    """Wang's ``ssim_mscale_new`` of each source against F (None where MATLAB goes complex)."""
    w = gauss1d(11, 1.5)
    mcs: list[list[float]] = [[] for _ in srcs]
    for level in range(5):
        vals = _ssim_gauss_valid(srcs, f, w)
        if level < 4:
            for k, (_, cs) in enumerate(vals):
                mcs[k].append(cs)
            srcs, f = [_wang_down(x) for x in srcs], _wang_down(f)
    out: list[float | None] = []
    for m, (s, _) in zip(mcs, vals):
        arr = np.array(m)
        # A negative base to a fractional power is complex in MATLAB. As released, the last
        # level's SSIM enters without its weight.
        out.append(None if np.any(arr < 0) else float(np.prod(arr ** _MS_WEIGHTS[:4]) * s))
    return out


@accepts_aliases("MS_SSIM")
def ms_ssim(a: np.ndarray, b: np.ndarray, f: np.ndarray,
            convention: str = "pytorch_msssim_mean") -> float:
    """Multi-scale SSIM (5 scales) of each source with F, combined by sum or mean.

    Conventions:
        ``pytorch_msssim_mean`` / ``pytorch_msssim_sum``: pytorch-msssim 1.0 ``ms_ssim``
            (2x2 average pooling with zero padding of odd sizes, relu, all five weights),
            data_range 255. Needs min(H, W) > 160.
        ``wang_mean`` / ``wang_sum``: Z. Wang's ``ssim_mscale_new.m`` (2x2 'valid' mean then
            every other sample; the last level's SSIM without its exponent, as released).
            Needs min(H, W) >= 176.
    """
    a, b, f = as_triplet(a, b, f)
    kind, _, comb = convention.rpartition("_")
    if kind not in ("pytorch_msssim", "wang") or comb not in ("sum", "mean"):
        raise ValueError(f"unknown MS_SSIM convention {convention!r}")
    if kind == "pytorch_msssim":
        if min(a.shape) <= 160:
            return degenerate("MS_SSIM", "pytorch-msssim needs images larger than 160 px")
        va, vb = _ms_ssim_torch([a, b], f)
    else:
        if min(a.shape) < 176:
            return degenerate("MS_SSIM", "Wang's MS-SSIM needs images of at least 176 px")
        va, vb = _ms_ssim_wang([a, b], f)
        if va is None or vb is None:
            return degenerate("MS_SSIM", "a negative contrast-structure term (complex power)")
    return va + vb if comb == "sum" else (va + vb) / 2


def _flat_windows(x: np.ndarray, size: int) -> np.ndarray:
    """True where the ``size`` x ``size`` window ('valid' positions) of ``x`` is constant."""
    kernel = np.ones((size, size), np.uint8)
    h = size // 2
    lo = cv2.erode(x, kernel, borderType=cv2.BORDER_REPLICATE)
    hi = cv2.dilate(x, kernel, borderType=cv2.BORDER_REPLICATE)
    return (hi == lo)[h : x.shape[0] - h, h : x.shape[1] - h]


def _yang_maps(a, b, f, w1d):
    """Yang's SSIM maps (C1 = C2 = 2e-16) of (A,B), (A,F), (B,F) and the local variances of A
    and B; each image's local mean and variance are filtered once.

    In a window where an image is constant its variance and covariances are 0 exactly: the
    filtered ``E[x^2] - E[x]^2`` is rounding noise there at a non-zero level, and with
    C = 2e-16 that noise, not the image, would decide the window (and whether MEFB drops it).
    """
    c = 2e-16
    mu = {k: filter_valid(x, w1d) for k, x in (("a", a), ("b", b), ("f", f))}
    var = {k: filter_valid(x * x, w1d) - mu[k] * mu[k] for k, x in (("a", a), ("b", b), ("f", f))}
    flat = {k: _flat_windows(x, len(w1d)) for k, x in (("a", a), ("b", b), ("f", f))}
    for k in var:
        var[k][flat[k]] = 0.0

    def smap(kx, x, ky, y):
        mx, my = mu[kx], mu[ky]
        vxy = filter_valid(x * y, w1d) - mx * my
        vxy[flat[kx] | flat[ky]] = 0.0
        return ((2 * mx * my + c) * (2 * vxy + c)) / ((mx * mx + my * my + c)
                                                      * (var[kx] + var[ky] + c))

    with np.errstate(divide="ignore", invalid="ignore"):
        return smap("a", a, "b", b), smap("a", a, "f", f), smap("b", b, "f", f), var["a"], var["b"]


@accepts_aliases("Q_Y")
def q_y(a: np.ndarray, b: np.ndarray, f: np.ndarray, convention: str = "mefb") -> float:
    """Yang et al. (2008) SSIM-based fusion quality Q_Y (7x7 Gaussian, 'valid', C = 2e-16).

    Conventions:
        ``mefb``: MEFB ``metricsQy``: windows where the map is NaN (both sources flat, so the
            weight var_A/(var_A + var_B) is 0/0) are left out of the mean, as MEFB defines.
        ``liu``: Liu's ``metricYang``: any such window makes the result NaN (warning).
    """
    a, b, f = as_triplet(a, b, f)
    if convention not in ("mefb", "liu"):
        raise ValueError(f"unknown Q_Y convention {convention!r}")
    if min(a.shape) < 11:
        return degenerate("Q_Y", "the reference needs images of at least 11x11")
    w = gauss1d(7, 1.5)
    s_ab, s_af, s_bf, va, vb = _yang_maps(a, b, f, w)
    binm = s_ab >= 0.75
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = va / (va + vb)
        q1 = (lam * s_af + (1 - lam) * s_bf) * binm
    q2 = np.fmax(s_af, s_bf) * ~binm  # MATLAB max() ignores NaN
    q = q1 + q2
    if convention == "liu":
        if np.isnan(q).any():
            return degenerate("Q_Y", "windows flat in both sources make the map NaN")
        return float(q.mean())
    q = q[~np.isnan(q)]
    if q.size == 0:
        return degenerate("Q_Y", "every window is flat in both sources")
    return float(q.mean())
