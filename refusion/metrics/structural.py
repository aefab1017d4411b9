"""Structural metrics: SSIM, MS-SSIM and Q_Y (CONVENTIONS.md sections SSIM, MS-SSIM, Q_Y).

Each source is compared with the fused image and the two results are combined by a **sum** or a
**mean**, as the convention names say.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._common import as_triplet, degenerate, filter_same, filter_valid, gauss1d

_MS_WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])


def _torch_gauss1d(size: int, sigma: float) -> np.ndarray:
    # pytorch-msssim builds its window in float32 (torch's exp) before casting to the input
    # dtype; numpy's float32 exp differs by an ulp, so use torch itself.
    import torch

    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).double().numpy()


def _ssim_maps(x, y, filt, c1, c2, cov_norm=1.0):
    """SSIM and contrast-structure maps for one pair with the local filter ``filt``."""
    mx, my = filt(x), filt(y)
    vx = cov_norm * (filt(x * x) - mx * mx)
    vy = cov_norm * (filt(y * y) - my * my)
    vxy = cov_norm * (filt(x * y) - mx * my)
    cs = (2 * vxy + c2) / (vx + vy + c2)
    ssim = ((2 * mx * my + c1) / (mx * mx + my * my + c1)) * cs
    return ssim, cs


def _ssim_skimage(x, y, data_range: float) -> float:
    # skimage structural_similarity defaults: 7x7 uniform window, sample covariance,
    # scipy 'reflect' borders, a (7-1)//2 = 3 pixel border cropped before the mean.
    def filt(z):
        return ndimage.uniform_filter(z, size=7, mode="reflect")

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s, _ = _ssim_maps(x, y, filt, c1, c2, cov_norm=49 / 48)
    return float(s[3:-3, 3:-3].mean())


def _ssim_gauss_valid(x, y, w1d: np.ndarray, data_range: float = 255.0) -> tuple[float, float]:
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s, cs = _ssim_maps(x, y, lambda z: filter_valid(z, w1d), c1, c2)
    return float(s.mean()), float(cs.mean())


def _ssim_matlab_emul(x, y) -> float:
    # MATLAB ssim on double 0..255 input: DynamicRange 1 (C1 = 1e-4, C2 = 9e-4), 11x11 Gaussian
    # sigma 1.5, full-size map with replicate borders.
    w = gauss1d(11, 1.5)
    s, _ = _ssim_maps(x, y, lambda z: filter_same(z, w, "nearest"), 1e-4, 9e-4)
    return float(s.mean())


def ssim(a: np.ndarray, b: np.ndarray, f: np.ndarray, convention: str = "cddfuse") -> float:
    """SSIM of each source with F, combined by sum or mean.

    Conventions:
        ``cddfuse``: **sum**, skimage 0.19 as run by CDDFuse: 7x7 uniform window, sample
            covariance, reflect borders, 3 px crop, data_range 2 (C1 = 4e-4, C2 = 3.6e-3).
        ``skimage_dr255_sum``: the same with data_range 255.
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
        dr = 2.0 if convention == "cddfuse" else 255.0
        return _ssim_skimage(f, a, dr) + _ssim_skimage(f, b, dr)
    if convention in ("vifb", "pytorch_msssim_sum"):
        if min(a.shape) < 11:
            return degenerate("SSIM", "images smaller than the 11x11 window")
        w = gauss1d(11, 1.5) if convention == "vifb" else _torch_gauss1d(11, 1.5)
        return _ssim_gauss_valid(a, f, w)[0] + _ssim_gauss_valid(b, f, w)[0]
    if convention == "tang_matlab_ssim_emul":
        return 0.5 * _ssim_matlab_emul(f, a) + 0.5 * _ssim_matlab_emul(f, b)
    raise ValueError(f"unknown SSIM convention {convention!r}")


def _avg_pool_torch(x: np.ndarray) -> np.ndarray:
    # F.avg_pool2d(kernel 2, padding = size % 2): zero padding on both sides, counted in the
    # average (count_include_pad=True).
    ph, pw = x.shape[0] % 2, x.shape[1] % 2
    xp = np.pad(x, ((ph, ph), (pw, pw)))
    oh, ow = (xp.shape[0] - 2) // 2 + 1, (xp.shape[1] - 2) // 2 + 1
    return (xp[0:2 * oh:2, 0:2 * ow:2] + xp[1:2 * oh:2, 0:2 * ow:2]
            + xp[0:2 * oh:2, 1:2 * ow:2] + xp[1:2 * oh:2, 1:2 * ow:2]) / 4


def _ms_ssim_torch(x: np.ndarray, y: np.ndarray) -> float:
    w = _torch_gauss1d(11, 1.5)
    mcs = []
    for level in range(5):
        s, cs = _ssim_gauss_valid(x, y, w)
        if level < 4:
            mcs.append(max(cs, 0.0))
            x, y = _avg_pool_torch(x), _avg_pool_torch(y)
    vals = np.array(mcs + [max(s, 0.0)])
    return float(np.prod(vals ** _MS_WEIGHTS))


def _ms_ssim_wang(x: np.ndarray, y: np.ndarray) -> float | None:
    w = gauss1d(11, 1.5)
    box = np.array([0.5, 0.5])
    mcs = []
    for level in range(5):
        s, cs = _ssim_gauss_valid(x, y, w)
        if level < 4:
            mcs.append(cs)
            m, n = x.shape
            # filter2(ones(2)/4, im, 'valid') then every other sample from the first.
            x = ndimage.correlate1d(ndimage.correlate1d(x, box, axis=0, origin=-1), box,
                                    axis=1, origin=-1)[0:m - 1:2, 0:n - 1:2]
            y = ndimage.correlate1d(ndimage.correlate1d(y, box, axis=0, origin=-1), box,
                                    axis=1, origin=-1)[0:m - 1:2, 0:n - 1:2]
    mcs_arr = np.array(mcs)
    if np.any(mcs_arr < 0):
        return None  # a negative base to a fractional power is complex in MATLAB
    # As released: the last level's SSIM enters without its weight.
    return float(np.prod(mcs_arr ** _MS_WEIGHTS[:4]) * s)


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
        va, vb = _ms_ssim_torch(a, f), _ms_ssim_torch(b, f)
    else:
        if min(a.shape) < 176:
            return degenerate("MS_SSIM", "Wang's MS-SSIM needs images of at least 176 px")
        va, vb = _ms_ssim_wang(a, f), _ms_ssim_wang(b, f)
        if va is None or vb is None:
            return degenerate("MS_SSIM", "a negative contrast-structure term (complex power)")
    return va + vb if comb == "sum" else (va + vb) / 2


def _ssim_yang(x, y, w1d):
    c = 2e-16
    mx, my = filter_valid(x, w1d), filter_valid(y, w1d)
    vx = filter_valid(x * x, w1d) - mx * mx
    vy = filter_valid(y * y, w1d) - my * my
    vxy = filter_valid(x * y, w1d) - mx * my
    with np.errstate(divide="ignore", invalid="ignore"):
        s = ((2 * mx * my + c) * (2 * vxy + c)) / ((mx * mx + my * my + c) * (vx + vy + c))
    return s, vx, vy


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
    s_ab, va, vb = _ssim_yang(a, b, w)
    s_af, _, _ = _ssim_yang(a, f, w)
    s_bf, _, _ = _ssim_yang(b, f, w)
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
