"""Training data: paired folders, pair checks, the meta split and deterministic patch batches.

Layouts found under ``--data DIR`` (folder names case-insensitive), or one level below it (every
dataset folder found there is used):

* ``ir`` / ``vi`` (also ``vis``, ``infrared`` / ``visible``): infrared-visible;
* ``CT`` | ``PET`` | ``SPECT`` / ``MRI``: medical, the functional image first;
* ``A`` / ``B``: multi-focus; ``under`` / ``over``: multi-exposure;
* or explicit folders with ``--a DIR --b DIR``.

Pairs are matched by file stem. Every pair is decoded once before training starts: unreadable
files and pairs of different sizes are reported by name and skipped or fatal
(``data.on_error``), so nothing fails mid-epoch (with ``data.cache=false`` only a file
changed or removed after that check can). Colour becomes luma with OpenCV's YCrCb
convention (:func:`refusion.imaging.split_luma`); 8-bit files map to [0, 1] by 1/255, 16-bit
ones by robust percentiles, as at inference.

Batches are pure functions of ``(seed, stream, step)``: which pairs, where the crops fall and
which flips apply are drawn from a generator seeded by those three numbers. That makes a resumed
run draw exactly the batches the uninterrupted run would have drawn, lets DataLoader workers
prefetch without shared RNG state, and lets each process of a distributed run build the same
global batch plan and load only its own shard.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from refusion.errors import UserError
from refusion.imaging import (
    ImageFolder,
    list_image_folder,
    read_image,
    split_luma,
    to_display255,
)
from refusion.train.meta import Batch

# (a names, b names) per layout; the first name is the canonical one.
LAYOUTS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("ir", "infrared"), ("vi", "vis", "visible")),
    (("ct", "pet", "spect"), ("mri",)),
    (("a",), ("b",)),
    (("under",), ("over",)),
)
STREAM_META_TRAIN, STREAM_META_TEST, STREAM_FUSION = 1, 2, 3


@dataclass
class Pair:
    """One source pair on disk."""

    name: str  # "<dataset>/<stem>" or "<stem>"
    a: Path
    b: Path


@dataclass
class PairScan:
    """The pairs found, and what was wrong with the rest (``name: reason`` lines)."""

    pairs: list[Pair] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    where: str = ""  # the folders searched, for messages


def _images_by_stem(folder: Path, scan: PairScan) -> ImageFolder:
    listing = list_image_folder(folder)
    scan.problems += [f"{other}: two files with stem '{kept.stem}' in {folder}"
                      for kept, other in listing.duplicates]
    return listing


def _find_layouts(root: Path) -> list[tuple[Path, Path]]:
    subdirs = {d.name.lower(): d for d in root.iterdir() if d.is_dir()}
    found = []
    for a_names, b_names in LAYOUTS:
        a_dirs = [subdirs[n] for n in a_names if n in subdirs]
        b_dirs = [subdirs[n] for n in b_names if n in subdirs]
        if a_dirs and b_dirs:
            found.extend((ad, b_dirs[0]) for ad in a_dirs)
    return found


def match_pairs(dir_a: Path, dir_b: Path, prefix: str = "", scan: PairScan | None = None
                ) -> PairScan:
    """Pairs of ``dir_a``/``dir_b`` by file stem; unmatched files are listed as problems."""
    scan = scan or PairScan()
    for d in (dir_a, dir_b):
        if not d.is_dir():
            raise UserError(f"not a folder: {d}")
    scan.where = scan.where or f"{dir_a} and {dir_b}"
    la, lb = _images_by_stem(dir_a, scan), _images_by_stem(dir_b, scan)
    fa, fb = la.images, lb.images
    for here, there, other_dir in ((la, lb, dir_b), (lb, la, dir_a)):
        for stem in sorted(here.images.keys() - there.images.keys()):
            if stem not in there.broken:
                scan.problems.append(f"{here.images[stem]}: no file with stem '{stem}' in "
                                     f"{other_dir}")
        scan.problems += [here.broken_text(s) for s in sorted(here.broken)]
    for stem in sorted(fa.keys() & fb.keys()):
        scan.pairs.append(Pair(f"{prefix}{stem}", fa[stem], fb[stem]))
    for listing, d in ((la, dir_a), (lb, dir_b)):
        if not listing.images and not listing.broken and not listing.duplicates:
            scan.problems.append(f"{d}: {_no_images_text(d)}")
    return scan


def _no_images_text(folder: Path) -> str:
    """What a folder without images holds instead (images are read from the folder itself,
    not from its subfolders)."""
    subdirs, others = [], {}
    try:
        for p in folder.iterdir():
            if p.name.startswith("."):
                continue
            if p.is_dir():
                subdirs.append(p.name)
            else:
                ext = p.suffix.lower() or "(no extension)"
                others[ext] = others.get(ext, 0) + 1
    except OSError as exc:
        return f"holds no images that can be read ({exc.strerror or exc})"
    parts = [f"{n} {ext} file(s)" for ext, n in sorted(others.items())]
    if subdirs:
        parts.append("subfolders " + ", ".join(sorted(subdirs)[:5])
                     + (", ..." if len(subdirs) > 5 else "")
                     + " (images are read from the folder itself, not from subfolders)")
    hint = " (videos: use refusion-video)" if any(
        e in others for e in (".mp4", ".avi", ".mkv", ".mov")) else ""
    return "holds no images" + (": " + "; ".join(parts) if parts else " (empty)") + hint


def discover_pairs(root: str | Path | None = None, a: str | Path | None = None,
                   b: str | Path | None = None) -> PairScan:
    """Find the pairs of a training or validation folder (see the module docstring)."""
    if a or b:
        if not (a and b):
            raise UserError("give both --a and --b (or --data)")
        return match_pairs(Path(a), Path(b))
    if not root:
        raise UserError("no training data: give --data DIR (or --a DIR --b DIR)")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data folder not found: {root}")
    layouts = _find_layouts(root)
    if len(layouts) > 1:
        names = ", ".join(f"{x.name}/{y.name}" for x, y in layouts)
        raise UserError(f"{root} holds several source pairs ({names}); choose with --a and --b")
    if layouts:
        return match_pairs(*layouts[0])
    scan = PairScan(where=str(root))
    for sub in sorted(d for d in root.iterdir() if d.is_dir()):
        for da, db in _find_layouts(sub):
            prefix = f"{sub.name}/" if len(_find_layouts(sub)) == 1 else f"{sub.name}/{da.name}/"
            match_pairs(da, db, prefix, scan)
    if not scan.pairs and not scan.problems:
        raise UserError(
            f"no paired folders under {root} (expected ir/vi, CT|PET|SPECT/MRI, A/B or "
            "under/over, there or one level down; or give --a and --b)"
        )
    return scan


def load_luma(path: Path) -> np.ndarray:
    """``(H, W)`` float32 luma in [0, 1] of an 8/16-bit grey or colour file.

    16-bit files are mapped by robust percentiles, as ``refusion-fuse`` and the engine map
    them (:func:`refusion.imaging.to_display255`), so that a model sees the same inputs in
    training and at inference (a radiometric 2000..4000 thermal frame would otherwise be a
    nearly black 0.03..0.06 here and a full-range image there).
    """
    img = read_image(path)
    if img.dtype == np.uint16:
        img = to_display255(img)
    y, _ = split_luma(img)
    return np.ascontiguousarray(y, dtype=np.float32)


@dataclass
class LoadedPair:
    name: str
    a: np.ndarray  # (H, W) float32
    b: np.ndarray


class FilePair:
    """A checked pair kept as file names: ``a`` and ``b`` decode the files at each access
    (``data.cache=false``: datasets larger than memory; ``data.workers`` decode in parallel).
    """

    __slots__ = ("name", "path_a", "path_b")

    def __init__(self, name: str, path_a: Path, path_b: Path) -> None:
        self.name, self.path_a, self.path_b = name, path_a, path_b

    @property
    def a(self) -> np.ndarray:
        return _reload(self.path_a)

    @property
    def b(self) -> np.ndarray:
        return _reload(self.path_b)


def _reload(path: Path) -> np.ndarray:
    try:
        return load_luma(path)
    except UserError as exc:  # checked at the start: it changed or went away since
        raise UserError(f"{exc} (the file was readable when training started)") from None


def check_and_load(scan: PairScan, on_error: str, what: str = "training",
                   progress: bool = False, report: bool = True, keep: bool = True
                   ) -> list[LoadedPair] | list[FilePair]:
    """Decode every pair once; report unreadable or mismatched pairs by name.

    Returns the good pairs: decoded lumas kept in memory, or with ``keep=False`` as
    :class:`FilePair` (file names only; decoded again when used). ``on_error='fail'`` turns
    any problem into one :class:`UserError`; ``'skip'`` prints them to stderr (when
    ``report``: one process of a torchrun group says it for all) and goes on.
    """
    problems = list(scan.problems)
    good: list[LoadedPair] = []
    it = scan.pairs
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"checking {what} pairs", leave=False, file=sys.stderr)
    for pair in it:
        try:
            ya, yb = load_luma(pair.a), load_luma(pair.b)
        except UserError as exc:
            problems.append(f"{pair.name}: {exc}")
            continue
        if ya.shape != yb.shape:
            problems.append(
                f"{pair.name}: size mismatch, {pair.a} is {ya.shape[1]}x{ya.shape[0]}, "
                f"{pair.b} is {yb.shape[1]}x{yb.shape[0]}"
            )
            continue
        good.append(LoadedPair(pair.name, ya, yb) if keep
                    else FilePair(pair.name, pair.a, pair.b))
    if problems:
        # every one by name: the error is one line; the warning one line each under a summary
        if on_error == "fail":
            raise UserError(f"{len(problems)} problem(s) in the {what} data (data.on_error="
                            f"fail): {'; '.join(problems)}")
        listing = (f" {problems[0]}" if len(problems) == 1
                   else "".join(f"\n  {p}" for p in problems))
        if report:
            print(f"refusion-train: warning: skipped {len(problems)} {what} file(s)/pair(s):"
                  f"{listing}", file=sys.stderr)
    if not good:
        raise UserError(f"no usable {what} pairs" + (f" in {scan.where}" if scan.where else ""))
    return good


def split_meta(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of ``range(n)`` into (meta-training, meta-testing) index lists.

    With a single pair both subsets are that pair (nothing else is possible).
    """
    if n == 1:
        return [0], [0]
    perm = np.random.default_rng(seed).permutation(n).tolist()
    n_test = min(n - 1, max(1, round(fraction * n)))
    return sorted(perm[n_test:]), sorted(perm[:n_test])


