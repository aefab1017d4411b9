"""Image I/O and the colour path shared by every command and backend.

Colour convention (the authors'): each source is converted with OpenCV's float YCrCb transform
of its 0..255 values (``Y = 0.299 R + 0.587 G + 0.114 B``; for float input OpenCV centres the
chroma at 0.5); the network fuses the two lumas ``Y/255``; the chroma of the output comes from
the colour source, or, when both are in colour, from both, each pixel weighted by its distance
from neutral (``|C - 0.5|``). A three-channel image whose channels are equal counts as grey.

Output scaling: ``fixed`` maps the network's [0, 1] to [0, 255] (stable across video frames);
``minmax`` stretches each image's own min..max to 0..255, as the authors' test script does.

16-bit inputs (radiometric thermal cameras use a few thousand of the 65536 levels) are mapped to
0..255 by robust percentiles (0.5 % and 99.5 % by default, then clipped), never by truncating
to the low byte; for video a :class:`RangeTracker` smooths the percentile bounds over time so
that the brightness does not pump from frame to frame.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from refusion.errors import UserError
from refusion.utils.atomic import atomic_path

Normalize = Literal["fixed", "minmax"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


@dataclass
class ImageFolder:
    """The images of one folder by file stem, and what could not be listed as one.

    ``images``: stem -> file. ``broken``: stem -> a link whose target does not exist (listed
    so that its partner is not reported as unpaired). ``duplicates``: ``(kept, other)`` files
    sharing a stem (``a.png`` and ``a.tif``); the first in name order is kept.
    """

    folder: Path
    images: dict[str, Path]
    broken: dict[str, Path]
    duplicates: list[tuple[Path, Path]]

    def broken_text(self, stem: str) -> str:
        """``'<link>: broken link to <target>'`` for a stem in :attr:`broken`."""
        link = self.broken[stem]
        try:
            target = os.readlink(link)
        except OSError:
            target = "?"
        return f"{link}: broken link to {target} (no such file)"

    def require_unique(self, prefix: str = "") -> ImageFolder:
        """Raise :class:`UserError` (``prefix`` first) when two files share a stem (which one
        is meant is ambiguous where files pair by stem); returns ``self``."""
        if self.duplicates:
            kept, other = self.duplicates[0]
            raise UserError(f"{prefix}two images named {kept.stem!r} in {self.folder}: "
                            f"{kept.name} and {other.name}")
        return self

    def unpaired(self, other: ImageFolder) -> list[str]:
        """One line per image here whose stem is neither an image nor a broken link there."""
        return [f"{self.images[s]} has no partner in {other.folder}"
                for s in sorted(self.images.keys() - other.images.keys() - other.broken.keys())]


def list_image_folder(folder: str | os.PathLike) -> ImageFolder:
    """List ``folder``'s images (the usual formats, by suffix) by file stem.

    Hidden files (``.name``, e.g. macOS ``._name.png`` forks) are not images. One listing for
    every command (fusion, training, evaluation), so that all of them pair the same files.

    Raises:
        UserError: ``folder`` is not a folder or cannot be read.
    """
    d = Path(folder)
    if not d.is_dir():
        raise UserError(f"no such folder: {d}")
    res = ImageFolder(d, {}, {}, [])
    try:
        entries = sorted(d.iterdir())
    except OSError as exc:
        raise UserError(f"cannot read the folder {d} ({exc.strerror or exc})") from None
    for p in entries:
        if p.name.startswith(".") or p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if p.is_file():
            if p.stem in res.images:
                res.duplicates.append((res.images[p.stem], p))
            else:
                res.images[p.stem] = p
        elif p.is_symlink() and not p.exists():
            res.broken.setdefault(p.stem, p)
    for stem in res.broken.keys() & res.images.keys():
        del res.broken[stem]  # a real file of that stem serves
    return res


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as stored (grey ``(H, W)`` or BGR ``(H, W, 3)``, 8- or 16-bit).

    Alpha channels are dropped. Raises :class:`UserError` naming the file when it is missing
    or cannot be decoded.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"image not found: {p}")
    try:
        data = np.fromfile(str(p), dtype=np.uint8)
    except OSError as exc:
        raise UserError(f"cannot read image {p}: {exc.strerror or exc}") from None
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    except cv2.error as exc:
        # e.g. a header declaring more pixels than OpenCV allows (CV_IO_MAX_IMAGE_PIXELS)
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "OpenCV error"
        raise UserError(f"cannot decode image: {p} ({reason.strip()})") from None
    if img is None:
        raise UserError(f"cannot decode image: {p}")
    if img.dtype not in (np.uint8, np.uint16, np.float32):
        raise UserError(f"unsupported pixel type {img.dtype} in {p}")
    if img.dtype.kind == "f":
        # scaled here, where file data enters (arrays already mapped to 0..255 by the video
        # path's 16-bit range tracking may lie within 0..1 too, and must stay as they are)
        img = unit_float_to_255(img)
    # the checks arrays get too: channels, NaN/Inf, clipping to 0..255 (the network takes
    # [0, 1])
    return check_source(img, str(p), warn_unit=False)


#: how far a float file's values may lie outside 0..1 and still be on the 0..1 scale (a
#: network's output under- and overshoots a little)
UNIT_FLOAT_SLACK = 0.05


def unit_float_to_255(img: np.ndarray) -> np.ndarray:
    """Float pixel data of a file on the 0..1 scale (the usual float convention, e.g. a float
    TIFF) scaled to 0..255; anything else (integers, floats on 0..255) returned as it is.

    0..1 means: every value within -0.05..1.05 (:data:`UNIT_FLOAT_SLACK`: a network's slight
    under- or overshoot does not turn a 0..1 image into a 0..255 one; callers clip). The one
    place this rule lives: fusion, training and the metrics read files through it.
    """
    if (img.dtype.kind == "f" and img.size and img.min() >= -UNIT_FLOAT_SLACK
            and img.max() <= 1.0 + UNIT_FLOAT_SLACK):
        return img * img.dtype.type(255.0)
    return img


#: channels this many 8-bit levels apart still count as grey in :func:`split_luma`: a grey
#: camera's frames decoded from a lossy video differ by a few (the M3SVD infrared clips,
#: H.264, by up to 3)
GRAY_TOLERANCE = 4


def is_gray(img: np.ndarray, tolerance: float = 0) -> bool:
    """True for single-channel images and three-channel images with equal channels (at most
    ``tolerance`` levels of the 0..255 scale apart)."""
    if img.ndim == 2:
        return True
    c0, c1, c2 = img[..., 0], img[..., 1], img[..., 2]
    if tolerance <= 0:
        return bool(np.array_equal(c0, c1) and np.array_equal(c1, c2))
    tol = tolerance * (257 if img.dtype == np.uint16 else 1)  # floats: on 0..255 by now
    return bool(cv2.absdiff(c0, c1).max() <= tol and cv2.absdiff(c1, c2).max() <= tol)


def to_float255(img: np.ndarray) -> np.ndarray:
    """Pixel values as float32 on the 0..255 scale (16-bit divided by 257, float kept: a
    float file within 0..1 was already scaled by :func:`read_image`)."""
    if img.dtype == np.uint8:
        return img.astype(np.float32)
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 257.0
    return img.astype(np.float32)


def split_luma(img: np.ndarray, gray: bool | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Return ``(Y/255 as float32 (H, W), CrCb float32 (H, W, 2) or None for grey)``.

    Grey: one channel, or three within :data:`GRAY_TOLERANCE` levels of each other; ``gray``
    makes that decision for a three-channel image instead (a video stream decides once, so
    that its frames do not switch between grey and colour)."""
    f = to_float255(img)
    if img.ndim == 2 or (is_gray(img, GRAY_TOLERANCE) if gray is None else gray):
        y = f if f.ndim == 2 else cv2.cvtColor(f, cv2.COLOR_BGR2YCrCb)[..., 0]
        return np.ascontiguousarray(y / 255.0, dtype=np.float32), None
    ycrcb = cv2.cvtColor(f, cv2.COLOR_BGR2YCrCb)
    return np.ascontiguousarray(ycrcb[..., 0] / 255.0), np.ascontiguousarray(ycrcb[..., 1:])


