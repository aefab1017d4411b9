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


class _FakeCudaModule:
    """A native module built with CUDA whose probe answers as told (no GPU needed)."""

    has_cuda_kernels = True
    has_cpu_kernels = True

    def __init__(self, answers: dict[int, str | None], with_probe: bool = True) -> None:
        self.answers, self.asked = answers, []
        if not with_probe:
            self.cuda_probe = None

    def cuda_probe(self, device: int):  # noqa: D102 - replaced per instance when absent
        self.asked.append(device)
        return self.answers[device]

    def cuda_runtime_version(self) -> int:
        return 13000

    def cuda_driver_version(self) -> int:
        return 12040

    def build_info(self) -> dict:
        return {"cuda": True, "cuda_architectures": "80-real,90"}


@pytest.fixture
def fake_cuda_module(monkeypatch):
    def install(answers, with_probe=True):
        from refusion.ops import _dispatch

        mod = _FakeCudaModule(answers, with_probe)
        monkeypatch.setattr(_native, "native_module", lambda: mod)
        monkeypatch.setattr(_dispatch, "native_module", lambda: mod)  # imported by name there
        _native.cuda_kernels_usable.cache_clear()
        return mod

    yield install
    _native.cuda_kernels_usable.cache_clear()


def test_a_gpu_the_kernels_cannot_run_on_falls_back_with_a_warning(fake_cuda_module):
    from refusion.ops import _dispatch

    mod = fake_cuda_module({0: None, 1: "no kernel image is available for execution on the "
                                        "device"})
    assert _native.cuda_kernels_usable(0) and _dispatch._has_kernels("cuda", 0)
    with pytest.warns(RuntimeWarning) as rec:
        assert not _native.cuda_kernels_usable(1)
        assert not _dispatch._has_kernels("cuda", 1)  # asked once, warned once
    msg = str(rec[0].message)
    assert len(rec) == 1 and "cuda:1 (no kernel image is available" in msg
    assert "architectures 80-real,90, CUDA runtime 13.0, the driver supports 12.4" in msg
    assert "references run there instead" in msg
    assert mod.asked == [0, 1]
    assert _dispatch._has_kernels("cpu")  # the CPU kernels are unaffected


def test_a_module_without_the_probe_is_trusted(fake_cuda_module):
    fake_cuda_module({}, with_probe=False)
    assert _native.cuda_kernels_usable(0)


@pytest.mark.parametrize(("raw", "text"), [(13000, "13.0"), (12080, "12.8"), (0, "none")])
def test_cuda_version_text(raw, text):
    mod = type("M", (), {"cuda_driver_version": staticmethod(lambda: raw)})()
    assert _native._cuda_version(mod, "cuda_driver_version") == text
    assert _native._cuda_version(mod, "cuda_runtime_version") == "unknown"


def test_the_built_probe_answers_on_this_machine():
    """The real probe of a CUDA build: None on every GPU torch sees; a reason without one."""
    import torch

    mod = _native.native_module()
    if mod is None or not getattr(mod, "has_cuda_kernels", False):
        pytest.skip("refusion._C was built without CUDA kernels")
    if not hasattr(mod, "cuda_probe"):
        pytest.fail("a CUDA build of refusion._C without cuda_probe (rebuild it)")
    info = _native.build_info()
    assert info["cuda_runtime"].split(".")[0].isdigit() and info["cuda_architectures"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            assert mod.cuda_probe(i) is None, f"the kernels cannot run on cuda:{i}"
        assert set(info["cuda_devices"].values()) == {"ok"}
        assert mod.cuda_probe(torch.cuda.device_count()) == "no such CUDA device"
    else:
        why = mod.cuda_probe(0)
        assert isinstance(why, str) and why  # no driver or no device: CUDA says which
