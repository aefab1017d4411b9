"""Does a learnt loss follow focus? Compare P's gradient weights V with where each source is sharp.

The paper's multi-focus figures show V_a near 1 where I_a is in focus and near 0 where I_b is.
Real multi-focus pairs come without focus maps, so we estimate one per pixel from local
Laplacian energy (a standard focus measure) and only count pixels where one source is clearly
sharper; flat regions, where focus is undefined, fall out by themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

# One source counts as in focus where its local Laplacian energy exceeds the other's by this
# relative margin: (e_a - e_b) / (e_a + e_b) > MARGIN.
MARGIN = 0.3
SIGMA = 5.0  # pixels: the Gaussian window of the local energy


def focus_map(a: np.ndarray, b: np.ndarray, sigma: float = SIGMA,
              margin: float = MARGIN) -> np.ndarray:
    """Where each source is in focus.

    Args:
        a, b: ``(H, W)`` images, the same scale (any).
        sigma: Gaussian window of the local Laplacian energy, in pixels.
        margin: the relative energy difference needed to decide, in ``[0, 1)``.

    Returns:
        ``(H, W)`` int8: ``1`` where ``a`` is sharper, ``-1`` where ``b`` is, ``0`` undecided.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"focus_map needs two (H, W) images of one size, got {a.shape}, "
                         f"{b.shape}")
    ea, eb = (ndimage.gaussian_filter(np.abs(ndimage.laplace(x.astype(np.float64))), sigma)
              for x in (a, b))
    rel = (ea - eb) / (ea + eb + 1e-12)
    out = np.zeros(a.shape, np.int8)
    out[rel > margin] = 1
    out[rel < -margin] = -1
    return out


@dataclass
class FocusAgreement:
    """Mean V_a where each source is in focus, over pairs (pairs without both regions skipped).

    ``per_pair``: ``{name: (mean V_a where I_a is in focus, mean V_a where I_b is)}``.
    """

    per_pair: dict[str, tuple[float, float]]

    @property
    def in_a(self) -> float:
        return float(np.mean([v[0] for v in self.per_pair.values()]))

    @property
    def in_b(self) -> float:
        return float(np.mean([v[1] for v in self.per_pair.values()]))

    @property
    def gaps(self) -> np.ndarray:
        """Per pair, mean V_a where I_a is in focus minus where I_b is (> 0: V follows focus)."""
        return np.array([va - vb for va, vb in self.per_pair.values()])

    def sentence(self) -> str:
        """One paragraph for a result page."""
        g = self.gaps
        ratio = (1 + MARGIN) / (1 - MARGIN)
        text = (f"**Does the learnt V follow focus?** The paper shows V_a near 1 where I_a is in "
                f"focus and near 0 where I_b is. With focus estimated per pixel from local "
                f"Laplacian energy (one source's at least {ratio:.2g} times the other's; "
                f"`refusion.repro.focus`), the learnt P's mean V_a on the {len(g)} test pairs is "
                f"{self.in_a:.3f} where I_a is in focus and {self.in_b:.3f} where I_b is "
                f"(per pair, the difference runs from {g.min():+.3f} to {g.max():+.3f}; "
                f"{int((g > 0).sum())} of {len(g)} positive). ")
        if g.mean() > 0.1 and (g > 0).mean() >= 0.75:
            return text + "V follows focus, as in the paper."
        if np.abs(g).max() < 0.05:
            return text + ("At this budget P has learnt a global weighting, not the paper's "
                           "focus map (see `docs/training.md`, Known limitations).")
        if g.mean() < -0.1 and (g < 0).mean() >= 0.75:
            return text + "V favours the out-of-focus source: the opposite of the paper."
        return text + "V follows focus only on some pairs at this budget."


def v_focus_agreement(v_maps: Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray]]
                      ) -> FocusAgreement:
    """Score ``(name, v_a, a, b)`` tuples; each ``(H, W)``, ``a`` and ``b`` on one scale."""
    per_pair = {}
    for name, v_a, a, b in v_maps:
        f = focus_map(a, b)
        if (f == 1).any() and (f == -1).any():
            per_pair[name] = (float(v_a[f == 1].mean()), float(v_a[f == -1].mean()))
    if not per_pair:
        raise ValueError("no pair has regions where each source is in focus")
    return FocusAgreement(per_pair)


def checkpoint_focus_agreement(ckpt: str | Path, pairs) -> FocusAgreement:
    """:func:`v_focus_agreement` of a checkpoint's P on ``pairs`` (objects with ``name``, ``a``,
    ``b`` paths, as in a :class:`refusion.repro.splits.Split`)."""
    from refusion.repro.run import pair_maps

    return v_focus_agreement((name, m["V_a"], a, b) for name, a, b, m in pair_maps(ckpt, pairs))
