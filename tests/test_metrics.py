"""Metrics: hand-computed values on tiny arrays, invariants, cross-checks against direct
(loop / convolve2d) transcriptions of the reference formulas, and the degenerate policy."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.signal import convolve2d

from refusion import metrics as M
from refusion.metrics import DegenerateInputWarning

# formulas are checked on small hand-made values, often off the 0..255 scale on purpose
pytestmark = pytest.mark.filterwarnings("ignore::refusion.metrics.InputRangeWarning")


@pytest.fixture(scope="module")
def triplet():
    from skimage import data

    rng = np.random.default_rng(0)
    cam = data.camera()[::2, ::2].astype(np.float64)[:200, :232]  # 200x232
    a = np.clip(np.round(255 - cam * 0.8 + rng.normal(0, 6, cam.shape)), 0, 255)
    b = np.clip(np.round(cam + rng.normal(0, 4, cam.shape)), 0, 255)
    f = np.clip(np.round(0.45 * a + 0.55 * b + rng.normal(0, 3, cam.shape)), 0, 255)
    return a, b, f


# ------------------------------------------------------------------ hand-computed values

def test_en_sd_hand_values():
    f = np.array([[0.0, 0.0], [255.0, 255.0]])
    assert M.en(f) == pytest.approx(1.0)
    assert M.sd(f) == pytest.approx(127.5)
    # half-even vs floor quantisation differ on non-integers
    g = np.array([[0.5, 1.5], [2.5, 3.5]])
    assert M.en(g, "cddfuse") == pytest.approx(1.5)  # -> 0, 2, 2, 4
    assert M.en(g, "vifb") == pytest.approx(2.0)  # -> 0, 1, 2, 3
    assert M.en(g, "tang") == pytest.approx(2.0)  # -> 1, 2, 3, 4
    # floor against rounding (half away from zero for tang, half-even for cddfuse)
    g2 = np.array([[0.4, 0.6], [1.4, 1.6]])
    assert M.en(g2, "vifb") == pytest.approx(1.0)  # -> 0, 0, 1, 1
    assert M.en(g2, "tang") == pytest.approx(1.5)  # -> 0, 1, 1, 2
    assert M.en(g2, "cddfuse") == pytest.approx(1.5)  # -> 0, 1, 1, 2


def test_sf_ag_hand_values():
    f = np.array([[0.0, 2.0, 4.0], [0.0, 2.0, 4.0]])
    # horizontal diffs: 4 of 2 -> RF^2 mean 4; vertical diffs 0
    assert M.sf(f) == pytest.approx(2.0)
    assert M.sf(f, "vifb") == pytest.approx(math.sqrt(16 / 6))
    # gradient gx = 2 everywhere, gy = 0 -> g = sqrt(2)
    assert M.ag(f) == pytest.approx(math.sqrt(2))
    assert M.ag(f, "tang") == pytest.approx(6 * math.sqrt(2) / 2)


def test_mi_cc_scd_psnr_mse_hand_values():
    a = np.array([[0.0, 0.0], [255.0, 255.0]])
    b = np.array([[0.0, 255.0], [0.0, 255.0]])
    f = a.copy()
    # I(A;F) = 1 bit, I(B;F) = 0
    assert M.mi(a, b, f) == pytest.approx(math.log(2))
    assert M.mi(a, b, f, "tang") == pytest.approx(1.0)
    assert M.cc(a, b, f) == pytest.approx(0.5)
    # corr(F-B, A) = corr(A-B, A) = 1/sqrt(2); corr(F-A, B) = corr(0, B) is undefined
    with pytest.warns(DegenerateInputWarning):
        assert math.isnan(M.scd(a, b, f))
    mse = (0 + 255.0**2 / 2) / 2
    assert M.mse(a, b, f) == pytest.approx(mse)
    assert M.mse(a, b, f, "tang") == pytest.approx(mse / 65025)
    assert M.psnr(a, b, f) == pytest.approx(10 * math.log10(255.0**2 / mse))
    assert M.psnr(a, b, f, "tang") == pytest.approx(10 * math.log10(65025 / mse) + 48.1308,
                                                    abs=1e-4)
    vifb_mse = (0 + math.sqrt(2 * 255.0**2) / 4) / 2
    assert M.mse(a, b, f, "vifb") == pytest.approx(vifb_mse)
    assert M.psnr(a, b, f, "vifb") == pytest.approx(20 * math.log10(255 / math.sqrt(vifb_mse)))


def test_mi_tang_merges_254_and_255_in_the_joint_histogram():
    a = np.array([[254.0, 255.0], [0.0, 0.0]])
    f = np.array([[254.0, 255.0], [0.0, 0.0]])
    # cddfuse: I(A;F) = H(A) = 1.5 bits; Tang's joint bins 254/255 merge: H(A,F) = 1 bit
    assert M.mi(a, a, f) == pytest.approx(2 * 1.5 * math.log(2))
    assert M.mi(a, a, f, "tang") == pytest.approx(2 * (1.5 + 1.5 - 1.0))


def test_qabf_equal_gradient_branch_gives_gf():
    # A == F everywhere: gA == gF, so G_AF = gF (sic), not 1. A weak step keeps gF well below
    # 1, where the two readings differ (0.18 against 0.97): Q = Q_g(gF) * Q_a(1) per pixel,
    # weighted by gA, with the gradients from scipy's own convolution (zero padding).
    from scipy.ndimage import convolve

    a = np.zeros((5, 5))
    a[:, 2:] = 0.1
    sx = convolve(a, np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]), mode="constant")
    sy = convolve(a, np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]]), mode="constant")
    g = np.hypot(sx, sy)
    q_g = 0.9994 / (1 + np.exp(-15 * (g - 0.5)))
    q_a = 0.9879 / (1 + np.exp(-22 * (1 - 0.8)))
    assert M.qabf(a, a, a) == pytest.approx(float(np.sum(q_g * q_a * g) / np.sum(g)), rel=1e-9)


def test_q_ncie_hand_values():
    # 256 equiprobable levels: every NCC is 8 bits / 8 = 1, R = ones, eigenvalues (3, 0, 0)
    a = np.arange(256, dtype=np.float64).reshape(16, 16)
    assert M.q_ncie(a, a, a) == pytest.approx(1.0)
    # 64 levels: NCC = 6/8 for every pair; eigenvalues 1 + 2 * .75 and 0.25 (twice)
    a = np.arange(64, dtype=np.float64).reshape(8, 8) * 4
    r = np.array([2.5, 0.25, 0.25]) / 3
    assert M.q_ncie(a, a, a) == pytest.approx(1 + np.sum(r * np.log2(r)) / 8)


# ------------------------------------------------------------------ invariants

def test_constant_image_entropy_is_zero():
    assert M.en(np.full((6, 7), 42.0)) == 0.0


@pytest.mark.parametrize("conv", ["cddfuse", "skimage_dr255_sum", "vifb",
                                  "tang_matlab_ssim_emul", "pytorch_msssim_sum"])
def test_ssim_of_image_with_itself(triplet, conv):
    a, _, _ = triplet
    expect = 1.0 if conv == "tang_matlab_ssim_emul" else 2.0  # mean vs sum
    assert M.ssim(a, a, a, conv) == pytest.approx(expect, abs=1e-9)


def test_ms_ssim_of_image_with_itself(triplet):
    a, _, _ = triplet
    assert M.ms_ssim(a, a, a) == pytest.approx(1.0)
    assert M.ms_ssim(a, a, a, "pytorch_msssim_sum") == pytest.approx(2.0)


@pytest.mark.parametrize("name", ["MI", "SCD", "CC", "PSNR", "MSE", "SSIM", "VIF", "Qabf",
                                  "Nabf", "Q_CB", "Q_NCIE", "Q_Y", "FMI", "MS_SSIM"])
def test_symmetric_in_the_sources(triplet, name):
    a, b, f = triplet
    assert M.compute(name, a, b, f) == pytest.approx(M.compute(name, b, a, f), rel=1e-9)


def test_suite_returns_every_metric_finite(triplet):
    vals = M.compute_suite(*triplet)
    assert list(vals) == list(M.METRICS)
    assert all(math.isfinite(v) for v in vals.values())
    assert 0 < vals["Qabf"] < 1 and 0 < vals["Q_CB"] < 1 and 0 < vals["FMI"] < 1


def test_suite_metric_names_are_names_not_letters(triplet):
    # "EN" used to be iterated letter by letter, and [] used to mean every metric
    assert list(M.compute_suite(*triplet, metrics="EN")) == ["EN"]
    assert list(M.compute_suite(*triplet, metrics="en, SD,EN")) == ["EN", "SD"]
    for nothing in ([], "", " , "):
        with pytest.raises(ValueError, match="no metric named"):
            M.compute_suite(*triplet, metrics=nothing)
    with pytest.raises(KeyError, match="unknown metric"):
        M.compute_suite(*triplet, metrics=["EN", "ENN"])


def test_suite_refuses_a_convention_that_changes_nothing(triplet):
    base = M.compute_suite(*triplet, metrics=["SF"])
    assert M.compute_suite(*triplet, metrics=["SF"], convention="SF.vifb") != base
    with pytest.raises(KeyError, match="is for SF, which is not scored"):
        M.compute_suite(*triplet, metrics=["EN"], convention="SF.vifb")
    with pytest.raises(KeyError, match="applies to none of the scored metrics"):
        M.compute_suite(*triplet, metrics=["EN", "SD"], convention="liu")
    with pytest.raises(KeyError, match="unknown convention"):
        M.compute_suite(*triplet, metrics=["EN"], convention="bogus")


# ------------------------------------------------------------------ direct transcriptions

def _fspecial(n, s):
    r = (n - 1) / 2
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    h = np.exp(-(x * x + y * y) / (2 * s * s))
    return h / h.sum()


def _vifp_direct(ref, dist):
    num = den = 0.0
    for scale in range(1, 5):
        n = 2 ** (5 - scale) + 1
        w = _fspecial(n, n / 5)
        if scale > 1:
            ref = convolve2d(ref, w, "valid")[::2, ::2]
            dist = convolve2d(dist, w, "valid")[::2, ::2]
        mu1, mu2 = convolve2d(ref, w, "valid"), convolve2d(dist, w, "valid")
        s1 = np.maximum(convolve2d(ref * ref, w, "valid") - mu1**2, 0)
        s2 = np.maximum(convolve2d(dist * dist, w, "valid") - mu2**2, 0)
        s12 = convolve2d(ref * dist, w, "valid") - mu1 * mu2
        g = s12 / (s1 + 1e-10)
        sv = s2 - g * s12
        g[s1 < 1e-10] = 0
        sv[s1 < 1e-10] = s2[s1 < 1e-10]
        s1[s1 < 1e-10] = 0
        g[s2 < 1e-10] = 0
        sv[s2 < 1e-10] = 0
        sv[g < 0] = s2[g < 0]
        g[g < 0] = 0
        sv[sv <= 1e-10] = 1e-10
        num += np.sum(np.log10(1 + g * g * s1 / (sv + 2)))
        den += np.sum(np.log10(1 + s1 / 2))
    return num / den


def test_vif_matches_direct(triplet):
    a, b, f = triplet
    assert M.vif(a, b, f) == pytest.approx(_vifp_direct(a, f) + _vifp_direct(b, f), rel=1e-9)


def test_ssim_cddfuse_matches_skimage(triplet):
    from skimage.metrics import structural_similarity

    a, b, f = triplet
    # CDDFuse passes float32 images (image_read_cv2), so skimage computes in float32.
    f32, a32, b32 = (x.astype(np.float32) for x in (f, a, b))
    ref = (structural_similarity(f32, a32, data_range=2.0)
           + structural_similarity(f32, b32, data_range=2.0))
    assert M.ssim(a, b, f) == pytest.approx(ref, rel=1e-9)
    ref64 = (structural_similarity(f, a, data_range=2.0)
             + structural_similarity(f, b, data_range=2.0))
    assert M.ssim(a, b, f) == pytest.approx(ref64, rel=1e-3)  # float32 noise only
    ref255 = (structural_similarity(f, a, data_range=255.0)
              + structural_similarity(f, b, data_range=255.0))
    assert M.ssim(a, b, f, "skimage_dr255_sum") == pytest.approx(ref255, rel=1e-9)


def _ssim_wang(x, y, w, c1=(0.01 * 255) ** 2, c2=(0.03 * 255) ** 2):
    mu1, mu2 = convolve2d(x, w, "valid"), convolve2d(y, w, "valid")
    s1 = convolve2d(x * x, w, "valid") - mu1**2
    s2 = convolve2d(y * y, w, "valid") - mu2**2
    s12 = convolve2d(x * y, w, "valid") - mu1 * mu2
    cs = (2 * s12 + c2) / (s1 + s2 + c2)
    return ((2 * mu1 * mu2 + c1) / (mu1**2 + mu2**2 + c1)) * cs, cs, s1, s2


def test_ssim_vifb_matches_direct(triplet):
    a, b, f = triplet
    w = _fspecial(11, 1.5)
    ref = _ssim_wang(a, f, w)[0].mean() + _ssim_wang(b, f, w)[0].mean()
    assert M.ssim(a, b, f, "vifb") == pytest.approx(ref, rel=1e-9)


def test_ms_ssim_wang_matches_direct(triplet):
    _, b, f = triplet
    a = np.round(0.8 * b + 20 + np.random.default_rng(5).normal(0, 8, b.shape))
    a, b, f = (np.pad(x, 8, mode="reflect") for x in (a, b, f))  # >= 176 px

    def wang(x, y):
        w = _fspecial(11, 1.5)
        mcs = []
        for _ in range(5):
            s, cs, _, _ = _ssim_wang(x, y, w)
            mcs.append(cs.mean())
            box = np.ones((2, 2)) / 4
            x = convolve2d(x, box, "valid")[::2, ::2]
            y = convolve2d(y, box, "valid")[::2, ::2]
        return np.prod(np.array(mcs[:4]) ** [0.0448, 0.2856, 0.3001, 0.2363]) * s.mean()

    ref = (wang(a, f) + wang(b, f)) / 2
    assert M.ms_ssim(a, b, f, "wang_mean") == pytest.approx(ref, rel=1e-9)


def test_ms_ssim_pytorch_matches_torch(triplet):
    import torch
    import torch.nn.functional as F

    a, b, f = triplet

    def ms(x, y):
        coords = torch.arange(11, dtype=torch.float) - 5
        g = torch.exp(-(coords**2) / (2 * 1.5**2))
        g = (g / g.sum()).double()
        x = torch.from_numpy(x)[None, None]
        y = torch.from_numpy(y)[None, None]
        wts = torch.tensor([0.0448, 0.2856, 0.3001, 0.2363, 0.1333], dtype=torch.float64)

        def filt(z):
            z = F.conv2d(z, g.view(1, 1, 1, -1))
            return F.conv2d(z, g.view(1, 1, -1, 1))

        vals = []
        for lev in range(5):
            m1, m2 = filt(x), filt(y)
            s1, s2 = filt(x * x) - m1**2, filt(y * y) - m2**2
            s12 = filt(x * y) - m1 * m2
            c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
            cs = (2 * s12 + c2) / (s1 + s2 + c2)
            ss = ((2 * m1 * m2 + c1) / (m1**2 + m2**2 + c1)) * cs
            if lev < 4:
                vals.append(torch.relu(cs.mean()))
                pad = (x.shape[2] % 2, x.shape[3] % 2)
                x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
        vals.append(torch.relu(ss.mean()))
        return float(torch.prod(torch.stack(vals) ** wts))

    a, b, f = (np.pad(x, ((0, 1), (0, 1)), mode="edge") for x in (a, b, f))  # odd sizes
    assert M.ms_ssim(a, b, f) == pytest.approx((ms(a, f) + ms(b, f)) / 2, rel=1e-9)


def _sobel_same(x):
    sx = convolve2d(x, np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]), "same")
    sy = convolve2d(x, np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]]), "same")
    g = np.sqrt(sx**2 + sy**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        al = np.where(sx == 0, np.pi / 2, np.arctan(sy / sx))
    return g, al


def test_qabf_matches_direct(triplet):
    a, b, f = triplet

    def q(ga, aa, gf, af):
        gaf = np.zeros_like(ga)
        m = ga > gf
        gaf[m] = gf[m] / ga[m]
        m = ga == gf
        gaf[m] = gf[m]
        m = ga < gf
        gaf[m] = ga[m] / gf[m]
        aaf = 1 - np.abs(aa - af) / (np.pi / 2)
        return 0.9994 / (1 + np.exp(-15 * (gaf - 0.5))) * 0.9879 / (1 + np.exp(-22 * (aaf - .8)))

    (ga, aa), (gb, ab), (gf, af) = _sobel_same(a), _sobel_same(b), _sobel_same(f)
    ref = np.sum(q(ga, aa, gf, af) * ga + q(gb, ab, gf, af) * gb) / np.sum(ga + gb)
    assert M.qabf(a, b, f) == pytest.approx(ref, rel=1e-12)


def _nabf_loops(fused, s1, s2):
    def sob(x):
        xe = np.pad(x, 1, mode="reflect")
        vt = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 8
        ht = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]]) / 8
        p, q = x.shape
        gv, gh = np.zeros((p, q)), np.zeros((p, q))
        for i in range(p):
            for j in range(q):
                gv[i, j] = np.sum(xe[i:i + 3, j:j + 3] * vt)
                gh[i, j] = np.sum(xe[i:i + 3, j:j + 3] * ht)
        return gv, gh

    out = []
    for x in (s1, s2, fused):
        gv, gh = sob(x)
        g = np.sqrt(gv**2 + gh**2)
        al = np.zeros_like(g)
        for i, j in np.ndindex(g.shape):
            if not (gv[i, j] == 0 and gh[i, j] == 0):
                al[i, j] = math.atan(gv[i, j] / gh[i, j]) if gh[i, j] != 0 else \
                    math.copysign(math.pi / 2, gv[i, j])
        out.append((g, al))
    (ga, aa), (gb, ab), (gf, af) = out
    num = den = 0.0
    for i, j in np.ndindex(ga.shape):
        def qq(gx, ax, g=gf[i, j], a=af[i, j]):
            if gx == 0 or g == 0:
                r = 0.0
            elif gx > g:
                r = g / gx
            else:
                r = gx / g
            aaf = abs(abs(ax - a) - math.pi / 2) * 2 / math.pi
            return math.sqrt(0.9999 / (1 + math.exp(-19 * (r - 0.5)))
                             * 0.9995 / (1 + math.exp(-22 * (aaf - 0.5))))
        wa = ga[i, j] ** 1.5 if ga[i, j] >= 2 else 0.001
        wb = gb[i, j] ** 1.5 if gb[i, j] >= 2 else 0.001
        den += wa + wb
        if gf[i, j] > ga[i, j] and gf[i, j] > gb[i, j]:
            num += (1 - qq(ga[i, j], aa[i, j])) * wa + (1 - qq(gb[i, j], ab[i, j])) * wb
    return num / den


def test_nabf_matches_loops(triplet):
    a, b, f = (x[40:64, 50:80] for x in triplet)
    f = f.copy()
    f[5:9, 5:9] += 40  # an artefact, so that gF > gA, gB somewhere
    assert M.nabf(a, b, f) == pytest.approx(_nabf_loops(f, a, b), rel=1e-10)
    assert M.nabf(a, b, f, "tang_as_called") == pytest.approx(_nabf_loops(a, b, f), rel=1e-10)
    assert M.nabf(a, b, f) != pytest.approx(M.nabf(a, b, f, "tang_as_called"))


def test_q_y_matches_direct(triplet):
    a, b, f = triplet
    w = _fspecial(7, 1.5)
    c = 2e-16
    s_ab, va, vb = (lambda r: (r[0], r[2], r[3]))(_ssim_wang(a, b, w, c, c))
    s_af = _ssim_wang(a, f, w, c, c)[0]
    s_bf = _ssim_wang(b, f, w, c, c)[0]
    binm = s_ab >= 0.75
    lam = va / (va + vb)
    ref = ((lam * s_af + (1 - lam) * s_bf) * binm + np.maximum(s_af, s_bf) * ~binm).mean()
    assert M.q_y(a, b, f) == pytest.approx(ref, rel=1e-9)
    assert M.q_y(a, b, f, "liu") == pytest.approx(ref, rel=1e-9)


def _normalize1(x):
    r = (x - x.min()) / (x.max() - x.min()) * 255
    return np.floor(r + 0.5)


def _qcb_direct(a, b, f):
    ims = [_normalize1(x) for x in (a, b, f)]
    m, n = a.shape
    u = np.array([(k - n // 2) * 2 / n for k in range(n)]) * n / 30
    v = np.array([(k - m // 2) * 2 / m for k in range(m)]) * m / 30
    uu, vv = np.meshgrid(u, v)
    r = np.sqrt(uu**2 + vv**2)
    sd = np.exp(-(r / 15.3870) ** 2) - 0.7622 * np.exp(-(r / 1.3456) ** 2)
    x, y = np.meshgrid(np.arange(-15, 16), np.arange(-15, 16))

    def gk(s):
        return np.exp(-(x * x + y * y) / (2 * s * s)) / (2 * np.pi * s * s)

    cp = []
    for im in ims:
        fi = np.fft.ifft2(np.fft.ifftshift(np.fft.fftshift(np.fft.fft2(im)) * sd))
        c = np.abs(convolve2d(fi, gk(2), "same") / convolve2d(fi, gk(4), "same") - 1)
        cp.append(c**3 / (c**2 + 1e-4))
    c1, c2, cf = cp
    q1 = np.where(c1 < cf, c1 / cf, cf / c1)
    q2 = np.where(c2 < cf, c2 / cf, cf / c2)
    lam1 = c1**2 / (c1**2 + c2**2)
    return float(np.mean(lam1 * q1 + (1 - lam1) * q2))


def test_q_cb_matches_direct():
    from skimage import data

    cam = data.camera()[100:164:1, 150:230].astype(np.float64)  # 64x80, even/odd safe
    rng = np.random.default_rng(2)
    a = np.clip(np.round(255 - cam + rng.normal(0, 5, cam.shape)), 0, 255)
    b = cam
    f = np.round(0.5 * a + 0.5 * b)
    assert M.q_cb(a, b, f) == pytest.approx(_qcb_direct(a, b, f), rel=1e-10)
    odd = (a[:63, :79], b[:63, :79], f[:63, :79])
    assert M.q_cb(*odd) == pytest.approx(_qcb_direct(*odd), rel=1e-10)


# ------------------------------------------------------------------ degenerate-input policy

@pytest.mark.parametrize("name", ["CC", "SCD", "VIF", "Q_CB", "Q_NCIE"])
def test_constant_source_gives_nan_with_warning(triplet, name):
    a, _, f = triplet
    b = np.full_like(a, 100.0)
    with pytest.warns(DegenerateInputWarning, match=name):
        assert math.isnan(M.compute(name, a, b, f))


@pytest.mark.parametrize("level", [0.0, 37.0, 100.0, 255.0])
def test_flat_windows_in_both_sources(level):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 40)).astype(float)
    b = rng.integers(0, 256, (40, 40)).astype(float)
    a[:20, :20] = level
    b[:20, :20] = level
    f = np.round((a + b) / 2)
    with pytest.warns(DegenerateInputWarning, match="Q_Y"):
        assert math.isnan(M.q_y(a, b, f, "liu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = M.q_y(a, b, f, "mefb")
    # the flat windows are dropped at any level (their variances are exactly 0, not rounding
    # noise), so the score is that of the other windows, computed directly
    w = _fspecial(7, 1.5)
    c = 2e-16
    s_ab, va, vb = (lambda r: (r[0], r[2], r[3]))(_ssim_wang(a, b, w, c, c))
    s_af, s_bf = _ssim_wang(a, f, w, c, c)[0], _ssim_wang(b, f, w, c, c)[0]
    keep = np.ones_like(s_ab, bool)
    keep[: 20 - 6, : 20 - 6] = False  # the 7x7 windows inside the flat square
    binm = s_ab >= 0.75
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = va / (va + vb)
    q = (lam * s_af + (1 - lam) * s_bf) * binm + np.maximum(s_af, s_bf) * ~binm
    assert got == pytest.approx(q[keep].mean(), rel=1e-9)


@pytest.mark.parametrize("level", [0.0, 37.0, 255.0])
@pytest.mark.parametrize("convention", ["mefb", "liu"])
def test_q_y_of_constant_sources_is_nan_at_any_level(level, convention):
    # flat everywhere in both sources: NaN as at level 0, not the 1.0 that rounding noise in
    # the filtered variances of a non-zero level would give
    a = np.full((32, 32), level)
    f = np.random.default_rng(0).integers(0, 256, (32, 32)).astype(float)
    with pytest.warns(DegenerateInputWarning, match="Q_Y"):
        assert math.isnan(M.q_y(a, a.copy(), f, convention))


def test_well_defined_limits_stay_finite(triplet):
    a, _, f = triplet
    b = np.full_like(a, 100.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("EN", "SD", "SF", "AG", "MI", "PSNR", "MSE", "SSIM", "Qabf", "Nabf", "FMI",
                     "Q_Y"):
            assert math.isfinite(M.compute(name, a, b, f)), name


def test_zero_mse_psnr_is_nan_with_warning():
    a = np.arange(16.0).reshape(4, 4)
    with pytest.warns(DegenerateInputWarning):
        assert math.isnan(M.psnr(a, a, a))


def test_bad_names_and_shapes():
    a = np.zeros((4, 4))
    with pytest.raises(KeyError, match="unknown metric"):
        M.compute("nope", a, a, a)
    with pytest.raises(KeyError, match="unknown convention"):
        M.compute("SF", a, a, a, convention="nope")
    with pytest.raises(ValueError, match="shape mismatch"):
        M.compute("CC", a, a, np.zeros((4, 5)))


def test_convention_spec():
    from refusion.metrics.conventions import parse_convention_spec

    c = parse_convention_spec("vifb,SSIM.tang", ["SF", "SSIM", "VIF", "Nabf"])
    assert c == {"SF": "vifb", "SSIM": "tang_matlab_ssim_emul", "VIF": "cddfuse",
                 "Nabf": "vifb_cbf"}
    assert parse_convention_spec("tang", ["Nabf"]) == {"Nabf": "tang_as_called"}
    with pytest.raises(KeyError):
        parse_convention_spec("bogus", ["SF"])


def test_colour_to_luma():
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[..., 2] = 255  # pure red -> Y = 0.299 * 255 = 76.2 -> 76
    assert np.all(M.to_grey255(bgr) == 76)
    assert np.all(M.to_grey255(np.full((2, 2), 65535, np.uint16)) == 255)


def test_images_off_the_0_255_scale_are_warned_about(triplet):
    a, b, f = triplet
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # on the 0..255 scale: no warning
        M.compute_suite(a, b, f, ["EN", "Qabf"])
    with pytest.warns(M.InputRangeWarning, match="within 0..1.*multiply by 255"):
        en01 = M.compute("EN", a / 255, b / 255, f / 255)
    assert en01 < 1.5 < M.compute("EN", a, b, f)  # what the warning is for: a wrong scale
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        M.compute_suite(a / 255, b / 255, f / 255, ["EN", "SSIM", "Qabf"])
        M.ssim(a / 255, b / 255, f / 255)  # through the convention wrapper
    ranged = [w for w in caught if w.category is M.InputRangeWarning]
    assert len(ranged) == 2  # once per call, not once per metric
    assert all(w.filename == __file__ for w in ranged)  # pointing at the caller's line
    with pytest.warns(M.InputRangeWarning, match="outside the 0..255 scale"):
        M.compute("SD", a, b, f * 257)  # 16-bit data not scaled
    with pytest.warns(M.InputRangeWarning, match="within 0..1"):
        M.en(f / 255)  # single-image metrics too
    # files: a float TIFF within 0..1 is scaled to 0..255 (as the 8-bit file of it would be)
    img = (f / 255).astype(np.float32)
    assert np.abs(M.to_grey255(img) - np.round(img * 255.0)).max() == 0
    assert M.to_grey255(img * 255).max() == pytest.approx(np.round(f.max()))  # 0..255 floats


_LOW_LEVEL = {"SF": "sf", "AG": "ag", "Nabf": "nabf", "EN": "en", "MI": "mi", "FMI": "fmi",
              "Q_CB": "q_cb", "MSE": "mse", "PSNR": "psnr", "SSIM": "ssim",
              "MS_SSIM": "ms_ssim", "Q_Y": "q_y"}


@pytest.mark.parametrize("metric", sorted(_LOW_LEVEL))
def test_functions_take_every_convention_name_compute_takes(metric):
    from refusion.metrics.conventions import METRICS

    rng = np.random.default_rng(3)
    a, b, f = (rng.integers(0, 256, (176, 176)).astype(np.float64) for _ in range(3))
    fn = getattr(M, _LOW_LEVEL[metric])
    single = metric in ("SF", "AG", "EN")
    for name in METRICS[metric].conventions:  # toolbox tags and aliases included
        got = fn(f, name) if single else fn(a, b, f, name)
        assert got == pytest.approx(M.compute(metric, a, b, f, name), nan_ok=True), name
    with pytest.raises(ValueError, match="unknown"):
        fn(f, "nope") if single else fn(a, b, f, "nope")
