"""The one pre- and post-processing path shared by every backend, images and video.

Pre: two source images (grey or BGR; uint8, uint16 or float32) -> network input ``(2, H, W)``
float32 lumas in [0, 1] plus the chroma of the result (:func:`refusion.imaging.prepare_pair`:
the authors' float-YCrCb colour rule; 16-bit by robust percentiles, smoothed over time for
video via :class:`refusion.imaging.RangeTracker`).

Post: fused luma ``(H, W)`` -> 8-bit grey or BGR with fixed scaling by default
(:func:`refusion.imaging.compose`), which keeps consecutive video frames from flickering.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from refusion.imaging import (
    GRAY_TOLERANCE,
    Normalize,
    PreparedPair,
    RangeTracker,
    compose,
    is_gray,
    prepare_pair,
)


def stack_inputs(pairs: Sequence[PreparedPair]) -> np.ndarray:
    """Network input of same-size pairs.

    Shape:
        - Output: ``(N, 2, H, W)`` float32, channel 0 = source a, channel 1 = source b
    """
    batch = np.empty((len(pairs), 2, *pairs[0].a.shape), np.float32)
    for i, p in enumerate(pairs):
        batch[i, 0] = p.a
        batch[i, 1] = p.b
    return batch


@dataclass
class FramePreprocessor:
    """Stateful pre/post-processing for a stream of frame pairs.

    Keeps one :class:`RangeTracker` per source so that 16-bit streams get temporally smoothed
    bounds; 8-bit frames pass straight through the colour path.

    Args:
        normalize: output scaling, ``fixed`` (default, flicker-free) or ``minmax``.
        gray: drop the chroma and write grey output.
        smoothing: weight of the previous percentile bounds for 16-bit streams.
    """

    normalize: Normalize = "fixed"
    gray: bool = False
    smoothing: float = 0.9
    trackers: tuple[RangeTracker, RangeTracker] = field(init=False)
    grey: list[bool | None] = field(init=False)

    def __post_init__(self) -> None:
        self.trackers = (RangeTracker(smoothing=self.smoothing),
                         RangeTracker(smoothing=self.smoothing))
        # grey or colour, per source, decided by its first frame: a dim, barely coloured clip
        # judged frame by frame would switch its chroma on and off (colour flicker)
        self.grey = [None, None]

    def pre(self, ir: np.ndarray, vis: np.ndarray) -> PreparedPair:
        """Lumas and chroma of one frame pair (same ``H x W``)."""
        for i, frame in enumerate((ir, vis)):
            if self.grey[i] is None and frame.ndim == 3 and frame.shape[2] >= 3:
                self.grey[i] = is_gray(frame[..., :3], GRAY_TOLERANCE)
        p = prepare_pair(ir, vis, "ir", "vis", trackers=self.trackers,
                         gray=(self.grey[0], self.grey[1]))
        if self.gray:
            p.chroma = None
        return p

    def post(self, fused: np.ndarray, pair: PreparedPair) -> np.ndarray:
        """8-bit output frame ``(H, W)`` or ``(H, W, 3)`` from a fused ``(H, W)`` luma."""
        return compose(fused, pair.chroma, self.normalize)
