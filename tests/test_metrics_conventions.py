"""The worked numbers and relations of CONVENTIONS.md (shared/metrics), one test per claim.

Each test names the section it checks. The Octave/MATLAB validation values quoted there (TNO,
MRI/CT cases) need images that are not in this repository; docs/metrics.md lists them as
unverified here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from refusion import metrics as M
from refusion.metrics import DegenerateInputWarning
from refusion.metrics.conventions import parse_convention_spec, resolve

# formulas are checked on small hand-made values, often off the 0..255 scale on purpose
pytestmark = pytest.mark.filterwarnings("ignore::refusion.metrics.InputRangeWarning")


def _images(shape=(48, 56), seed=0, top=255):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, top + 1, shape).astype(np.float64)
    b = rng.integers(0, top + 1, shape).astype(np.float64)
    f = np.clip(np.round(0.5 * a + 0.5 * b + rng.normal(0, 5, shape)), 0, top)
    return a, b, f


def test_psnr_tang_is_cddfuse_plus_48_1308_db_when_max_f_is_255():
    # "For max(F) = 255, PSNR.tang = PSNR.cddfuse + 48.1308 exactly."
    a, b, f = _images()
    f[0, 0] = 255
    diff = M.psnr(a, b, f, "tang") - M.psnr(a, b, f, "cddfuse")
    assert diff == pytest.approx(10 * math.log10(65025), abs=1e-9)
    assert diff == pytest.approx(48.1308, abs=1e-4)
    # "MSE.tang = MSE.cddfuse / 65025"
    assert M.mse(a, b, f, "tang") == pytest.approx(M.mse(a, b, f) / 65025, rel=1e-12)


def test_mi_units_and_vifb_equals_cddfuse():
    # "Bits = nats * 1.4427"; without 255s MI.tang = bits(MI.cddfuse); MI.vifb == MI.cddfuse.
    a, b, f = _images(top=254)
    nats = M.mi(a, b, f, "cddfuse")
    assert M.mi(a, b, f, "tang") == pytest.approx(nats / math.log(2), rel=1e-12)
    assert 1 / math.log(2) == pytest.approx(1.4427, abs=1e-4)
    assert M.mi(a, b, f, "vifb") == nats
    # (With both 254 and 255 present Tang's merged joint bin makes MI.tang larger:
    # test_metrics.py::test_mi_tang_merges_254_and_255_in_the_joint_histogram.)


def test_ag_normalisations():
    # "AG.tang = AG.cddfuse * MN/((M-1)(N-1)): +0.79 % at 256x256".
    a, b, f = _images((256, 256))
    ratio = M.ag(f, "tang") / M.ag(f, "cddfuse")
    assert ratio == pytest.approx(256 * 256 / 255**2, rel=1e-12)
    assert ratio - 1 == pytest.approx(0.0079, abs=1e-4)
    assert M.ag(f, "vifb") == M.ag(f, "tang") == M.ag(f, "mefb")


def test_sf_normalisations():
    # cddfuse/tang: mean over the actual number of differences; vifb/mefb: both sums / MN,
    # "always slightly smaller".
    _, _, f = _images((30, 41))
    m, n = f.shape
    rf = np.sum(np.diff(f, axis=1) ** 2)
    cf = np.sum(np.diff(f, axis=0) ** 2)
    assert M.sf(f) == pytest.approx(math.sqrt(rf / (m * (n - 1)) + cf / ((m - 1) * n)))
    assert M.sf(f, "vifb") == pytest.approx(math.sqrt((rf + cf) / (m * n)))
    assert M.sf(f, "vifb") < M.sf(f) == M.sf(f, "tang")


def test_sd_casts_before_subtracting():
    # The 2022 Tang pitfall (SD 8.90 for 48.15): uint8 F - mean(F) saturates. We cast first.
    f = np.array([[0, 0], [200, 200]], dtype=np.uint8)
    assert M.sd(f) == pytest.approx(100.0)
    assert M.sd(f.astype(np.float64) / 255) == pytest.approx(100.0 / 255)  # [0,1] is 255x


def test_en_clips_instead_of_wrapping():
    # "np.uint8 on values > 255 or < 0 wraps around, so clip before casting."
    f = np.array([[256.0, 0.0], [-1.0, 255.0]])
    assert M.en(f) == pytest.approx(1.0)  # {255, 0, 0, 255}, not {0, 0, 255, 255} by luck
    g = np.array([[256.0, 1.0]])
    assert M.en(g) == pytest.approx(1.0)  # wrap-around would give {0, 1}: also 1 bit ...
    h = np.array([[256.0, 255.0]])
    assert M.en(h) == 0.0  # ... but here clipping gives one level, wrapping two


@pytest.mark.parametrize("conv,c1,combine", [
    ("cddfuse", (0.01 * 2) ** 2, "sum"),                # data_range 2: C1 = 4e-4
    ("skimage_dr255_sum", (0.01 * 255) ** 2, "sum"),
    ("vifb", (0.01 * 255) ** 2, "sum"),                 # L = 255
    ("tang_matlab_ssim_emul", 1e-4, "mean"),            # DynamicRange 1
    ("pytorch_msssim_sum", (0.01 * 255) ** 2, "sum"),
])
def test_ssim_constants_and_combination(conv, c1, combine):
    # F = 0 and A = 1 everywhere: SSIM(F,A) = C1/(1 + C1) (the structure term is C2/C2);
    # B = F gives 1. So the value exposes C1 and sum vs mean.
    shape = (24, 24)
    f = np.zeros(shape)
    a = np.ones(shape)
    s_af = c1 / (1 + c1)
    expect = s_af + 1 if combine == "sum" else 0.5 * s_af + 0.5
    assert M.ssim(a, f.copy(), f, conv) == pytest.approx(expect, rel=1e-6)


def test_ssim_constant_source_instability():
    # "with the constant source B, SSIM_BF is 0.003 (dr 2) vs 0.845 (dr 255)": near-zero
    # constants make flat windows unstable. ssim(B, B, F) / 2 is SSIM_BF alone.
    a, _, f = _images((64, 64))
    b = np.full_like(a, 100.0)
    dr2 = M.ssim(b, b, f, "cddfuse") / 2
    dr255 = M.ssim(b, b, f, "skimage_dr255_sum") / 2
    assert 0 < dr2 < 1e-3 and dr255 > 100 * dr2


def test_ms_ssim_size_limits():
    # pytorch-msssim needs min(H, W) > 160; Wang's release needs >= 176.
    a, b, f = _images((176, 180))
    assert math.isfinite(M.ms_ssim(a, b, f, "wang_mean"))
    with pytest.warns(DegenerateInputWarning):
        assert math.isnan(M.ms_ssim(a[:175], b[:175], f[:175], "wang_mean"))
    with pytest.warns(DegenerateInputWarning):
        assert math.isnan(M.ms_ssim(a[:160], b[:160], f[:160]))
    assert math.isfinite(M.ms_ssim(a[:161], b[:161], f[:161]))


def test_q_cb_mefb_differs_from_vifb_only_by_rounding():
    # MEFB applies im2double before normalize1; only .5 roundings can differ ("1e-5").
    a, b, f = _images((64, 72), seed=3)
    v, m = M.q_cb(a, b, f, "vifb"), M.q_cb(a, b, f, "mefb")
    assert m == pytest.approx(v, rel=1e-4)
    assert M.q_cb(a, b, f, "liu") == v


def test_fmi_toolbox_tags_do_not_claim_pixel_fmi():
    # MEFB metricsFMI and Tang's analysis_Reference call FMI without a feature, i.e. 'edge'
    # (not provided). A toolbox tag therefore leaves FMI at its default, and FMI.mefb /
    # FMI.tang are refused rather than silently mapped to pixel-FMI.
    assert parse_convention_spec("mefb", ["FMI", "Q_Y"]) == {"FMI": "pixel", "Q_Y": "mefb"}
    for tag in ("mefb", "tang"):
        with pytest.raises(KeyError):
            resolve("FMI", tag)
    assert resolve("FMI", "none") == "pixel"


def test_nabf_weights_and_threshold():
    # Kumar: wA = gA^1.5 where gA >= 2 else 0.001; Nabf in [0, 1], lower is better, and 0
    # when F has no stronger gradient than both sources anywhere (here F = A).
    a, b, _ = _images((40, 40), seed=4)
    assert M.nabf(a, b, a.copy()) == 0.0
    f = a.copy()
    f[10:20, 10:20] += 300  # a strong block edge: an artefact
    v = M.nabf(a, b, f)
    assert 0 < v <= 1
    # The threshold, by hand: A = B is a ramp of slope s (Sobel/8 gradient s) on columns 0-19
    # and flat after it; F adds a block in the flat part. Its 112 edge pixels (7 %) are the
    # only ones where F's gradient beats the sources', each with Q ~ 0 (G_AF = 0).
    for s in (1.9, 2.1):
        a = np.zeros((40, 40))
        a[:, :20] = s * np.arange(20)
        a[:, 20:] = s * 19
        f = a.copy()
        f[10:30, 28:36] += 100
        # weights: s^1.5 on the ramp's 18 interior columns if s >= 2, else 0.001; 0.001 on
        # column 0 (reflected border: gradient 0), 19 (s/2) and the flat part
        ramp = 40 * 18 * (s**1.5 if s >= 2 else 0.001)
        expected = 112 * 0.001 / (ramp + (1600 - 720) * 0.001)
        assert M.nabf(a, a, f) == pytest.approx(expected, rel=5e-3)  # Q is 0.3 %, not 0
