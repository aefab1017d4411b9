"""Atomic writes leave whole files with the permissions a plain write would give."""

from __future__ import annotations

import os
import stat

import pytest

from refusion.utils.atomic import atomic_path, atomic_write_text


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