def fuse_chroma(crcb_a: np.ndarray, crcb_b: np.ndarray) -> np.ndarray:
    """Combine two chroma planes, weighting each pixel by its distance from neutral (0.5)."""
    wa = np.abs(crcb_a - 0.5)
    wb = np.abs(crcb_b - 0.5)
    return (crcb_a * wa + crcb_b * wb) / (wa + wb + 1e-4)


def robust_bounds(
    img: np.ndarray, lo_pct: float = 0.5, hi_pct: float = 99.5
) -> tuple[float, float]:
    """Percentile bounds ``(lo, hi)`` of an image's values (all channels together).

    Large images are subsampled 2x2 for speed (percentiles barely move).
    """
    sample = img[::2, ::2] if img.shape[0] * img.shape[1] > 250_000 else img
    lo, hi = np.percentile(sample, (lo_pct, hi_pct))
    return float(lo), float(hi)


def map_range(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``(img - lo) / (hi - lo)`` clipped to [0, 1], as float32 on the 0..255 scale.

    Bounds less than one level apart (a flat 16-bit frame: a lens cap, a uniform scene) hold
    no contrast to stretch; such a frame is scaled as 16-bit data, ``img / 257``, instead of
    going to black.
    """
    if hi - lo < 1.0:
        flat = img.astype(np.float32) / np.float32(257.0)
        return np.clip(flat, 0.0, 255.0, out=flat)
    span = hi - lo
    out = (img.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / span)
    return np.clip(out, 0.0, 255.0, out=out)


class RangeTracker:
    """Robust 16-bit -> 0..255 mapping with exponentially smoothed bounds (for video).

    Args:
        lo_pct, hi_pct: percentiles that map to 0 and 255.
        smoothing: weight of the previous bounds in ``bounds = s * old + (1 - s) * new``
            (0 = every frame on its own; 0.9 follows a scene change within about 20 frames).

    Example:
        >>> t = RangeTracker()
        >>> y = t(np.full((4, 4), 3000, np.uint16))  # float32 (4, 4) on 0..255
    """

    def __init__(self, lo_pct: float = 0.5, hi_pct: float = 99.5, smoothing: float = 0.9) -> None:
        if not 0 <= lo_pct < hi_pct <= 100:
            raise UserError(f"percentiles must satisfy 0 <= lo < hi <= 100, got {lo_pct}, {hi_pct}")
        self.lo_pct, self.hi_pct, self.smoothing = lo_pct, hi_pct, smoothing
        self.bounds: tuple[float, float] | None = None

    def update(self, img: np.ndarray) -> tuple[float, float]:
        """Fold this frame's percentiles into the running bounds and return them."""
        lo, hi = robust_bounds(img, self.lo_pct, self.hi_pct)
        if self.bounds is not None:
            s = self.smoothing
            lo = s * self.bounds[0] + (1 - s) * lo
            hi = s * self.bounds[1] + (1 - s) * hi
        self.bounds = (lo, hi)
        return self.bounds

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """Map one frame to float32 0..255 with the updated bounds."""
        return map_range(img, *self.update(img))


def to_display255(img: np.ndarray, tracker: RangeTracker | None = None) -> np.ndarray:
    """Any supported input as float32 on 0..255: 8-bit as is, 16-bit by robust percentiles
    (through ``tracker`` when given, for temporal smoothing), float kept."""
    if img.dtype == np.uint16:
        if tracker is None:
            return map_range(img, *robust_bounds(img))
        return tracker(img)
    return to_float255(img)


@dataclass
class PreparedPair:
    """Network-ready lumas of a pair and the chroma to put back on the fused image."""

    a: np.ndarray  # (H, W) float32 in [0, 1]
    b: np.ndarray  # (H, W) float32 in [0, 1]
    chroma: np.ndarray | None  # (H, W, 2) float32 or None for a grey result


_SOURCE_DTYPES = (np.uint8, np.uint16, np.float16, np.float32, np.float64)


def check_source(img: np.ndarray, name: str = "image", warn_unit: bool = True) -> np.ndarray:
    """A source image as :func:`prepare_pair` takes it, or one :class:`UserError` naming it.

    Arrays get the checks that :func:`read_image` gives files: ``(H, W)``, ``(H, W, 1)``
    (squeezed) or ``(H, W, 3)`` BGR (``(H, W, 4)``: alpha dropped), not empty, uint8, uint16
    or float (as float32, on the 0..255 scale, finite, clipped to 0..255); a non-native byte
    order is converted. A float array that lies within 0..1 gets a warning (``warn_unit``:
    :func:`read_image` has scaled its files already): the 0..1 rule of files
    (:func:`unit_float_to_255`) is not applied to arrays, whose scale is the caller's.
    """
    if not isinstance(img, np.ndarray):
        raise UserError(f"{name}: expected a numpy image, got {type(img).__name__}")
    if img.ndim == 3 and img.shape[2] in (1, 4):
        img = img[:, :, 0] if img.shape[2] == 1 else img[:, :, :3]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise UserError(f"{name}: expected an (H, W) or (H, W, 3) BGR image, got shape "
                        f"{tuple(img.shape)}")
    if img.size == 0:
        raise UserError(f"{name}: empty image {tuple(img.shape)}")
    if not img.dtype.isnative:
        img = img.astype(img.dtype.newbyteorder("="))
    if img.dtype.type not in _SOURCE_DTYPES:
        raise UserError(f"{name}: pixel type {img.dtype} is not supported (uint8, uint16 or "
                        "float on 0..255)")
    if img.dtype.kind == "f":
        img = img.astype(np.float32, copy=False)
        if not np.all(np.isfinite(img)):
            raise UserError(f"{name} contains NaN or Inf")
        if warn_unit and 0 < img.max() <= 1.0 + UNIT_FLOAT_SLACK:
            import warnings

            warnings.warn(f"{name}: float values within 0..1; sources are taken on the 0..255 "
                          "scale (multiply by 255), as image files within 0..1 are when read",
                          UserWarning, stacklevel=3)
        img = np.clip(img, 0.0, 255.0)
    return img


def prepare_pair(
    img_a: np.ndarray,
    img_b: np.ndarray,
    name_a: str = "a",
    name_b: str = "b",
    *,
    trackers: tuple[RangeTracker | None, RangeTracker | None] = (None, None),
    gray: tuple[bool | None, bool | None] = (None, None),
) -> PreparedPair:
    """Lumas and output chroma of a pair (see the module docstring for the colour rule).

    Args:
        img_a, img_b: ``(H, W)`` or ``(H, W, 3)`` BGR, uint8, uint16 or float (0..255);
            checked by :func:`check_source`.
        name_a, name_b: names used in error messages.
        trackers: per-source :class:`RangeTracker` for 16-bit video frames (smoothed bounds);
            ``None`` maps a 16-bit image by its own percentiles.
        gray: per source, whether a three-channel image counts as grey (``None``: decided
            from the image, see :func:`split_luma`).
    """
    img_a, img_b = check_source(img_a, name_a), check_source(img_b, name_b)
    if img_a.shape[:2] != img_b.shape[:2]:
        raise UserError(
            f"size mismatch: {name_a} is {img_a.shape[1]}x{img_a.shape[0]}, "
            f"{name_b} is {img_b.shape[1]}x{img_b.shape[0]}"
        )
    if img_a.dtype == np.uint16:
        img_a = to_display255(img_a, trackers[0])
    if img_b.dtype == np.uint16:
        img_b = to_display255(img_b, trackers[1])
    ya, ca = split_luma(img_a, gray[0])
    yb, cb = split_luma(img_b, gray[1])
    if ca is None:
        chroma = cb
    elif cb is None:
        chroma = ca
    else:
        chroma = fuse_chroma(ca, cb)
    return PreparedPair(ya, yb, chroma)


def to_uint8(fused01: np.ndarray, normalize: Normalize = "fixed") -> np.ndarray:
    """Map a fused luma in [0, 1] to 0..255 float32 (not yet rounded)."""
    f = np.asarray(fused01, dtype=np.float32)
    if normalize == "minmax":
        lo, hi = float(f.min()), float(f.max())
        f = (f - lo) / (hi - lo) if hi > lo else np.zeros_like(f)
    elif normalize != "fixed":
        raise UserError(f"--normalize must be 'fixed' or 'minmax', got {normalize!r}")
    return np.clip(f, 0.0, 1.0) * 255.0


def compose(
    fused01: np.ndarray, chroma: np.ndarray | None, normalize: Normalize = "fixed"
) -> np.ndarray:
    """Final 8-bit image: grey ``(H, W)`` or BGR ``(H, W, 3)`` with the pair's chroma."""
    y = to_uint8(fused01, normalize)
    if chroma is None:
        return np.clip(np.rint(y), 0, 255).astype(np.uint8)
    ycrcb = np.concatenate([y[..., None], chroma.astype(np.float32)], axis=2)
    bgr = cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR)
    return np.clip(np.rint(bgr), 0, 255).astype(np.uint8)