def crop_patch(img: np.ndarray, size: int, uy: float, ux: float) -> np.ndarray:
    """A ``size x size`` window at relative offsets ``uy, ux`` in [0, 1); images smaller than
    the window are first extended by mirroring (``symmetric``, valid for any size)."""
    h, w = img.shape
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        img = np.pad(img, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="symmetric")
        while img.shape[0] < size or img.shape[1] < size:  # tiny images: mirror again
            ph, pw = max(0, size - img.shape[0]), max(0, size - img.shape[1])
            img = np.pad(img, ((0, min(ph, img.shape[0])), (0, min(pw, img.shape[1]))),
                         mode="symmetric")
        h, w = img.shape
    y0, x0 = int(uy * (h - size + 1)), int(ux * (w - size + 1))
    return img[y0:y0 + size, x0:x0 + size]


def batch_plan(pool: list[int], batch: int, seed: int, stream: int, step: int) -> np.ndarray:
    """Rows ``(pair index, uy, ux, flip_h, flip_v)`` of the global batch of one step."""
    rng = np.random.default_rng([seed, stream, step])
    idx = rng.integers(0, len(pool), size=batch)
    u = rng.random((batch, 2))
    flips = rng.random((batch, 2)) < 0.5
    return np.column_stack([np.asarray(pool)[idx], u, flips])


