"""Which fused image lets a *trained* R reconstruct both multi-focus sources best?

ReFusion's meta step rewards the loss whose fused image makes the reconstruction loss L_r
small. :func:`held_out_loss` fixes the fused image instead of learning it: for a candidate (one
source, the all-in-focus original, the average, the blurred-everywhere image; see
:data:`CANDIDATES`) it trains a fresh reconstruction module R (the project's architecture) on
generated multi-focus pairs (:mod:`refusion.train.synthetic`, both source orders) with Adam and
returns L_r (Eqs. 4-6) on held-out pairs. docs/training.md (Known limitations) reports the
result and ``docs/experiments/reconstruction_preference.py`` reruns it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from refusion.losses import reconstruction_loss
from refusion.models.reconstruction import ReconstructionConfig, ReconstructionNet
from refusion.train.synthetic import (
    TEST_PHOTOS,
    TRAIN_PHOTOS,
    SynthPair,
    available_photos,
    multifocus_pairs,
)

#: The fused images compared, each a function of a generated pair.
CANDIDATES = {
    "source a": lambda p: p.a,
    "all-in-focus original": lambda p: p.reference,
    "average": lambda p: 0.5 * (p.a + p.b),
    "blurred everywhere": lambda p: p.a * (1 - p.mask) + p.b * p.mask,
}


Triple = tuple[np.ndarray, np.ndarray, np.ndarray]  # (fused input, source a, source b)


def _batch(triples: list[Triple], rng: np.random.Generator, n: int, patch: int):
    cols: tuple[list, list, list] = ([], [], [])
    for _ in range(n):
        t = triples[rng.integers(len(triples))]
        h, w = t[0].shape
        y, x = rng.integers(0, h - patch + 1), rng.integers(0, w - patch + 1)
        for col, img in zip(cols, t):
            col.append(img[y:y + patch, x:x + patch])
    return tuple(torch.from_numpy(np.stack(c)[:, None].astype(np.float32)) for c in cols)


def train_and_score(train: list[Triple], test: list[Triple], seed: int, steps: int = 2000,
                    width: int = 16, patch: int = 48, batch: int = 8,
                    lr: float = 1e-3) -> tuple[float, float, float]:
    """Train a fresh R (``width``, seeded) by Adam to map each fused input to its two sources
    on random ``patch`` crops of ``train``; the mean ``(L_r, intensity, gradient)`` over the
    whole images of ``test``. ``steps=0`` scores R at its initialisation.

    Shape: every image of a triple ``(H, W)`` in [0, 1], at least ``patch`` on each side.
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    recon = ReconstructionNet(ReconstructionConfig(width=width))
    opt = torch.optim.Adam(recon.parameters(), lr)
    for _ in range(steps):
        x, a, b = _batch(train, rng, batch, patch)
        loss = reconstruction_loss(*recon(x), a, b).total
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = []
    with torch.no_grad():
        for t in test:
            x, a, b = (torch.from_numpy(np.ascontiguousarray(z, np.float32))[None, None]
                       for z in t)
            terms = reconstruction_loss(*recon(x), a, b)
            out.append((float(terms.total), float(terms.intensity), float(terms.gradient)))
    return tuple(float(v) for v in np.mean(out, axis=0))


def held_out_loss(make: Callable[[SynthPair], np.ndarray], seed: int, steps: int = 2000,
                  width: int = 16, side: int = 160, patch: int = 48, batch: int = 8,
                  lr: float = 1e-3, photos: int | None = None) -> tuple[float, float, float]:
    """:func:`train_and_score` on generated multi-focus pairs with ``make(pair)`` as the fused
    input.

    Training pairs: four per training photo (``photos`` of them, all by default), both source
    orders, ``side`` pixels; held-out pairs: four per test photo.
    """
    train_photos = available_photos(TRAIN_PHOTOS)[:photos]
    train = multifocus_pairs(train_photos, 4, seed, side, both_orders=True)
    test = multifocus_pairs(available_photos(TEST_PHOTOS), 4, seed + 1000, side)
    return train_and_score([(make(p), p.a, p.b) for p in train],
                           [(make(p), p.a, p.b) for p in test], seed, steps, width, patch,
                           batch, lr)


def focus_selection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The all-in-focus estimate of a real pair: each pixel from the source in focus there
    (:func:`refusion.repro.focus.focus_map`), the average where undecided."""
    from refusion.repro.focus import focus_map

    m = focus_map(a, b)
    return np.where(m > 0, a, np.where(m < 0, b, 0.5 * (a + b))).astype(np.float32)


#: The fused images compared on real pairs (no all-in-focus original exists there).
REAL_CANDIDATES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "source a": lambda a, b: a,
    "focus selection (all-in-focus estimate)": focus_selection,
    "average": lambda a, b: 0.5 * (a + b),
}


def real_pairs(data_root: str | Path, role: str, seed: int = 0
               ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Decoded ``(a, b)`` luma pairs, each ``(H, W)`` float32, of the ``mfif`` reproduction
    split's ``role`` (``train``, ``val`` or ``test``) under the shared data folder."""
    from refusion.repro.splits import make_split
    from refusion.train.data import load_luma

    split = make_split("mfif", data_root, seed)
    return [(load_luma(p.a), load_luma(p.b)) for p in getattr(split, role)]


__all__ = ["CANDIDATES", "REAL_CANDIDATES", "focus_selection", "held_out_loss",
           "real_pairs", "train_and_score"]
