"""Video inputs: files, cameras, image-sequence folders, one side-by-side video; pairing of
infrared and visible frames by timestamp; alignment of the infrared frame to the visible one.

Timestamps: frame ``i`` of a file or folder is at ``i / fps`` (container timestamps of phone
and camera recordings are often unreliable); a camera frame is stamped with the monotonic
clock when it is grabbed.

Pairing: the visible stream is the clock. For every visible frame the infrared frame nearest
in time is used; infrared frames that are never nearest are counted as dropped. With equal
frame rates this reduces to pairing by index.

Alignment: the infrared frame is resized to the visible frame's size, or, with a homography
``H`` (3x3, mapping infrared pixel coordinates to visible pixel coordinates), warped onto it.
:func:`estimate_homography` finds ``H`` from a few frame pairs (see its docstring).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from refusion.errors import UserError
from refusion.imaging import list_image_folder, read_image
from refusion.utils.atomic import atomic_write_bytes, atomic_write_text

DEFAULT_FPS = 30.0


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence native libraries writing to file descriptor 2 (FFmpeg's demuxer warnings)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


#: FFmpeg's pixel formats of 16-bit grey video, as OpenCV reports them (little/big endian)
_GRAY16 = {b"Y1\x00\x10", b"\x10\x001Y"}


def _is_gray16(cap: cv2.VideoCapture) -> bool:
    code = int(cap.get(cv2.CAP_PROP_CODEC_PIXEL_FORMAT) or 0)
    return code.to_bytes(4, "little") in _GRAY16


def natural_key(path: Path) -> list:
    """Sort key that puts ``frame_2`` before ``frame_10`` (digit runs compare as numbers)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


