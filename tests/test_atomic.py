"""Atomic writes leave whole files with the permissions a plain write would give."""

from __future__ import annotations

import os
import stat

import pytest

from refusion.errors import UserError
from refusion.utils.atomic import atomic_path, atomic_write_text, ensure_writable


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_new_file_gets_the_umask_mode_and_replacing_keeps_the_old_mode(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open() gives under the current umask
    new = tmp_path / "new.txt"
    atomic_write_text(new, "hello")
    assert new.read_text() == "hello"
    assert _mode(new) == _mode(plain)
    os.chmod(new, 0o640)
    atomic_write_text(new, "again")
    assert new.read_text() == "again" and _mode(new) == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failure_leaves_no_file_and_no_temp(tmp_path):
    dest = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("writer failed")
    assert not dest.exists() and list(tmp_path.iterdir()) == []


def test_an_unwritable_destination_is_one_error_naming_it(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match=f"cannot write {blocker / 'o.png'}: {blocker} is a file"):
        atomic_write_text(blocker / "o.png", "y")
    with pytest.raises(UserError, match=f"cannot write into {blocker}: it is a file"):
        ensure_writable(blocker, folder=True)
    with pytest.raises(UserError, match=f"cannot write {tmp_path}: it is a folder"):
        ensure_writable(tmp_path)
    with pytest.raises(UserError, match="cannot write .*sub/o.png: (Not a dir|.*not a folder)"):
        ensure_writable(blocker / "sub" / "o.png")
    assert blocker.read_text() == "x"


def test_ensure_writable_makes_the_folder_and_leaves_nothing_else(tmp_path):
    assert ensure_writable(tmp_path / "a" / "o.png") == tmp_path / "a" / "o.png"
    assert list((tmp_path / "a").iterdir()) == []
    ensure_writable(tmp_path / "b", folder=True)
    assert list((tmp_path / "b").iterdir()) == []
    (tmp_path / "c.png").write_text("kept")
    ensure_writable(tmp_path / "c.png")  # an existing output may be replaced later, not now
    assert (tmp_path / "c.png").read_text() == "kept"
