"""Image-fusion metrics computed the way the field computes them, with the convention named.

Inputs are 2-D float64 grey images on the 0..255 scale (``a``, ``b`` the sources, ``f`` the
fused image); use :func:`to_grey255` / :func:`read_grey` for colour (OpenCV YCrCb luma,
rounded). Defaults follow the ReFusion authors' evaluation code (CDDFuse ``Evaluator``) where it
has the metric, else the MATLAB toolboxes (VIFB/MEFB/Liu); see ``docs/metrics.md`` and
:mod:`refusion.metrics.conventions` for every selectable convention.

Degenerate inputs (a constant source, windows flat in both sources): a metric that is undefined
there returns NaN and emits :class:`DegenerateInputWarning`; it never raises or substitutes 0/1.
Images that are not on the 0..255 scale (0..1 floats, unscaled 16-bit) are computed as given,
with an :class:`InputRangeWarning`.

Example:
    >>> from refusion.metrics import compute, compute_suite
    >>> compute("SF", a, b, f, convention="vifb")
    >>> compute_suite(a, b, f)  # {"EN": ..., "SD": ..., ...}
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from ._common import DegenerateInputWarning, InputRangeWarning, as_triplet, range_checked
from ._io import read_grey, to_grey255
from .conventions import METRICS, canonical_metric, metric_names, parse_convention_spec, resolve
from .gradient import ag, nabf, qabf, sf
from .information import en, fmi, mi, q_ncie
from .perceptual import q_cb, vif
from .statistics import cc, mse, psnr, scd, sd
from .structural import ms_ssim, q_y, ssim

_FUNCS: dict[str, Callable[..., float]] = {
    "EN": lambda a, b, f, c: en(f, c),
    "SD": lambda a, b, f, c: sd(f),
    "SF": lambda a, b, f, c: sf(f, c),
    "AG": lambda a, b, f, c: ag(f, c),
    "MI": lambda a, b, f, c: mi(a, b, f, c),
    "SCD": lambda a, b, f, c: scd(a, b, f),
    "CC": lambda a, b, f, c: cc(a, b, f),
    "PSNR": lambda a, b, f, c: psnr(a, b, f, c),
    "MSE": lambda a, b, f, c: mse(a, b, f, c),
    "SSIM": lambda a, b, f, c: ssim(a, b, f, c),
    "MS_SSIM": lambda a, b, f, c: ms_ssim(a, b, f, c),
    "VIF": lambda a, b, f, c: vif(a, b, f),
    "Qabf": lambda a, b, f, c: qabf(a, b, f),
    "Nabf": lambda a, b, f, c: nabf(a, b, f, c),
    "Q_CB": lambda a, b, f, c: q_cb(a, b, f, c),
    "Q_NCIE": lambda a, b, f, c: q_ncie(a, b, f),
    "Q_Y": lambda a, b, f, c: q_y(a, b, f, c),
    "FMI": lambda a, b, f, c: fmi(a, b, f, c),
}

DEFAULT_SUITE: tuple[str, ...] = tuple(METRICS)


def compute(metric: str, a: np.ndarray, b: np.ndarray, f: np.ndarray,
            convention: str | None = None) -> float:
    """One metric on one triplet.

    Args:
        metric: metric name (case-insensitive, e.g. ``"Qabf"``, ``"ms-ssim"``).
        a, b: source images, (H, W) float 0..255.
        f: fused image, (H, W).
        convention: a convention of that metric (``"vifb"``, ``"tang_as_called"``...);
            None = default.
    Returns:
        The value (NaN with a DegenerateInputWarning where undefined).
    Raises:
        KeyError: unknown metric or convention. ValueError: bad shapes or non-finite input.
    """
    m = canonical_metric(metric)
    conv = resolve(m, convention)
    a, b, f = as_triplet(a, b, f)
    with range_checked():  # checked once, above
        return float(_FUNCS[m](a, b, f, conv))


def compute_suite(a: np.ndarray, b: np.ndarray, f: np.ndarray,
                  metrics: str | Iterable[str] | None = None,
                  convention: str | None = None) -> dict[str, float]:
    """Several metrics on one triplet.

    Args:
        a, b, f: sources and fused image, (H, W) float 0..255.
        metrics: names, or one comma-separated string (default None: all, in registry order);
            each metric is computed once whatever its spelling.
        convention: ``--convention`` text: toolbox tags and/or ``METRIC.name`` items.
    Returns:
        {canonical metric name: value}.
    Raises:
        KeyError: unknown metric or convention, or a convention for no scored metric.
        ValueError: ``metrics`` names nothing (``[]``, ``""``), bad shapes or non-finite input.
    """
    names = metric_names(metrics)
    convs = parse_convention_spec(convention, names)
    a, b, f = as_triplet(a, b, f)
    with range_checked():  # checked once, above
        return {m: float(_FUNCS[m](a, b, f, convs[m])) for m in names}


from .evaluate import EvalResult, evaluate_folders  # noqa: E402  (needs compute_suite)

__all__ = [
    "DEFAULT_SUITE", "METRICS", "DegenerateInputWarning", "EvalResult", "InputRangeWarning", "ag",
    "cc", "compute", "compute_suite", "en", "evaluate_folders", "fmi", "mi", "ms_ssim", "mse",
    "nabf", "psnr", "q_cb", "q_ncie", "q_y", "qabf", "read_grey", "scd", "sd", "sf", "ssim",
    "to_grey255", "vif",
]