def make_batch(pairs: list[LoadedPair] | list[FilePair], plan: np.ndarray, size: int,
               flips: bool) -> Batch:
    """Load the rows of a plan into a :class:`Batch` of ``(len(plan), 1, size, size)``."""
    xa, xb = [], []
    for row in plan:
        pair = pairs[int(row[0])]
        pa, pb = (crop_patch(im, size, row[1], row[2]) for im in (pair.a, pair.b))
        if flips and row[3]:
            pa, pb = pa[:, ::-1], pb[:, ::-1]
        if flips and row[4]:
            pa, pb = pa[::-1], pb[::-1]
        xa.append(np.ascontiguousarray(pa))
        xb.append(np.ascontiguousarray(pb))
    return Batch(torch.from_numpy(np.stack(xa))[:, None], torch.from_numpy(np.stack(xb))[:, None])


class StepBatches(Dataset):
    """Map-style dataset over *training steps*: item ``s`` is what step ``s`` consumes.

    A meta step gets ``{"train": Batch, "test": Batch}`` and a fusion step
    ``{"fusion": Batch}``, each this process's shard ``[rank*b:(rank+1)*b]`` of a global batch
    of ``batch * world`` rows.

    Args:
        pairs: decoded pairs; meta_train, meta_test: index lists of the meta split.
        is_meta: ``is_meta(step) -> bool`` from the schedule.
        batch: per-process batch; world, rank: distributed layout.
    """

    def __init__(self, pairs: list[LoadedPair] | list[FilePair], meta_train: list[int],
                 meta_test: list[int], is_meta, *, batch: int, patch: int, flips: bool,
                 seed: int, total: int, world: int = 1, rank: int = 0) -> None:
        self.pairs, self.meta_train, self.meta_test = pairs, meta_train, meta_test
        self.all = list(range(len(pairs)))
        self.is_meta, self.batch, self.patch, self.flips = is_meta, batch, patch, flips
        self.seed, self.total, self.world, self.rank = seed, total, world, rank

    def __len__(self) -> int:
        return self.total

    def _shard(self, pool: list[int], stream: int, step: int) -> Batch:
        plan = batch_plan(pool, self.batch * self.world, self.seed, stream, step)
        mine = plan[self.rank * self.batch:(self.rank + 1) * self.batch]
        return make_batch(self.pairs, mine, self.patch, self.flips)

    def __getitem__(self, step: int) -> dict[str, Batch]:
        if self.is_meta(step):
            return {"train": self._shard(self.meta_train, STREAM_META_TRAIN, step),
                    "test": self._shard(self.meta_test, STREAM_META_TEST, step)}
        return {"fusion": self._shard(self.all, STREAM_FUSION, step)}


def centre_crop(img: np.ndarray, max_side: int) -> np.ndarray:
    """At most ``max_side x max_side`` from the centre (validation of large images stays fast)."""
    h, w = img.shape
    y0, x0 = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
    return img[y0:y0 + max_side, x0:x0 + max_side]


def collate_single(item):
    """DataLoader ``collate_fn`` for items that already are batches."""
    return item
