"""Image pairs from files or folders (matched by file stem)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from refusion.errors import UserError
from refusion.imaging import IMAGE_SUFFIXES


@dataclass(frozen=True)
class PairPaths:
    """One pair to fuse and its stem (the output name in folder mode)."""

    a: Path
    b: Path
    stem: str


def _images(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            if p.stem in found:
                raise UserError(f"two images named {p.stem!r} in {folder}: "
                                f"{found[p.stem].name} and {p.name}")
            found[p.stem] = p
    return found


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
    ia, ib = _images(pa), _images(pb)
    common = sorted(set(ia) & set(ib))
    unmatched = sorted(f"{pa.name}/{ia[s].name}" for s in set(ia) - set(ib))
    unmatched += sorted(f"{pb.name}/{ib[s].name}" for s in set(ib) - set(ia))
    if not common:
        raise UserError(f"no image names in common between {pa} ({len(ia)} images) and "
                        f"{pb} ({len(ib)} images)")
    return [PairPaths(ia[s], ib[s], s) for s in common], unmatched