class _Grabber:
    """A camera read on its own thread: each frame is stamped on arrival and only the newest
    is kept. A consumer slower than the camera never reads a stale buffered frame, and a
    camera slower than the other one never holds the other one's frames back."""

    def __init__(self, cap: cv2.VideoCapture, clock: Callable[[], float]) -> None:
        self._cap, self._clock = cap, clock
        self._cond = threading.Condition()
        self._latest: tuple[np.ndarray, float, int] | None = None  # frame, t, number
        self._ended = self._stopping = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="refusion-grab")
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stopping:
            ok, frame = self._cap.read()
            with self._cond:
                if not ok or frame is None:
                    break
                n += 1
                self._latest = (frame, self._clock(), n)
                self._cond.notify_all()
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def newer_than(self, n: int) -> tuple[np.ndarray, float, int] | None:
        """The newest frame numbered above ``n``, waiting for one; None once the camera ended."""
        with self._cond:
            while not self._ended and (self._latest is None or self._latest[2] <= n):
                self._cond.wait(0.1)
            if self._latest is not None and self._latest[2] > n:
                return self._latest
            return None

    @property
    def ended(self) -> bool:
        """Whether the camera stopped giving frames."""
        return self._ended

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop grabbing; whether the thread ended (a camera read can block for longer)."""
        self._stopping = True
        self._thread.join(timeout)
        return not self._thread.is_alive()


class FrameSource:
    """Frames of a video file, a camera (integer index) or a folder of images.

    Args:
        spec: path of a video file or image folder, or a camera index (``"0"`` or ``0``).
        name: how messages call this source (``ir``, ``vis``).
        fps: frame rate of an image folder (and of files/cameras that report none).

    Attributes:
        fps, size (``(W, H)``), frame_count (``-1`` when unknown), live (a camera).
    """

    def __init__(self, spec: str | int | os.PathLike, name: str = "video",
                 fps: float | None = None) -> None:
        self.spec, self.name = spec, name
        self.index = 0
        self._cap: cv2.VideoCapture | None = None
        self._files: list[Path] = []
        # a digit string is a camera index unless a file or folder of that name exists
        self.live = isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()
                                               and not Path(spec).exists())
        if self.live:
            self._cap = cv2.VideoCapture(int(spec))
            if not self._cap.isOpened():
                raise UserError(f"--{name} {spec}: cannot open camera {int(spec)}")
        else:
            p = Path(spec)
            if not p.exists():
                raise UserError(f"--{name}: not found: {p}")
            if p.is_dir():
                # the listing every command uses: hidden files (macOS ._ forks) are not
                # frames; a broken link or two frames of one name fail now, not mid-stream
                listing = list_image_folder(p).require_unique(f"--{name}: ")
                if listing.broken:
                    raise UserError(f"--{name}: {listing.broken_text(min(listing.broken))}")
                self._files = sorted(listing.images.values(), key=natural_key)
                if not self._files:
                    raise UserError(f"--{name} {p}: folder holds no images")
            else:
                with _quiet_stderr():  # FFmpeg's own complaint would precede our one line
                    self._cap = cv2.VideoCapture(str(p))
                if not self._cap.isOpened():
                    raise UserError(f"--{name} {p}: cannot open as a video")
                if _is_gray16(self._cap):
                    # OpenCV converts to 8-bit BGR by default, keeping the high byte only: a
                    # 16-bit thermal video must reach the robust-percentile mapping whole
                    with _quiet_stderr():
                        raw = cv2.VideoCapture(str(p), cv2.CAP_FFMPEG,
                                               [cv2.CAP_PROP_CONVERT_RGB, 0])
                    if raw.isOpened():
                        self._cap.release()
                        self._cap = raw
        self._first: np.ndarray | None = None
        if self._cap is not None:
            cap_fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
            # a file's own rate wins: --fps is for frame folders, and for what reports none
            self.fps = cap_fps if 1.0 <= cap_fps <= 1000.0 else (fps or DEFAULT_FPS)
            n = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            self.frame_count = -1 if self.live or n <= 0 else n
            ok, frame = self._cap.read()
            if not ok or frame is None:
                raise UserError(f"--{name} {spec}: no frame can be decoded")
            self._first = frame
        else:
            self.fps = fps or DEFAULT_FPS
            self.frame_count = len(self._files)
            self._first = read_image(self._files[0])
        self.size = (self._first.shape[1], self._first.shape[0])
        self._t0 = time.monotonic()
        self._grabber: _Grabber | None = None
        self._seq = 0  # the grabber's number of the last frame returned
        self.skipped = 0  # camera frames that were replaced by a newer one before being read

    @property
    def is_folder(self) -> bool:
        """Whether this source is a folder of frames."""
        return bool(self._files)

    @property
    def files(self) -> list[Path]:
        """The frames of a folder, in reading order (empty for a video or camera)."""
        return list(self._files)

    def keep(self, files: set[Path]) -> None:
        """Read only these frames of a folder (before the first read), in the same order."""
        assert self.is_folder and self.index == 0, "keep() is for an unread folder"
        self._files = [f for f in self._files if f in files]
        self.frame_count = len(self._files)
        first = read_image(self._files[0])
        self._first = first
        self.size = (first.shape[1], first.shape[0])

    def _grab(self) -> _Grabber:
        if self._grabber is None:  # started on first use, after PairReader set the clock
            assert self._cap is not None
            self._grabber = _Grabber(self._cap, lambda: time.monotonic() - self._t0)
        return self._grabber

    def latest(self) -> tuple[np.ndarray, float] | None:
        """A camera's newest frame, returned again until a newer one arrives (``None`` once the
        camera stops): what an infrared camera slower than the visible one pairs with."""
        assert self.live, "latest() is for cameras"
        grabber = self._grab()
        got = grabber.newer_than(0)
        return None if got is None or grabber.ended else (got[0], got[1])

    def read(self) -> tuple[np.ndarray, float] | None:
        """Next ``(frame, timestamp in seconds)``, or ``None`` at the end.

        A camera gives its newest frame not yet returned, stamped on arrival; frames that a
        newer one replaced before this call are counted in :attr:`skipped`.
        """
        if self.live:
            self._first = None  # grabbed at opening, possibly seconds ago
            got = self._grab().newer_than(self._seq)
            if got is None:
                return None
            frame, t, seq = got
            self.skipped += seq - self._seq - 1
            self._seq = seq
            self.index += 1
            return frame, t
        if self._first is not None:
            frame, self._first = self._first, None
        elif self._cap is not None:
            ok, frame = self._cap.read()
            if not ok or frame is None:
                return None
        else:
            if self.index >= len(self._files):
                return None
            frame = read_image(self._files[self.index])
        if (frame.shape[1], frame.shape[0]) != self.size:
            # the pipeline's buffers, alignment and encoder are set up for the first frame
            where = (self._files[self.index] if self._files
                     else f"{self.spec} (frame {self.index + 1})")
            raise UserError(f"--{self.name} {where}: {frame.shape[1]}x{frame.shape[0]}, but the "
                            f"stream's first frame was {self.size[0]}x{self.size[1]}")
        t = self.index / self.fps  # a camera returned above, stamped on arrival
        self.index += 1
        return frame, t

    def release(self) -> None:
        if self._grabber is not None and not self._grabber.stop():
            self._cap = None  # still inside a read: releasing under it could crash OpenCV
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def describe(self) -> str:
        n = f"{self.frame_count} frames" if self.frame_count >= 0 else "live"
        return f"{self.spec} ({self.size[0]}x{self.size[1]}, {self.fps:g} fps, {n})"


@dataclass
class PairStats:
    """What pairing did: pairs made, infrared frames dropped, and why it stopped."""

    pairs: int = 0
    dropped: int = 0
    ended: str = ""
    warnings: list[str] = field(default_factory=list)


class PairReader:
    """``(ir, vis, t)`` frame pairs from two sources or one side-by-side source.

    Args:
        ir, vis: the two sources; or ``sbs`` alone: a side-by-side video whose left half is
            the infrared frame (``sbs_order="ir-vis"``, default) or the visible one.
    """

    def __init__(self, ir: FrameSource | None = None, vis: FrameSource | None = None, *,
                 sbs: FrameSource | None = None, sbs_order: str = "ir-vis") -> None:
        if sbs is None and (ir is None or vis is None):
            raise UserError("give --ir and --vis, or --sbs")
        if sbs_order not in ("ir-vis", "vis-ir"):
            raise UserError(f"--sbs-order must be ir-vis or vis-ir, got {sbs_order!r}")
        self.ir, self.vis, self.sbs, self.order = ir, vis, sbs, sbs_order
        self.stats = PairStats()
        self._ir_cur: tuple[np.ndarray, float, bool] | None = None  # frame, t, used
        self._ir_next: tuple[np.ndarray, float] | None = None
        self._ir_done = False
        self._ir_error: UserError | None = None  # a bad infrared frame met while reading ahead
        if sbs is not None:
            if sbs.size[0] % 2:
                raise UserError(f"--sbs {sbs.spec}: width {sbs.size[0]} is odd; a side-by-side "
                                "video needs two halves of equal width")
            self.fps, self.live = sbs.fps, sbs.live
            self.vis_size = (sbs.size[0] // 2, sbs.size[1])
            self.ir_size = self.vis_size
        else:
            self.fps, self.live = vis.fps, vis.live or ir.live  # type: ignore[union-attr]
            self._pair_folders_by_name()  # may leave out a folder's first frame: sizes after
            self.vis_size, self.ir_size = vis.size, ir.size  # type: ignore[union-attr]
            self._check_lengths()
            if ir.live and vis.live:  # type: ignore[union-attr]
                # one clock origin: each camera's started when it opened, and the first to
                # open would run ahead of the other by the second one's opening time
                ir._t0 = vis._t0 = time.monotonic()  # type: ignore[union-attr]
            elif self.live:
                self.stats.warnings.append(
                    "a camera paired with a file: the camera's frames are timed by their "
                    "arrival, the file's by its frame rate, so the pairs are not synchronised")

    def _pair_folders_by_name(self) -> None:
        """Two frame folders at one rate whose files share names are paired by name.

        By position, one missing frame would shift every later pair by a frame, with only a
        length warning to show for it. Frames whose name the other folder lacks are left out,
        and a warning counts them. Folders named differently (``ir_0001`` / ``vis_0001``), or
        sharing names for fewer than half of their frames, keep pairing by position.
        """
        ir, vis = self.ir, self.vis
        assert ir is not None and vis is not None
        if not (ir.is_folder and vis.is_folder) or abs(ir.fps - vis.fps) > 1e-9:
            return
        ir_names = {f.stem: f for f in ir.files}
        vis_names = {f.stem: f for f in vis.files}
        common = ir_names.keys() & vis_names.keys()
        if len(common) == len(ir_names) == len(vis_names):
            return
        if 2 * len(common) < max(len(ir_names), len(vis_names)):
            # a few names in common by chance (1..12 beside 01..12, or a calib.png in both)
            # say nothing about the rest: by position, as before
            return
        for src, names, other in ((ir, ir_names, "vis"), (vis, vis_names, "ir")):
            alone = sorted((n for n in names if n not in common), key=lambda n: natural_key(
                Path(n)))
            if alone:
                self.stats.warnings.append(
                    f"{len(alone)} frame(s) of --{src.name} {src.spec} have no --{other} frame "
                    f"of the same name and are left out (first: {names[alone[0]].name}); the "
                    "others are paired by name")
                src.keep({names[n] for n in common})

    def _check_lengths(self) -> None:
        ir, vis = self.ir, self.vis
        assert ir is not None and vis is not None
        if ir.frame_count < 0 or vis.frame_count < 0:
            return
        d_ir, d_vis = ir.frame_count / ir.fps, vis.frame_count / vis.fps
        if abs(d_ir - d_vis) > 1.0 / min(ir.fps, vis.fps):
            self.stats.warnings.append(
                f"streams differ in length: ir {ir.spec} has {ir.frame_count} frames "
                f"({d_ir:.2f} s), vis {vis.spec} has {vis.frame_count} ({d_vis:.2f} s); "
                "stopping at the end of the shorter"
            )

    @property
    def frame_count(self) -> int:
        """Pairs expected (``-1`` when unknown)."""
        if self.sbs is not None:
            return self.sbs.frame_count
        assert self.ir is not None and self.vis is not None
        if self.ir.frame_count < 0 or self.vis.frame_count < 0:
            return -1
        return min(self.vis.frame_count,
                   int(round(self.ir.frame_count / self.ir.fps * self.vis.fps)))

    def read(self) -> tuple[np.ndarray, np.ndarray, float] | None:
        """Next ``(ir frame, visible frame, timestamp)`` or ``None`` when either stream ends."""
        if self.sbs is not None:
            got = self.sbs.read()
            if got is None:
                self.stats.ended = "end of the side-by-side video"
                return None
            frame, t = got
            half = frame.shape[1] // 2
            left, right = frame[:, :half], frame[:, half: 2 * half]
            ir, vis = (left, right) if self.order == "ir-vis" else (right, left)
            self.stats.pairs += 1
            return ir, vis, t
        assert self.ir is not None and self.vis is not None
        got = self.vis.read()
        if got is None:
            self.stats.ended = f"end of vis {self.vis.spec}"
            return None
        vis, t = got
        if self.vis.live:
            self.stats.dropped += self.vis.skipped  # frames a newer one replaced meanwhile
            self.vis.skipped = 0
        if self.ir.live:  # the newest infrared frame: no lookahead, so never waiting on it
            newest = self.ir.latest()
            ir = None if newest is None else newest[0]
        else:
            ir = self._nearest_ir(t)
        if ir is None:
            self.stats.ended = f"end of ir {self.ir.spec}"
            return None
        self.stats.pairs += 1
        return ir, vis, t

    def _pull(self) -> tuple[np.ndarray, float] | None:
        if self._ir_done:
            return None
        try:
            got = self.ir.read()  # type: ignore[union-attr]
        except UserError as exc:
            # a bad frame read ahead: the pairs before it are still made (they would be lost
            # with the failure otherwise); raised when the stream gets to it
            self._ir_error, self._ir_done = exc, True
            return None
        if got is None:
            self._ir_done = True
        return got

    def _nearest_ir(self, t: float) -> np.ndarray | None:
        if self._ir_cur is None:
            first = self._pull()
            if first is None:
                if self._ir_error is not None:
                    raise self._ir_error
                return None
            self._ir_cur = (first[0], first[1], False)
            self._ir_next = self._pull()
        # advance while the next infrared frame is not later than this visible frame
        while self._ir_next is not None and self._ir_next[1] <= t:
            if not self._ir_cur[2]:
                self.stats.dropped += 1
            self._ir_cur = (self._ir_next[0], self._ir_next[1], False)
            self._ir_next = self._pull()
        cur, nxt = self._ir_cur, self._ir_next
        if nxt is None and t - cur[1] > 1.0 / self.ir.fps - 1e-6:  # type: ignore[union-attr]
            if self._ir_error is not None:
                raise self._ir_error
            return None  # past the last infrared frame's duration: do not freeze it
        if nxt is not None and abs(nxt[1] - t) < abs(cur[1] - t):
            if not cur[2]:
                self.stats.dropped += 1
            self._ir_cur = (nxt[0], nxt[1], True)
            self._ir_next = self._pull()
            return nxt[0]
        self._ir_cur = (cur[0], cur[1], True)
        return cur[0]

    def release(self) -> None:
        for s in (self.ir, self.vis, self.sbs):
            if s is not None:
                s.release()


# --- alignment --------------------------------------------------------------------------------

HOMOGRAPHY_SUFFIXES = (".json", ".npy")


def load_homography(path: str | os.PathLike) -> np.ndarray:
    """Read a 3x3 homography (infrared pixels -> visible pixels) from ``.npy`` or ``.json``.

    JSON: either ``{"homography": [[...], [...], [...]]}`` or the bare nested list. The matrix
    is defined up to scale, so it is judged (finite, invertible) after scaling its largest
    entry to 1, and returned with ``H[2, 2] = 1`` where that entry is not 0.
    """
    p = Path(path)
    if p.is_dir():
        raise UserError(f"--homography {p} is a folder, not a .json or .npy file")
    if not p.is_file():
        raise UserError(f"--homography: not found: {p}")
    try:
        if p.suffix.lower() == ".npy":
            h = np.load(p, allow_pickle=False)
        else:
            data = json.loads(p.read_text())
            h = data["homography"] if isinstance(data, dict) else data
        h = np.asarray(h)
        if not (np.issubdtype(h.dtype, np.floating) or np.issubdtype(h.dtype, np.integer)):
            raise ValueError(f"entries of type {h.dtype}, not real numbers")
        h = h.astype(np.float64)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--homography {p}: cannot read a 3x3 matrix ({exc})") from None
    if h.shape != (3, 3):
        raise UserError(f"--homography {p}: expected a 3x3 matrix, got shape {h.shape}")
    if not np.isfinite(h).all():
        raise UserError(f"--homography {p}: the matrix holds NaN or infinite entries")
    big = float(np.abs(h).max())
    if big == 0 or abs(np.linalg.det(h / big)) < 1e-12:
        raise UserError(f"--homography {p}: the matrix is singular (it maps the frame onto a "
                        "line or a point), not a homography")
    h = h / big
    return h / h[2, 2] if h[2, 2] else h


def homography_coverage(h: np.ndarray, ir_size: tuple[int, int],
                        vis_size: tuple[int, int], samples: int = 48) -> float:
    """Share of the visible frame that the infrared frame covers under ``h`` (0..1).

    ``h`` maps infrared pixels to visible pixels; sizes are ``(W, H)``. Measured on a grid of
    ``samples`` x ``samples`` visible pixels: a pixel counts when ``h^-1`` takes it into the
    infrared frame, as ``cv2.warpPerspective`` samples it (any sign of the homogeneous w, so
    ``h`` and ``-h`` cover the same). Elsewhere the warped infrared frame is only its border
    repeated, so a low share means the fused frame carries little infrared.
    """
    vw, vh = vis_size
    iw, ih = ir_size
    xs = (np.arange(samples) + 0.5) * vw / samples
    ys = (np.arange(samples) + 0.5) * vh / samples
    gx, gy = np.meshgrid(xs, ys)
    pts = np.stack([gx.ravel(), gy.ravel(), np.ones(gx.size)])
    q = np.linalg.inv(h) @ pts
    w = q[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        x, y = q[0] / w, q[1] / w
    inside = (np.abs(w) > 1e-12) & (x >= -0.5) & (x <= iw - 0.5) & (y >= -0.5) & (y <= ih - 0.5)
    return float(inside.mean())


def save_homography(path: str | os.PathLike, h: np.ndarray, **info: object) -> Path:
    """Write a homography atomically: ``.json`` with optional information fields, or ``.npy``
    (the bare matrix, which :func:`load_homography` reads back)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        buf = io.BytesIO()
        np.save(buf, np.asarray(h, np.float64), allow_pickle=False)
        atomic_write_bytes(p, buf.getvalue())
    elif suffix == ".json":
        atomic_write_text(p, json.dumps({"homography": np.asarray(h).tolist(), **info},
                                        indent=2))
    else:
        raise UserError(f"{p}: a homography is written as .json or .npy, not "
                        f"{p.suffix or 'a name without an extension'}")
    return p


