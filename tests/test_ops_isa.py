"""Every instruction-set build of the CPU kernels (baseline, AVX2, AVX-512) gives the same
results: the parity tests of test_ops_gate/test_ops_sobel run on the widest one only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from refusion import _native
from refusion.ops import _kernels as K
from refusion.ops.gate import gelu_mul_reference
from refusion.ops.sobel import sobel_xy_reference, sobel_xy_transpose_reference


def _module():
    mod = _native.native_module()
    if mod is None or not getattr(mod, "has_cpu_kernels", False):
        pytest.skip("refusion._C is not built (or REFUSION_DISABLE_NATIVE is set)")
    if not hasattr(mod, "cpu_isas"):
        pytest.skip("refusion._C predates run-time ISA selection; rebuild it")
    return mod


def _isas() -> list[str]:
    mod = _native.native_module()
    return list(mod.cpu_isas()) if mod is not None and hasattr(mod, "cpu_isas") else ["none"]


@pytest.fixture(params=_isas())
def isa(request):
    mod = _module()
    previous = mod.set_cpu_isa(request.param)
    assert mod.cpu_isa() == request.param
    yield request.param
    mod.set_cpu_isa(previous)


# Vector bodies, tails and the multi-threaded path (>= 2**16 elements) all get exercised.
SHAPES = [(2, 3, 17, 23), (1, 1, 1, 1), (1, 5, 33, 129), (1, 4, 130, 140)]


@pytest.mark.parametrize("shape", SHAPES)
def test_gate_every_isa(isa, shape):
    torch.manual_seed(sum(shape))
    a, b = 3 * torch.randn(shape), torch.randn(shape)
    g = torch.randn(shape)
    want = gelu_mul_reference(a.double(), b.double()).float()
    torch.testing.assert_close(K.gelu_mul_op(a, b), want, rtol=1e-6, atol=1e-6)
    got = K.gelu_mul_backward_op(g, a, b)
    ref = K.gelu_mul_backward_reference(g.double(), a.double(), b.double())
    for x, y in zip(got, ref):
        torch.testing.assert_close(x.double(), y, rtol=1e-6, atol=1e-6)
    x = torch.cat([a, b], dim=1)
    torch.testing.assert_close(K.gelu_gate_op(x), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sobel_every_isa(isa, shape, dtype):
    torch.manual_seed(sum(shape))
    x = torch.rand(shape, dtype=dtype)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    for got, want in zip(K.sobel_xy_op(x), sobel_xy_reference(x.double())):
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    gx, gy = torch.randn_like(x), torch.randn_like(x)
    want = sobel_xy_transpose_reference(gx.double(), gy.double())
    torch.testing.assert_close(K.sobel_xy_backward_op(gx, gy).double(), want, rtol=tol, atol=tol)


def test_default_is_the_widest_and_bad_names_fail():
    mod = _module()
    if os.environ.get("REFUSION_CPU_ISA"):
        pytest.skip("REFUSION_CPU_ISA chooses the ISA in this run")
    assert mod.cpu_isas()[0] == "baseline"
    assert mod.cpu_isa() == mod.cpu_isas()[-1]
    with pytest.raises(ValueError, match="no CPU kernels built for 'sse9'"):
        mod.set_cpu_isa("sse9")
    previous = mod.set_cpu_isa("")  # "" = back to the widest
    assert previous == mod.cpu_isa() == mod.cpu_isas()[-1]


def test_environment_variable_picks_the_isa():
    _module()
    import refusion

    code = "from refusion import _native; print(_native.native_module().cpu_isa())"
    env = {**os.environ, "REFUSION_CPU_ISA": "baseline"}
    # Run where the tested package is importable first (source tree or site-packages).
    cwd = Path(refusion.__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=cwd)
    assert out.stdout.strip() == "baseline"


def test_an_unknown_isa_in_the_environment_is_warned_about():
    # it used to select the widest kernels without a word (set_cpu_isa raises for it)
    _module()
    import refusion

    code = ("import warnings; warnings.simplefilter('always'); from refusion import _native; "
            "print(_native.native_module().cpu_isa())")
    env = {**os.environ, "REFUSION_CPU_ISA": "avx2"}
    cwd = Path(refusion.__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=cwd)
    assert "REFUSION_CPU_ISA='avx2' is not one of the CPU kernels" in out.stderr, out.stderr
    assert out.stdout.strip() in ("avx2+fma", "avx512", "baseline")
