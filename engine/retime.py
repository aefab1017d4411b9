"""Constant-rate output for stamped frames: sample and hold.

An MP4 is written at one frame rate; a camera run that drops frames while the network is busy
(or a camera slower than it reports) would otherwise play faster than real time. Each frame is
held on the output timeline from its own slot, ``round((t - t_first) * fps)``, until the next
frame's slot: a gap is filled by repeating the frame before it, and a frame overtaken by a
newer one in the same slot is never shown (what ``ffmpeg -vsync cfr`` does). The file then lasts
as long as the run did.
"""

from __future__ import annotations

from typing import Any


class ConstantRate:
    """Sample-and-hold resampler of stamped items onto a ``fps`` timeline.

    :meth:`push` returns the items whose length on the timeline became known, as
    ``(item, repeats)`` with ``repeats >= 1``; an item is therefore released one push late,
    the last one by :meth:`flush`. Stamps that go back in time are taken as the current slot.

    Attributes:
        repeated: output frames that repeat an earlier item (gaps filled).
        merged: items replaced by a newer one in the same slot (never written).
    """

    def __init__(self, fps: float) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = fps
        self.repeated = 0
        self.merged = 0
        self._t0: float | None = None
        self._held: Any = None
        self._slot = 0
        self._has = False

    def push(self, item: Any, t: float) -> list[tuple[Any, int]]:
        """Add ``item`` stamped ``t`` seconds; the ``(item, repeats)`` now ready to write."""
        if self._t0 is None:
            self._t0 = t
        slot = max(self._slot, round((t - self._t0) * self.fps))
        if not self._has:
            self._held, self._slot, self._has = item, slot, True
            return []
        if slot == self._slot:
            self.merged += 1
            self._held = item
            return []
        ready = [(self._held, slot - self._slot)]
        self.repeated += slot - self._slot - 1
        self._held, self._slot = item, slot
        return ready

    def flush(self) -> list[tuple[Any, int]]:
        """The held item, once (the end of the stream)."""
        if not self._has:
            return []
        ready = [(self._held, 1)]
        self._held, self._has = None, False
        return ready

    @property
    def holding(self) -> bool:
        """Whether an item waits for :meth:`flush` (or the next push)."""
        return self._has
