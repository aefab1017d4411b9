"""Atomic file writes: a temp file in the destination folder, fsync, then ``os.replace``.

A crash or Ctrl-C mid-write therefore never leaves a truncated output or checkpoint behind.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from refusion.errors import UserError


def _new_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: ``0o666`` less the umask."""
    try:  # Linux: read the umask without changing it (os.umask would, for every thread)
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _temp_beside(dest: Path, suffix: str) -> tuple[int, str]:
    """``mkstemp`` in ``dest``'s folder (made if missing); failures name ``dest``, not the temp."""
    if dest.parent.exists() and not dest.parent.is_dir():
        raise UserError(f"cannot write {dest}: {dest.parent} is a file, not a folder")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    except OSError as exc:
        raise UserError(f"cannot write {dest}: {exc.strerror or exc}") from None


def ensure_writable(path: str | os.PathLike, folder: bool = False) -> Path:
    """Fail early, with one line naming ``path``, if an output there could not be written.

    Commands call it before long work (an export, a folder of fusions), so that a typo in an
    output path costs nothing. ``folder=True``: ``path`` is an output folder (made if missing).
    Returns ``path`` as a :class:`~pathlib.Path`.
    """
    dest = Path(path)
    if not folder:
        if dest.is_dir():
            raise UserError(f"cannot write {dest}: it is a folder")
        fd, tmp = _temp_beside(dest, ".tmp")
    else:
        if dest.exists() and not dest.is_dir():
            raise UserError(f"cannot write into {dest}: it is a file, not a folder")
        try:
            dest.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".refusion-write-check.", dir=dest)
        except OSError as exc:
            raise UserError(f"cannot write into {dest}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(tmp)
    return dest


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    A folder that cannot be made or written, or a failed rename, raises :class:`UserError`
    naming ``path`` (errors raised by the caller's own writing pass through unchanged).

    Args:
        path: final destination.
        suffix: suffix of the temp file (defaults to the destination's, so that writers that
            pick a format from the extension, such as ``cv2.imwrite``, still work).
    """
    dest = Path(path)
    fd, tmp = _temp_beside(dest, suffix if suffix is not None else dest.suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        try:
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            # mkstemp creates the file 0600; give it the mode a plain write would have (or keep
            # the replaced file's), so outputs stay readable by whoever could read them before.
            try:
                mode = stat.S_IMODE(dest.stat().st_mode)
            except FileNotFoundError:
                mode = _new_file_mode()
            os.chmod(tmp_path, mode)
            os.replace(tmp_path, dest)
        except OSError as exc:
            raise UserError(f"cannot write {dest}: {exc.strerror or exc}") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], object]) -> None:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def check_outputs(outputs, inputs=()) -> None:
    """One-line :class:`UserError` when an output would overwrite an input or another output.

    ``outputs`` and ``inputs`` are ``(label, path)`` pairs (``label`` names the option, e.g.
    ``"-o"``; a ``None`` path is skipped). Paths are compared resolved (symbolic links and
    ``..`` followed), so ``-o ./vis.mp4`` for ``--vis vis.mp4`` is caught too. Commands call it
    before any work: the user's inputs are never written over.
    """
    sources: dict[Path, str] = {}
    inodes: dict[tuple[int, int], str] = {}  # hard links, case-insensitive file systems
    for label, p in inputs:
        if p is not None and Path(p).exists():
            sources.setdefault(Path(p).resolve(), f"{label} {p}")
            st = os.stat(p)
            inodes.setdefault((st.st_dev, st.st_ino), f"{label} {p}")
    seen: dict[Path, str] = {}
    for label, p in outputs:
        if p is None:
            continue
        key = Path(p).resolve()
        same = sources.get(key)
        if same is None and Path(p).exists():
            st = os.stat(p)
            same = inodes.get((st.st_dev, st.st_ino))
        if same is not None:
            raise UserError(f"{label} {p} would overwrite the input {same}: give the output "
                            "another name")
        if key in seen:
            raise UserError(f"{label} {p} is also {seen[key]}: give each output its own path")
        seen[key] = f"{label} {p}"
