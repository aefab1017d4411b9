"""Why a decision-map F can collapse to a copy of one source (Table 4, configuration II).

The learnt loss is an L1 loss (Eqs. 1-3). At one pixel, for any fused value ``f``,

    ``W_a |f - I_a| + W_b |f - I_b| >= min(W_a, W_b) |I_a - I_b|``,

with equality at ``f = I_b`` when ``W_a < 1/2`` (at ``f = I_a`` when ``W_a > 1/2``): the
weighted median of two values is the one with the larger weight, however small the margin. The
gradient term is the same inequality on Sobel magnitudes with ``V``. So wherever P's ``W_a``
and ``V_a`` both sit below 1/2, ``I_b`` minimises ``L_f`` exactly, among all images; on a pair
where that holds at every pixel, ``I_b`` itself is the best fused image the loss knows.

A decision map reaches that minimum easily: with ``I_f = d I_a + (1 - d) I_b`` the intensity
term is ``|I_a - I_b| (W_a (1 - d) + W_b d)``, linear in ``d``, and a sigmoid map gets to
``d = 0`` by saturating. A direct F has to build ``I_b`` from its own layers. Once saturated,
the map hardly depends on F's weights any more (every gradient through the sigmoid is scaled by
``d (1 - d)``), so the inner step barely moves F and the outer gradient that would teach P
where the other source matters fades with it.

:func:`copy_minimiser` tells, for weight maps, where a source is the exact minimiser;
:func:`checkpoint_minimiser` measures it with a checkpoint's own P on test pairs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# A decision map counts as saturated when its mean sigmoid slope is below this share of the
# slope at d = 1/2 (gradients through it at least 10x weaker).
SATURATED = 0.1


def copy_minimiser(w_a: np.ndarray, v_a: np.ndarray) -> np.ndarray:
    """Where a source minimises the learnt loss at a pixel, whatever the images.

    Args:
        w_a, v_a: P's intensity and gradient weights of source a, ``(H, W)`` in [0, 1]
            (``W_b = 1 - W_a``, ``V_b = 1 - V_a``).

    Returns:
        ``(H, W)`` int8: ``-1`` where ``I_b`` is the minimiser (``W_a < 1/2`` and
        ``V_a < 1/2``), ``1`` where ``I_a`` is (both above 1/2), ``0`` where the two terms ask
        for different sources (or a weight is exactly 1/2), and the minimiser depends on the
        images.
    """
    if w_a.shape != v_a.shape:
        raise ValueError(f"W_a and V_a differ in shape: {w_a.shape} vs {v_a.shape}")
    out = np.zeros(w_a.shape, np.int8)
    out[(w_a < 0.5) & (v_a < 0.5)] = -1
    out[(w_a > 0.5) & (v_a > 0.5)] = 1
    return out


@dataclass
class MinimiserCheck:
    """Where a learnt loss is minimised by a copy of a source, per test pair.

    ``per_pair``: ``{name: (share of pixels where I_b is the minimiser, share where I_a is,
    mean W_a, mean V_a)}``; ``slope``: ``{name: mean d (1 - d) / 0.25}`` of a decision map
    ``d`` (the sigmoid's slope relative to its largest, at ``d = 1/2``), where one was measured.
    """

    per_pair: dict[str, tuple[float, float, float, float]]
    slope: dict[str, float] = field(default_factory=dict)

    def column(self, i: int) -> np.ndarray:
        return np.array([v[i] for v in self.per_pair.values()])

    def sentence(self, copies: dict[str, int] | None = None,
                 reference: MinimiserCheck | None = None) -> str:
        """One paragraph for a result page; ``copies``: how often the decision model returned
        each source unchanged (``{"I_a": k, "I_b": k}``), if known; ``reference``: the same
        check of the learnt-loss run's P (a direct F), for comparison."""
        to_b, to_a, wa, va = (self.column(i) for i in range(4))
        n = len(to_b)
        text = ("**The decision map and its loss.** The learnt loss is an L1 loss: at a pixel "
                "where W_a < 1/2, W_a |f - I_a| + W_b |f - I_b| is smallest at f = I_b, however "
                "small the margin, and likewise for the gradient term with V_a "
                "(`refusion.repro.decision`). With the decision run's own P on the "
                f"{n} test pairs, W_a is {wa.mean():.3f} and V_a {va.mean():.3f} on average, "
                f"and I_b minimises both terms on {100 * to_b.mean():.1f} % of the pixels "
                f"(I_a on {100 * to_a.mean():.1f} %). ")
        all_b, all_a = int((to_b == 1).sum()), int((to_a == 1).sum())
        if all_b or all_a:
            parts = [f"on {all_b} of {n} pairs I_b" if all_b else "",
                     f"on {all_a} of {n} pairs I_a" if all_a else ""]
            text += (f"So {' and '.join(p for p in parts if p)} is the exact minimiser of the "
                     "learnt loss over all images, and a map I_f = d I_a + (1 - d) I_b, whose "
                     "intensity term is linear in d, can reach it by saturating its sigmoid. ")
        if self.slope:
            sl = float(np.mean(list(self.slope.values())))
            text += (f"The slope of the decision map's sigmoid, d (1 - d), averages {sl:.2g} of "
                     "its value at d = 1/2 on the test pairs")
            text += (": the map is saturated, so F's weights hardly move it and the "
                     "meta-gradient that would teach P where I_a matters fades with it. "
                     if sl < SATURATED else ". ")
        if reference is not None:
            rb, ra = 100 * reference.column(0).mean(), 100 * reference.column(1).mean()
            text += (f"For comparison, with the 'learned' run's P (trained beside a direct F) "
                     f"I_b minimises both terms on {rb:.1f} % of the pixels, I_a on {ra:.1f} %, "
                     f"and on {100 - rb - ra:.1f} % the two terms ask for different sources "
                     "(intensity from one, edges from the other: a fused image no blend of "
                     "the sources gives). ")
        copied = sum((copies or {}).values())
        if copied and all_b + all_a >= copied:
            text += ("The copies in the table are the decision model minimising its loss, "
                     "not failing to train; what is missing at this budget is a P whose "
                     "weights cross 1/2 where the other source matters.")
        elif copied:
            text += (f"It copied a source on {copied} pairs, {copied - all_b - all_a} of them "
                     "pairs where the loss asks for the other source on some pixels: there the "
                     "saturated map, not the loss, kept it from answering.")
        return text


def sigmoid_slope(d: np.ndarray) -> float:
    """Mean ``d (1 - d) / 0.25`` of a map in [0, 1]: 1 for ``d = 1/2`` everywhere, 0 when
    saturated."""
    return float((d * (1.0 - d)).mean() / 0.25)


def minimiser_check(items: Iterable[tuple]) -> MinimiserCheck:
    """Score ``(name, w_a, v_a)`` or ``(name, w_a, v_a, d)`` tuples, each map ``(H, W)`` in
    [0, 1] (``d``: a decision map, or ``None``)."""
    per_pair, slope = {}, {}
    for name, w_a, v_a, *rest in items:
        m = copy_minimiser(w_a, v_a)
        per_pair[name] = (float((m == -1).mean()), float((m == 1).mean()), float(w_a.mean()),
                          float(v_a.mean()))
        if rest and rest[0] is not None:
            slope[name] = sigmoid_slope(rest[0])
    if not per_pair:
        raise ValueError("no pairs to score")
    return MinimiserCheck(per_pair, slope)


def checkpoint_minimiser(ckpt: str | Path, pairs) -> MinimiserCheck:
    """:func:`minimiser_check` with a checkpoint's P on ``pairs`` (objects with ``name``,
    ``a``, ``b`` paths, as in a :class:`refusion.repro.splits.Split`); for a decision-map
    checkpoint, with the slope of its map too."""
    import torch

    from refusion.checkpoint import load_fusion_model
    from refusion.repro.run import pair_maps
    from refusion.train.ablation import DecisionFusionNet

    model, _ = load_fusion_model(ckpt)
    decision = isinstance(model, DecisionFusionNet)

    def items():
        for name, a, b, m in pair_maps(ckpt, pairs):
            d = None
            if decision:
                with torch.inference_mode():
                    d = model.decision(torch.from_numpy(np.stack([a, b]))[None])[0, 0].numpy()
            yield name, m["W_a"], m["V_a"], d

    return minimiser_check(items())
