"""Image pairs from files or folders (matched by file stem)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from refusion.errors import UserError
from refusion.imaging import ImageFolder, list_image_folder


@dataclass(frozen=True)
class PairPaths:
    """One pair to fuse and its stem (the output name in folder mode)."""

    a: Path
    b: Path
    stem: str


def _one_sided(here: ImageFolder, there: ImageFolder) -> list[str]:
    """The images and broken links of ``here`` that form no pair, each with why."""
    out = []
    for s in sorted(here.images.keys() - there.images.keys()):
        why = (f" (its partner {there.folder.name}/{there.broken[s].name} is a broken link)"
               if s in there.broken else "")
        out.append(f"{here.folder.name}/{here.images[s].name}{why}")
    out += [f"{here.folder.name}/{here.broken[s].name} (broken link)"
            for s in sorted(here.broken.keys() - there.images.keys())]
    return out


def match_pairs(
    a: str | os.PathLike, b: str | os.PathLike
) -> tuple[list[PairPaths], list[str]]:
    """Pairs from two files, or from two folders by stem.

    Returns:
        ``(pairs, unmatched)``: pairs sorted by stem, and the names present on one side only
        (folder mode; reported as a warning by the command).
    """
    pa, pb = Path(a), Path(b)
    for p in (pa, pb):
        if not p.exists():
            raise UserError(f"not found: {p}")
    if pa.is_dir() != pb.is_dir():
        raise UserError(f"give two files or two folders, not a mix: {pa} and {pb}")
    if not pa.is_dir():
        return [PairPaths(pa, pb, pa.stem)], []
    ia, ib = (list_image_folder(p).require_unique() for p in (pa, pb))
    common = sorted(ia.images.keys() & ib.images.keys())
    unmatched = _one_sided(ia, ib) + _one_sided(ib, ia)
    if not common:
        broken = [u for u in unmatched if "broken link" in u]
        raise UserError(f"no image names in common between {pa} ({len(ia.images)} images) and "
                        f"{pb} ({len(ib.images)} images)"
                        + (f"; {len(broken)} broken links, e.g. {broken[0]}" if broken else ""))
    return [PairPaths(ia.images[s], ib.images[s], s) for s in common], unmatched
