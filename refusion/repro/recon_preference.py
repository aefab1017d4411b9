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


def _batch(pairs: list[SynthPair], make, rng: np.random.Generator, n: int, patch: int):
    xs, targets_a, targets_b = [], [], []
    for _ in range(n):
        p = pairs[rng.integers(len(pairs))]
        h, w = p.a.shape
        y, x = rng.integers(0, h - patch), rng.integers(0, w - patch)
        sl = (slice(y, y + patch), slice(x, x + patch))
        xs.append(make(p)[sl])
        targets_a.append(p.a[sl])
        targets_b.append(p.b[sl])
    return tuple(torch.from_numpy(np.stack(t)[:, None].astype(np.float32))
                 for t in (xs, targets_a, targets_b))


def held_out_loss(make: Callable[[SynthPair], np.ndarray], seed: int, steps: int = 2000,
                  width: int = 16, side: int = 160, patch: int = 48, batch: int = 8,
                  lr: float = 1e-3, photos: int | None = None) -> tuple[float, float, float]:
    """Train a fresh R on ``make(pair)`` -> ``(a, b)``; mean held-out ``(L_r, intensity,
    gradient)``.

    Training pairs: four per training photo (``photos`` of them, all by default), both source
    orders, ``side`` pixels, random ``patch`` crops, batches of ``batch``; held-out pairs: four
    per test photo. ``steps=0`` scores R at its (seeded) initialisation.
    """
    train_photos = available_photos(TRAIN_PHOTOS)[:photos]
    train = multifocus_pairs(train_photos, 4, seed, side, both_orders=True)
    test = multifocus_pairs(available_photos(TEST_PHOTOS), 4, seed + 1000, side)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    recon = ReconstructionNet(ReconstructionConfig(width=width))
    opt = torch.optim.Adam(recon.parameters(), lr)
    for _ in range(steps):
        x, a, b = _batch(train, make, rng, batch, patch)
        loss = reconstruction_loss(*recon(x), a, b).total
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = []
    with torch.no_grad():
        for p in test:
            x, a, b = (torch.from_numpy(z.astype(np.float32))[None, None]
                       for z in (make(p), p.a, p.b))
            terms = reconstruction_loss(*recon(x), a, b)
            out.append((float(terms.total), float(terms.intensity), float(terms.gradient)))
    return tuple(float(v) for v in np.mean(out, axis=0))



__all__ = ["CANDIDATES", "held_out_loss"]