def as_bgr8(img: np.ndarray) -> np.ndarray:
    """Any input image as displayable 8-bit BGR ``(H, W, 3)`` (16-bit by robust percentiles)."""
    f = to_display255(img)
    u8 = np.clip(np.rint(f), 0, 255).astype(np.uint8)
    return cv2.cvtColor(u8, cv2.COLOR_GRAY2BGR) if u8.ndim == 2 else u8


def panel(*images: np.ndarray, height: int | None = None) -> np.ndarray:
    """Side-by-side 8-bit BGR panel of images (resized to one height, aspect kept).

    Shape:
        - Inputs: ``(H_i, W_i)`` or ``(H_i, W_i, 3)``, any supported dtype
        - Output: ``(H, sum W_i', 3)`` uint8
    """
    tiles = [as_bgr8(im) for im in images]
    h = height or max(t.shape[0] for t in tiles)
    out = []
    for t in tiles:
        if t.shape[0] != h:
            w = max(1, round(t.shape[1] * h / t.shape[0]))
            t = cv2.resize(t, (w, h), interpolation=cv2.INTER_AREA)
        out.append(t)
    return np.concatenate(out, axis=1)


def check_image_ext(ext: str, option: str) -> str:
    """``ext`` (``".png"``, ``"tif"``...) normalised with its dot, if OpenCV can write it.

    ``option`` names where the user gave it, for the one-line error otherwise.
    """
    ext = (ext if ext.startswith(".") else f".{ext}").lower()
    if ext == "." or not cv2.haveImageWriter(f"x{ext}"):
        raise UserError(f"{option}: cannot write images as {ext!r} "
                        "(use .png, .tif, .jpg, .bmp, .webp and the like)")
    return ext


def write_image(path: str | os.PathLike, img: np.ndarray) -> Path:
    """Write an image atomically; the format follows the file extension."""
    dest = Path(path)
    ext = check_image_ext(dest.suffix or ".png", str(dest))
    ok, buf = cv2.imencode(ext, img)
    if not ok:
        raise UserError(f"cannot encode an image as {ext} for {dest}")
    try:
        with atomic_path(dest) as tmp:
            tmp.write_bytes(buf.tobytes())
    except OSError as exc:
        raise UserError(f"cannot write {dest}: {exc.strerror}") from None
    return dest
