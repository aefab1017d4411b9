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


# --------------------------------------------------------------- generated multi-focus pairs
#: Blur of the out-of-focus regions of the generated pairs the focus recipe trains on.
SYNTH_SIGMA = (3.0, 4.0)
SYNTH_TRAIN_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
SYNTH_HELD_OUT = ("coins",)  # textured everywhere: where both sources are flat, V is unconstrained


def synthetic_focus_recipe(data_root: str | Path, *, warmup: int = 200, meta: int = 60,
                           seed: int = 0) -> list[str]:
    """Overrides of the ``mfif`` preset for a short run in which P learns a focus map.

    ``warmup`` steps of F alone, then epochs of ``meta`` meta steps and ``warmup - meta`` fusion
    steps (an epoch as long as the warm-up), a small F at 32x32, batch 4; F at Adam 1e-3 and P at
    3e-3, so that minutes suffice; R at the preset's (the paper's) 1e-4. The schedule stops
    after the warm-up (``schedule.max_steps``); resume with a larger one to go on.
    tests/test_trainer_multifocus.py and docs/experiments/multifocus_epochs.py use it;
    docs/training.md, Known limitations, says why each setting matters.
    """
    return [
        f"data.root={data_root}", f"seed={seed}", f"schedule.warmup_steps={warmup}",
        "schedule.epochs=1", f"schedule.meta_steps={meta}",
        f"schedule.fusion_steps={warmup - meta}", f"schedule.max_steps={warmup}",
        "schedule.patch=32", "schedule.batch=4", "fusion.dim=8", "fusion.blocks=1",
        "fusion.heads=2", "proposal.width=8", "reconstruction.width=8",
        "optim.lr_proposal=3e-3", "optim.lr_fusion=1e-3", "log.progress=false",
        "log.tensorboard=false", "log.panel_every=100000", "log.checkpoint_every=100000",
    ]


def synthetic_focus_pairs(folder: str | Path) -> list:
    """Write the recipe's training pairs (each in both source orders, so neither input channel
    is in focus more often) under ``folder`` and return the held-out pairs to score."""
    from refusion.train.synthetic import multifocus_pairs, write_pairs

    train = multifocus_pairs(list(SYNTH_TRAIN_PHOTOS), 2, 0, side=96, sigma=SYNTH_SIGMA,
                             both_orders=True)
    write_pairs(train, Path(folder), "mfif")
    return multifocus_pairs(list(SYNTH_HELD_OUT), 2, 5, side=96, sigma=SYNTH_SIGMA)


def region_scores(proposal, fusion, pair) -> dict[str, float]:
    """Mean V_a and fused/average sharpness (mean Sobel magnitude) in each focus region of a
    generated pair (``pair.mask`` > 1/2 where source a is in focus).

    Keys: ``v_a|A``, ``v_a|B`` (mean V_a where a / b is in focus), ``sharp|A``, ``sharp|B``.
    """
    import torch

    from refusion.ops import sobel_grad

    a, b = (torch.from_numpy(x)[None, None] for x in (pair.a, pair.b))
    with torch.no_grad():
        v_a = proposal(a, b).v_a[0, 0].numpy()
        fused = fusion.fuse(a, b)
    sharp_f = sobel_grad(fused)[0, 0].numpy()
    sharp_avg = sobel_grad(0.5 * (a + b))[0, 0].numpy()
    in_a = pair.mask > 0.5
    if not (in_a.mean() > 0.2 and (~in_a).mean() > 0.2):
        raise ValueError(f"{pair.name}: each focus region must cover a fifth of the image")
    return {
        "v_a|A": float(v_a[in_a].mean()), "v_a|B": float(v_a[~in_a].mean()),
        "sharp|A": float(sharp_f[in_a].mean() / sharp_avg[in_a].mean()),
        "sharp|B": float(sharp_f[~in_a].mean() / sharp_avg[~in_a].mean()),
    }


def favours_in_focus(scores: dict[str, float]) -> bool:
    """V_a above 0.55 where a is in focus and below 0.45 where b is."""
    return scores["v_a|A"] > 0.55 and scores["v_a|B"] < 0.45


def sharper_than_average(scores: dict[str, float]) -> bool:
    """The fused image at least 10 % sharper than averaging in both regions."""
    return scores["sharp|A"] > 1.1 and scores["sharp|B"] > 1.1
