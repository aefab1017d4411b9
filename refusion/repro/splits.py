"""The train / validation / test splits of the reproduction, from ``shared/data``.

Per task (issue 9; the test pairs are never trained on, and recipes are chosen on the
validation pairs, which are held out of training too):

* ``ivif``: train MSRS_train + LLVIP ``split_train.txt`` + VIFB + M3FD; test MSRS_test + TNO.
* ``mif``: each Harvard folder split 85 % train / 15 % test (seeded, per folder).
* ``mfif``: train the MFIFB pairs that are not ``lytro_*``; test the 20 Lytro pairs.
* ``meif``: MEFB split 80 % train / 20 % test (seeded).

In every task a seeded 10 % of the training pool (at least one pair) is the validation set.
A split is a plain list of pair names ``<dataset>/<stem>`` and can be written to JSON, so the
exact split of a reported result is on record.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from refusion.errors import UserError
from refusion.train.data import Pair, _find_layouts, match_pairs
from refusion.utils.atomic import atomic_write_text

TEST_FRACTION = {"mif": 0.15, "meif": 0.2}
VAL_FRACTION = 0.1


@dataclass
class Split:
    """Pairs of one task, by role. ``seed`` is the seed of every random choice in it."""

    task: str
    seed: int
    train: list[Pair] = field(default_factory=list)
    val: list[Pair] = field(default_factory=list)
    test: list[Pair] = field(default_factory=list)

    def names(self) -> dict[str, list[str]]:
        return {role: [p.name for p in getattr(self, role)] for role in ("train", "val", "test")}

    def to_json(self) -> str:
        """The split on record: task, seed, rules and the pair names of each role."""
        return json.dumps({"task": self.task, "seed": self.seed, "rules": RULES[self.task],
                           **self.names()}, indent=1) + "\n"


RULES = {
    "ivif": "train MSRS_train + LLVIP split_train.txt + VIFB + M3FD (10 % of it held out for "
            "validation); test MSRS_test + TNO",
    "mif": "each Harvard folder: seeded 85 % train (10 % of it held out for validation), "
           "15 % test",
    "mfif": "train MFIFB without lytro_* (10 % held out for validation); test lytro_01..20",
    "meif": "MEFB: seeded 80 % train (10 % of it held out for validation), 20 % test",
}


def _dataset(root: Path, name: str) -> list[Pair]:
    folder = root / name
    if not folder.is_dir():
        raise UserError(f"dataset folder not found: {folder} (is --data the shared data folder?)")
    layouts = _find_layouts(folder)
    if len(layouts) != 1:
        raise UserError(f"{folder}: expected one pair of modality folders, found {len(layouts)}")
    scan = match_pairs(*layouts[0], prefix=f"{name}/")
    if scan.problems:
        raise UserError(f"{folder}: {scan.problems[0]}")
    return scan.pairs


def _take(pairs: list[Pair], fraction: float, rng: np.random.Generator
          ) -> tuple[list[Pair], list[Pair]]:
    """(rest, taken): a seeded ``fraction`` of ``pairs`` (at least one), both in name order."""
    n_take = max(1, round(fraction * len(pairs)))
    chosen = set(rng.permutation(len(pairs))[:n_take].tolist())
    rest = [p for i, p in enumerate(pairs) if i not in chosen]
    taken = [p for i, p in enumerate(pairs) if i in chosen]
    return rest, taken


def make_split(task: str, data_root: str | Path, seed: int = 0) -> Split:
    """The split of ``task`` under ``data_root`` (``shared/data``), as the module docstring says."""
    root = Path(data_root) / task
    if not root.is_dir():
        raise UserError(f"no '{task}' folder under {data_root} (give --data the shared data "
                        "folder, the one holding ivif/ mif/ mfif/ meif/)")
    rng = np.random.default_rng([seed, 9])
    split = Split(task, seed)
    if task == "ivif":
        llvip_train = set((root / "LLVIP" / "split_train.txt").read_text().split())
        pool = [p for p in _dataset(root, "LLVIP") if p.name.split("/", 1)[1] in llvip_train]
        for name in ("MSRS_train", "VIFB", "M3FD"):
            pool += _dataset(root, name)
        split.test = _dataset(root, "MSRS_test") + _dataset(root, "TNO")
    elif task == "mif":
        pool = []
        for name in ("Harvard_CT-MRI", "Harvard_PET-MRI", "Harvard_SPECT-MRI"):
            rest, test = _take(_dataset(root, name), TEST_FRACTION["mif"], rng)
            pool += rest
            split.test += test
    elif task == "mfif":
        pairs = _dataset(root, "MFIFB")
        split.test = [p for p in pairs if p.name.split("/", 1)[1].startswith("lytro_")]
        pool = [p for p in pairs if p not in split.test]
    elif task == "meif":
        pool, split.test = _take(_dataset(root, "MEFB"), TEST_FRACTION["meif"], rng)
    else:
        raise UserError(f"unknown task {task!r}")
    split.train, split.val = _take(pool, VAL_FRACTION, rng)
    return split


def stage(pairs: list[Pair], folder: str | Path) -> Path:
    """Lay ``pairs`` out as ``folder/<dataset>/<a>/<file>`` symbolic links (copies where links
    are not allowed), the layout :func:`refusion.train.data.discover_pairs` reads."""
    folder = Path(folder)
    for p in pairs:
        dataset = p.name.split("/", 1)[0]
        for src in (p.a, p.b):
            dst = folder / dataset / src.parent.name / src.name
            if dst.exists() or dst.is_symlink():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.symlink(src.resolve(), dst)
            except OSError:
                import shutil

                shutil.copyfile(src, dst)
    return folder


def write_split(split: Split, path: str | Path) -> None:
    """Write the split on record (atomic)."""
    atomic_write_text(Path(path), split.to_json())
