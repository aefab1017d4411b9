"""The optional native module: a built one must load, a broken one must say so."""

from __future__ import annotations

import importlib.util
import os

import pytest

from refusion import _native


@pytest.mark.skipif(os.environ.get("REFUSION_DISABLE_NATIVE", "") not in ("", "0"),
                    reason="REFUSION_DISABLE_NATIVE is set")
def test_a_built_module_loads():
    # without this, a module built against another torch would only turn ~100 kernel tests
    # into "not built" skips
    if importlib.util.find_spec("refusion._C") is None:
        pytest.skip("refusion._C is not built in this installation")
    assert _native.native_module() is not None, "refusion._C is built but does not load"


def test_a_broken_build_warns_and_falls_back(monkeypatch):
    def broken(name):
        raise ImportError("undefined symbol: _ZN3c10", name=name)

    monkeypatch.setattr(_native.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(_native.importlib, "import_module", broken)
    monkeypatch.delenv("REFUSION_DISABLE_NATIVE", raising=False)
    _native.native_module.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="built but does not load .*undefined symbol"):
            assert _native.native_module() is None
    finally:
        monkeypatch.undo()
        _native.native_module.cache_clear()  # the real answer again for the other tests