def stretch_warning(ir_size: tuple[int, int], vis_size: tuple[int, int],
                    tolerance: float = 0.02) -> str | None:
    """A warning when resizing ``(W, H)`` infrared frames to the visible size would stretch
    them (aspect ratios more than ``tolerance`` apart), else None."""
    ratio = (ir_size[0] / ir_size[1]) / (vis_size[0] / vis_size[1])
    if abs(ratio - 1) <= tolerance:
        return None
    return (f"the infrared frames ({ir_size[0]}x{ir_size[1]}) and the visible ones "
            f"({vis_size[0]}x{vis_size[1]}) differ in aspect ratio: without --homography the "
            f"infrared frame is stretched {max(ratio, 1 / ratio):.2f}x along one axis "
            "(--estimate-homography H.json measures the alignment)")


class Aligner:
    """Bring an infrared frame onto the visible frame's pixel grid.

    Args:
        vis_size: ``(W, H)`` of the visible frames.
        homography: optional 3x3 matrix, infrared pixels -> visible pixels; without it the
            infrared frame is only resized.
    """

    def __init__(self, vis_size: tuple[int, int], homography: np.ndarray | None = None) -> None:
        self.vis_size = vis_size
        self.homography = homography

    def __call__(self, ir: np.ndarray) -> np.ndarray:
        w, h = self.vis_size
        if self.homography is not None:
            return cv2.warpPerspective(ir, self.homography, (w, h), flags=cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_REPLICATE)
        if (ir.shape[1], ir.shape[0]) == (w, h):
            return ir
        shrink = ir.shape[1] > w
        return cv2.resize(ir, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _edges(img: np.ndarray) -> np.ndarray:
    """Normalised gradient magnitude as uint8: a modality-robust picture of the scene's
    structure (infrared and visible intensities differ, their edges largely coincide)."""
    from refusion.imaging import as_bgr8

    g = cv2.cvtColor(as_bgr8(img), cv2.COLOR_BGR2GRAY)
    g = cv2.GaussianBlur(g, (3, 3), 0)
    mag = cv2.magnitude(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))
    hi = float(np.percentile(mag, 99)) or 1.0
    return np.clip(mag * (255.0 / hi), 0, 255).astype(np.uint8)


