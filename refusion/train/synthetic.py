"""Generated source pairs from scikit-image's bundled photographs (nothing is downloaded).

* Multi-focus: a random smooth region mask ``M``; source a is sharp inside ``M`` and
  Gaussian-blurred outside, source b the opposite. The photo is the all-in-focus reference.
* Multi-exposure: a small camera model. The photo is taken as the 0 EV exposure of a scene
  (display gamma 2.2); source a is shot 1.5-2.5 stops under, source b 1.5-2.5 stops over, each
  with shot and read noise in linear light, clipped at full well and quantised to 8 bits. So
  each source loses what the other keeps, as in a real bracket: a's shadows drown in noise and
  quantisation, b's highlights clip.

All images are luma in [0, 1] (OpenCV YCrCb convention for the colour photographs).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Bundled with scikit-image (no pooch download). Held-out photos are never used for training.
TRAIN_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
                "hubble_deep_field", "brick", "grass", "gravel", "clock")
TEST_PHOTOS = ("camera", "coins", "moon")


@dataclass
class SynthPair:
    """A generated pair with its reference (all ``(H, W)`` float32 in [0, 1])."""

    name: str
    a: np.ndarray
    b: np.ndarray
    reference: np.ndarray
    mask: np.ndarray  # 1 where source a holds the better content (in focus / well exposed)


def photo(name: str, side: int = 256) -> np.ndarray:
    """A bundled photograph as luma in [0, 1], resized so that its short side is ``side``."""
    from skimage import data

    img = np.asarray(getattr(data, name)())
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img[..., :3][..., ::-1]), cv2.COLOR_BGR2YCrCb)[
            ..., 0]
    img = img.astype(np.float32) / 255.0
    h, w = img.shape
    s = side / min(h, w)
    return cv2.resize(img, (max(side, round(w * s)), max(side, round(h * s))),
                      interpolation=cv2.INTER_AREA)


def photo_pair(h: int, w: int, names: tuple[str, str] = ("astronaut", "coffee")) -> np.ndarray:
    """Two different bundled photographs as one network input: ``(1, 2, h, w)`` float32 in
    [0, 1] (for speed and precision checks, where noise would exaggerate reduced-precision
    errors)."""
    a, b = (cv2.resize(photo(n, min(h, w)), (w, h), interpolation=cv2.INTER_AREA)
            for n in names)
    return np.stack([a, b])[None].astype(np.float32)


def available_photos(names: tuple[str, ...]) -> list[str]:
    """The names that load on this machine (older scikit-image versions lack some)."""
    from skimage import data

    out = []
    for n in names:
        try:
            getattr(data, n)()
        except Exception:  # noqa: BLE001 - a missing or undownloadable photo is just skipped
            continue
        out.append(n)
    return out


def random_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth random region covering roughly half the image (float32 0/1)."""
    h, w = shape
    noise = rng.standard_normal((max(2, h // 32), max(2, w // 32))).astype(np.float32)
    field = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    field = cv2.GaussianBlur(field, (0, 0), max(h, w) / 16)
    return (field > np.median(field)).astype(np.float32)


def multifocus_pair(img: np.ndarray, rng: np.random.Generator, name: str = "") -> SynthPair:
    """Sharp/blurred complementary regions of one photo (blur sigma drawn in [1.5, 3])."""
    mask = random_mask(img.shape, rng)
    blurred = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(1.5, 3.0)))
    a = mask * img + (1 - mask) * blurred
    b = (1 - mask) * img + mask * blurred
    return SynthPair(name, a.astype(np.float32), b.astype(np.float32), img, mask)


# Sensor noise of the multi-exposure camera model, in linear light relative to full well:
# read noise 0.2 % of full well, shot noise of a 1,000-electron well.
READ_NOISE = 2e-3
SHOT_NOISE = 1e-3


def exposure(linear: np.ndarray, stops: float, rng: np.random.Generator) -> np.ndarray:
    """One 8-bit shot of a linear-light scene ``(H, W)`` at ``stops`` EV (float32 in [0, 1]).

    Shot and read noise are added in linear light, the signal clips at full well, and the
    display value (gamma 1/2.2) is quantised to 8 bits.
    """
    x = linear * 2.0 ** stops
    x = x + rng.standard_normal(x.shape) * np.sqrt(READ_NOISE**2 + SHOT_NOISE * x)
    return (np.round(np.clip(x, 0, 1) ** (1 / 2.2) * 255) / 255).astype(np.float32)


def well_exposedness(display: np.ndarray) -> np.ndarray:
    """Closeness to mid-grey, ``exp(-(x - 1/2)^2 / (2 * 0.2^2))`` (Mertens et al.'s measure)."""
    return np.exp(-((display - 0.5) ** 2) / (2 * 0.2**2))


def multiexposure_pair(img: np.ndarray, rng: np.random.Generator, name: str = "") -> SynthPair:
    """An under- and an over-exposed shot of one photo (the camera model of the module doc).

    The mask marks where the noise-free under-exposed value is closer to mid-grey than the
    over-exposed one (the photo's highlights).
    """
    linear = img.astype(np.float64) ** 2.2
    under, over = rng.uniform(-2.5, -1.5), rng.uniform(1.5, 2.5)
    a, b = exposure(linear, under, rng), exposure(linear, over, rng)
    clean_a, clean_b = (np.clip(linear * 2.0**s, 0, 1) ** (1 / 2.2) for s in (under, over))
    mask = (well_exposedness(clean_a) >= well_exposedness(clean_b)).astype(np.float32)
    return SynthPair(name, a, b, img, mask)


def make_pairs(task: str, photos: list[str], per_photo: int, seed: int, side: int = 256
               ) -> list[SynthPair]:
    """``per_photo`` generated pairs of each photo (``task``: ``mfif`` or ``meif``)."""
    rng = np.random.default_rng(seed)
    gen = multifocus_pair if task == "mfif" else multiexposure_pair
    return [gen(photo(n, side), rng, f"{n}_{i}") for n in photos for i in range(per_photo)]


def multifocus_pairs(photos: list[str], per_photo: int, seed: int, side: int = 256, *,
                     sigma: tuple[float, float] = (1.5, 3.0), both_orders: bool = False
                     ) -> list[SynthPair]:
    """Multi-focus pairs as :func:`make_pairs` ``("mfif", ...)`` makes them, with the blur sigma
    drawn in ``sigma`` (the default range gives exactly ``make_pairs``'s pairs).

    ``both_orders`` appends every pair once more with its sources swapped (name suffix ``_ba``,
    mask inverted), so that neither input channel is the in-focus one more often than the other.
    """
    rng = np.random.default_rng(seed)
    out = []
    for n in photos:
        img = photo(n, side)
        for i in range(per_photo):
            mask = random_mask(img.shape, rng)
            blurred = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(*sigma)))
            a = (mask * img + (1 - mask) * blurred).astype(np.float32)
            b = ((1 - mask) * img + mask * blurred).astype(np.float32)
            out.append(SynthPair(f"{n}_{i}", a, b, img, mask))
    if both_orders:
        out += [SynthPair(f"{p.name}_ba", p.b, p.a, p.reference, 1 - p.mask) for p in out]
    return out


def write_pairs(pairs: list[SynthPair], root, task: str) -> None:
    """Write pairs as 8-bit PNGs in the task's layout (``A``/``B`` or ``under``/``over``)."""
    from pathlib import Path

    da, db = ("A", "B") if task == "mfif" else ("under", "over")
    for d in (da, db):
        (Path(root) / d).mkdir(parents=True, exist_ok=True)
    for p in pairs:
        for d, x in ((da, p.a), (db, p.b)):
            cv2.imwrite(str(Path(root) / d / f"{p.name}.png"),
                        np.clip(np.round(x * 255), 0, 255).astype(np.uint8))