def estimate_homography(
    ir_frames: list[np.ndarray], vis_frames: list[np.ndarray], *, min_inliers: int = 12
) -> tuple[np.ndarray, dict]:
    """Estimate a fixed homography (infrared pixels -> visible pixels) from a few frame pairs.

    Method: each infrared frame is first resized to the visible size; ORB features are
    detected on gradient-magnitude maps of both (edges survive the change of modality),
    matches of all pairs are pooled and a RANSAC homography is fitted; the ECC algorithm then
    refines it on blurred edge maps of the first pair (starting from the identity when too few
    inliers remain, e.g. in low texture). The result includes the resize, so it applies to
    raw infrared frames.

    Returns:
        ``(H, info)``: the 3x3 float64 matrix and ``{"method", "inliers", "matches",
        "coverage"}`` (coverage: :func:`homography_coverage`; see
        :func:`homography_warnings` for judging them).
    """
    if not ir_frames or len(ir_frames) != len(vis_frames):
        raise UserError("homography estimation needs the same number (>= 1) of ir and vis frames")
    vh, vw = vis_frames[0].shape[:2]
    ih, iw = ir_frames[0].shape[:2]
    scale = np.diag([vw / iw, vh / ih, 1.0])
    orb = cv2.ORB_create(nfeatures=3000, fastThreshold=10)
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
    src, dst = [], []
    for ir, vis in zip(ir_frames, vis_frames):
        e_ir = _edges(cv2.resize(ir, (vw, vh), interpolation=cv2.INTER_LINEAR))
        e_vis = _edges(vis)
        k1, d1 = orb.detectAndCompute(e_ir, None)
        k2, d2 = orb.detectAndCompute(e_vis, None)
        if d1 is None or d2 is None:
            continue
        for m in matcher.match(d1, d2):
            src.append(k1[m.queryIdx].pt)
            dst.append(k2[m.trainIdx].pt)
    info: dict = {"matches": len(src), "inliers": 0, "method": "orb-ransac"}
    h_res = None
    if len(src) >= 4:
        h_res, mask = cv2.findHomography(np.float32(src), np.float32(dst), cv2.RANSAC, 3.0)
        info["inliers"] = int(mask.sum()) if mask is not None else 0
    orb_ok = h_res is not None and info["inliers"] >= min_inliers
    start = np.asarray(h_res, np.float64) if orb_ok else np.eye(3)
    # ECC on blurred edge maps refines the feature estimate (or replaces it in low texture)
    e_ir = cv2.GaussianBlur(_edges(cv2.resize(ir_frames[0], (vw, vh))), (7, 7), 0)
    e_vis = cv2.GaussianBlur(_edges(vis_frames[0]), (7, 7), 0)
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-6)
    try:
        # ECC finds W with vis(x) ~ ir(W x): W maps visible -> infrared, hence the inverses
        warp = np.linalg.inv(start).astype(np.float32)
        _, warp = cv2.findTransformECC(e_vis.astype(np.float32), e_ir.astype(np.float32), warp,
                                       cv2.MOTION_HOMOGRAPHY, crit, None, 5)
        h_res = np.linalg.inv(warp.astype(np.float64))
        info["method"] = "orb-ransac+ecc" if orb_ok else "ecc"
    except (cv2.error, np.linalg.LinAlgError):
        if not orb_ok:
            h_res = np.eye(3)
            info["method"] = "identity (no usable structure)"
    h = np.asarray(h_res, np.float64) @ scale
    h = h / h[2, 2]
    info["coverage"] = round(homography_coverage(h, (iw, ih), (vw, vh)), 3)
    return h, info


def homography_warnings(info: dict) -> list[str]:
    """What makes an estimate from :func:`estimate_homography` doubtful, as sentences.

    A pair of unrelated scenes still gives a RANSAC fit (tens of chance inliers among
    thousands of matches): a small share of inliers, or an infrared frame that no longer
    covers most of the visible one, says the frames did not show the same scene.
    """
    out = []
    matches, inliers = int(info.get("matches", 0)), int(info.get("inliers", 0))
    if str(info.get("method", "")).startswith("orb") and matches and inliers < 0.1 * matches:
        out.append(f"only {inliers} of {matches} feature matches ({100 * inliers / matches:.1f} %) "
                   "agree with the homography: do the two streams show the same scene?")
    cov = info.get("coverage")
    if cov is not None and cov < 0.5:
        out.append(f"under this homography the infrared frame covers {100 * cov:.0f} % of the "
                   "visible frame (its border is repeated over the rest)")
    return out
