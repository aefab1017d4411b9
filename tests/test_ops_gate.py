"""GELU gate op: native CPU/CUDA kernels vs reference, autograd to 2nd order, export path."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from refusion import _native
from refusion.ops import GeluGate, gelu_gate, gelu_mul
from refusion.ops import _kernels as K
from refusion.ops.gate import gelu_mul_reference

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    ),
]
SHAPES = [(2, 3, 17, 23), (1, 1, 1, 1), (1, 1, 1, 7), (1, 1, 7, 1), (3, 8, 32, 33)]


def require_kernels(device: str) -> None:
    mod = _native.native_module()
    if mod is None:
        pytest.skip("refusion._C is not built (or REFUSION_DISABLE_NATIVE is set)")
    if not getattr(mod, f"has_{device}_kernels", False):
        pytest.skip(f"refusion._C was built without {device.upper()} kernels")


def ab(shape, device, dtype=torch.float32):
    # Spread a over the whole erf range, saturated tails included.
    return 3 * torch.randn(shape, device=device, dtype=dtype), torch.randn(
        shape, device=device, dtype=dtype
    )


@pytest.mark.parametrize("device", DEVICES)
class TestGeluGate:
    def test_definition(self, device):
        x = torch.randn(2, 6, 4, 5, device=device)
        torch.testing.assert_close(gelu_gate(x), F.gelu(x[:, :3]) * x[:, 3:])
        assert gelu_gate(x).shape == (2, 3, 4, 5)

    @pytest.mark.parametrize("shape", SHAPES)
    def test_native_matches_reference(self, device, shape):
        require_kernels(device)
        a, b = ab(shape, device)
        # The reference is evaluated in float64: torch's float32 GELU itself is off by up to
        # ~2e-6 for a << 0 (1 + erf(a / sqrt 2) cancels), the kernels are not (erfc / normcdf).
        want = gelu_mul_reference(a.double(), b.double()).float()
        torch.testing.assert_close(K.gelu_mul_op(a, b), want, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(gelu_mul_reference(a, b), want, rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize("shape", SHAPES)
    def test_native_backward_matches_reference(self, device, shape):
        require_kernels(device)
        a, b = ab(shape, device)
        g = torch.randn_like(a)
        got = K.gelu_mul_backward_op(g, a, b)
        want = K.gelu_mul_backward_reference(g.double(), a.double(), b.double())
        for x, y in zip(got, want):
            torch.testing.assert_close(x.double(), y, rtol=1e-6, atol=1e-6)

    def test_public_api_routes_to_kernel(self, device, monkeypatch):
        require_kernels(device)
        calls = []
        gate_op, mul_op = K.gelu_gate_op, K.gelu_mul_op
        monkeypatch.setattr(K, "gelu_gate_op", lambda x: calls.append("gate") or gate_op(x))
        monkeypatch.setattr(K, "gelu_mul_op", lambda a, b: calls.append("mul") or mul_op(a, b))
        x = torch.randn(2, 4, 3, 3, device=device)
        gelu_gate(x)
        gelu_mul(*x.chunk(2, dim=1))
        assert calls == ["gate", "mul"]

    @pytest.mark.parametrize("shape", [(2, 6, 17, 23), (1, 2, 1, 1), (3, 16, 32, 33)])
    def test_gate_op_matches_reference(self, device, shape):
        require_kernels(device)
        x = 3 * torch.randn(shape, device=device)
        want = gelu_mul_reference(*x.double().chunk(2, dim=1)).float()
        got = K.gelu_gate_op(x)
        assert got.shape == (shape[0], shape[1] // 2, *shape[2:]) and got.is_contiguous()
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)

    @pytest.mark.parametrize("shape", [(2, 6, 17, 23), (1, 2, 1, 1), (3, 16, 32, 33)])
    def test_gate_backward_op_matches_reference(self, device, shape):
        require_kernels(device)
        x = 3 * torch.randn(shape, device=device)
        g = torch.randn(shape[0], shape[1] // 2, *shape[2:], device=device)
        got = K.gelu_gate_backward_op(g, x)
        a, b = x.double().chunk(2, dim=1)
        want = torch.cat(K.gelu_mul_backward_reference(g.double(), a, b), dim=1)
        assert got.shape == x.shape and got.is_contiguous()
        torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)

    def test_gate_op_layouts(self, device):
        # Per-batch contiguous slabs at a larger batch stride are read in place; channels-last
        # and W-strided inputs are copied by the wrapper. All must agree with the reference.
        base = torch.randn(3, 12, 9, 10, device=device)
        for x in (base[:, 2:10], base.to(memory_format=torch.channels_last), base[..., ::2]):
            a, b = x.chunk(2, dim=1)
            torch.testing.assert_close(
                K.gelu_gate_op(x), gelu_mul_reference(a, b), rtol=1e-6, atol=1e-6
            )
            g = torch.randn(a.shape, device=device)
            want = torch.cat(K.gelu_mul_backward_reference(g, a, b), dim=1)
            torch.testing.assert_close(K.gelu_gate_backward_op(g, x), want, rtol=1e-5, atol=1e-5)

    def test_float16(self, device):
        # CUDA: native float16 kernel (float32 math); CPU: float16 runs the reference.
        a, b = ab((2, 4, 19, 21), device)
        got = gelu_mul(a.half(), b.half())
        assert got.dtype == torch.float16
        want = gelu_mul_reference(a.half().float(), b.half().float())
        torch.testing.assert_close(got.float(), want, rtol=2e-3, atol=2e-3)

    def test_non_contiguous(self, device):
        # gelu_gate's halves are views that are not contiguous across the batch (read as-is);
        # the other layouts are copied by the wrapper.
        x = torch.randn(3, 8, 9, 10, device=device)
        a, b = x.chunk(2, dim=1)
        assert not a.is_contiguous()
        torch.testing.assert_close(gelu_mul(a, b), gelu_mul_reference(a, b), rtol=1e-6, atol=1e-6)
        for a2, b2 in [(a.transpose(2, 3), b.transpose(2, 3)), (a[..., ::2], b[..., 1::2])]:
            torch.testing.assert_close(
                gelu_mul(a2, b2), gelu_mul_reference(a2, b2), rtol=1e-6, atol=1e-6
            )

    def test_autograd_matches_reference(self, device):
        x = torch.randn(2, 6, 7, 8, device=device, requires_grad=True)
        (g_native,) = torch.autograd.grad(gelu_gate(x).square().sum(), x)
        a, b = x.chunk(2, dim=1)
        (g_ref,) = torch.autograd.grad(gelu_mul_reference(a, b).square().sum(), x)
        torch.testing.assert_close(g_native, g_ref, rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize("shape", [(1, 2, 3, 4), (1, 1, 1, 1)])
    def test_gradcheck_gradgradcheck(self, device, shape):
        a, b = ab(shape, device, torch.float64)
        a.requires_grad_()
        b.requires_grad_()
        assert torch.autograd.gradcheck(gelu_mul, (a, b))
        assert torch.autograd.gradgradcheck(gelu_mul, (a, b))
        x = torch.randn(2, 4, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
        assert torch.autograd.gradgradcheck(gelu_gate, (x,))

    def test_gate_op_channels_last(self, device):
        # mkldnn convolutions hand the gate channels-last tensors: served in place, and the
        # outputs keep that layout (so the next convolution needs no copy either).
        x = (3 * torch.randn(2, 8, 5, 7, device=device)).to(memory_format=torch.channels_last)
        a, b = x.chunk(2, dim=1)
        y = K.gelu_gate_op(x)
        assert y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y, gelu_mul_reference(a, b), rtol=1e-6, atol=1e-6)
        for g in (torch.randn(a.shape, device=device), torch.randn(a.shape, device=device)):
            gx = K.gelu_gate_backward_op(g.to(memory_format=torch.channels_last), x)
            assert gx.is_contiguous(memory_format=torch.channels_last)
            want = torch.cat(K.gelu_mul_backward_reference(g, a, b), dim=1)
            torch.testing.assert_close(gx, want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(K.gelu_gate_backward_op(g, x), want, rtol=1e-5, atol=1e-5)
        xd = x.double().requires_grad_()
        assert torch.autograd.gradcheck(K.gelu_gate_op, (xd[:1, :4, :3, :3],))
        torch.library.opcheck(K.gelu_gate_op, (x.requires_grad_(),))
        torch.library.opcheck(K.gelu_gate_backward_op, (g.to(memory_format=torch.channels_last), x))

    def test_gate_gradcheck_gradgradcheck(self, device):
        # Through the whole-tensor op (kernel forward/backward, reference double backward).
        x = 3 * torch.randn(2, 4, 3, 5, dtype=torch.float64, device=device)
        x.requires_grad_()
        assert torch.autograd.gradcheck(K.gelu_gate_op, (x,))
        assert torch.autograd.gradgradcheck(K.gelu_gate_op, (x,))
        g = torch.randn(2, 2, 3, 5, dtype=torch.float64, device=device, requires_grad=True)
        assert torch.autograd.gradcheck(K.gelu_gate_backward_op, (g, x))
        assert torch.autograd.gradgradcheck(K.gelu_gate_backward_op, (g, x))

    def test_gate_autograd_parity(self, device):
        # First and second derivatives of the op agree with eager autograd of the reference.
        x0 = 3 * torch.randn(2, 6, 5, 7, dtype=torch.float64, device=device)
        w = torch.randn(2, 3, 5, 7, dtype=torch.float64, device=device)
        results = []
        for fn in (K.gelu_gate_op, lambda t: gelu_mul_reference(*t.chunk(2, dim=1))):
            x = x0.clone().requires_grad_()
            (gx,) = torch.autograd.grad((fn(x) * w).sum(), x, create_graph=True)
            (ggx,) = torch.autograd.grad(gx.square().sum(), x)
            results.append((gx.detach(), ggx))
        for got, want in zip(*results):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)

    def test_gradcheck_backward_op(self, device):
        require_kernels(device)
        g, a, b = (
            torch.randn(1, 2, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
            for _ in range(3)
        )
        assert torch.autograd.gradcheck(K.gelu_mul_backward_op, (g, a, b))
        assert torch.autograd.gradgradcheck(K.gelu_mul_backward_op, (g, a, b))

    def test_opcheck(self, device):
        a, b = (torch.randn(2, 3, 5, 6, device=device, requires_grad=True) for _ in range(2))
        torch.library.opcheck(K.gelu_mul_op, (a, b))
        g = torch.randn(2, 3, 5, 6, device=device, requires_grad=True)
        torch.library.opcheck(K.gelu_mul_backward_op, (g, a, b))
        x = torch.randn(2, 6, 5, 6, device=device, requires_grad=True)
        torch.library.opcheck(K.gelu_gate_op, (x,))
        torch.library.opcheck(K.gelu_gate_backward_op, (g, x))

    def test_export_uses_reference(self, device, monkeypatch):
        def fail(*args):
            raise AssertionError("native gate called while exporting")

        x = torch.randn(1, 4, 5, 6, device=device)
        with monkeypatch.context() as m:
            m.setattr(K, "gelu_mul_op", fail)
            m.setattr(K, "gelu_gate_op", fail)
            m.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
            torch.testing.assert_close(gelu_gate(x), F.gelu(x[:, :2]) * x[:, 2:])
        traced = torch.jit.trace(GeluGate(), x, check_trace=False)
        assert "refusion::" not in str(traced.graph)
        torch.testing.assert_close(traced(x), gelu_gate(x))

    def test_input_checks(self, device):
        a = torch.randn(1, 2, 3, 3, device=device)
        with pytest.raises(ValueError, match="differ in shape"):
            gelu_mul(a, a[:, :1])
        with pytest.raises(ValueError, match="dtype"):
            gelu_mul(a, a.double())
        with pytest.raises(ValueError, match="B, C, H, W"):
            gelu_mul(a[0], a[0])
        with pytest.raises(ValueError, match="even channel"):
            gelu_gate(torch.randn(1, 3, 2, 2, device=device))
        with pytest.raises(TypeError, match="floating"):
            gelu_mul(a.int(), a.int())

    def test_empty(self, device):
        assert gelu_gate(torch.randn(0, 4, 3, 3, device=device)).shape == (0, 2, 3, 3)
        x = torch.randn(0, 4, 3, 3, device=device, requires_grad=True)
        gelu_gate(x).sum().backward()
        assert x.grad.shape == x.shape


def test_cpu_pool_many_small_jobs_and_threads():
    # The pool must give the same result at any thread count, job after job (a late worker
    # from a finished job must never run chunks of the next one).
    mod = _native.native_module()
    if mod is None:
        pytest.skip("refusion._C is not built (or REFUSION_DISABLE_NATIVE is set)")
    x = 3 * torch.randn(2, 8, 128, 160)
    want = gelu_mul_reference(*x.double().chunk(2, dim=1)).float()
    old = torch.get_num_threads()
    try:
        for threads in (1, 2, 3, 4, 2):
            torch.set_num_threads(threads)
            for _ in range(20):
                torch.testing.assert_close(K.gelu_gate_op(x), want, rtol=1e-6, atol=1e-6)
    finally:
        torch.set_num_threads(old)
    assert mod.cpu_pool_workers() >= 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_cpu_pool_survives_fork():
    # DataLoader workers fork the trainer: the child has none of the parent's pool threads and
    # must neither hang nor miscompute (it starts a fresh pool).
    mod = _native.native_module()
    if mod is None:
        pytest.skip("refusion._C is not built (or REFUSION_DISABLE_NATIVE is set)")
    x = torch.randn(2, 8, 128, 160)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        want = K.gelu_gate_op(x)
        pid = os.fork()
        if pid == 0:  # child: report through the exit code only
            # Only the kernel may use threads here: libgomp (torch's intra-op pool) is not
            # fork-safe once the parent used it, so torch runs single-threaded in the child.
            torch.set_num_threads(1)
            a, b = x.chunk(2, dim=1)
            ok = True
            for _ in range(10):
                y = torch.empty_like(want)
                inner = y[0].numel()
                mod.gelu_mul_cpu(
                    a.data_ptr(), b.data_ptr(), y.data_ptr(), 0, 2, inner, a.stride(0),
                    b.stride(0), inner, 2,
                )  # fmt: skip
                ok = ok and torch.equal(y, want)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        torch.set_num_threads(old)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("call", [
    lambda r: torch.ops.refusion.gelu_mul(r(1, 1, 64, 64), r(1, 1, 1, 1)),
    lambda r: torch.ops.refusion.gelu_mul(r(1, 1, 4, 4), r(1, 1, 4, 4).double()),
    lambda r: torch.ops.refusion.gelu_mul_backward(r(1, 1, 2, 2), r(1, 1, 64, 64),
                                                   r(1, 1, 64, 64)),
    lambda r: torch.ops.refusion.sobel_xy_backward(r(1, 1, 64, 64), r(1, 1, 3, 64)),
    lambda r: torch.ops.refusion.gelu_gate_backward(r(1, 2, 64, 64), r(1, 2, 64, 64)),
    lambda r: torch.ops.refusion.sobel_xy(r(1, 64, 64)),
], ids=["gelu_mul", "dtypes", "gelu_mul_backward", "sobel_backward", "gate_backward", "3d"])
def test_ops_called_directly_reject_mismatched_operands(call):
    # the kernels take raw pointers sized from the first operand: a smaller second one must be
    # refused, never read past (native and reference paths alike)
    import refusion.ops._kernels  # noqa: F401 - registers the ops

    with pytest.raises(ValueError):
        call(torch.randn)


@pytest.mark.parametrize("call", [
    lambda x: torch.ops.refusion.gelu_mul(x, x),
    lambda x: torch.ops.refusion.gelu_gate(x),
    lambda x: torch.ops.refusion.gelu_mul_backward(x, x, x),
    lambda x: torch.ops.refusion.gelu_gate_backward(x[:, :1], x),
    lambda x: torch.ops.refusion.sobel_xy(x),
], ids=["gelu_mul", "gelu_gate", "gelu_mul_backward", "gate_backward", "sobel"])
def test_ops_called_directly_reject_integer_tensors(call):
    import refusion.ops._kernels  # noqa: F401 - registers the ops

    with pytest.raises(TypeError, match="floating"):
        call(torch.ones(1, 2, 4, 4, dtype=torch.int32))


@pytest.mark.parametrize("name", ["gelu_gate", "sobel_grad"])
def test_forward_mode_and_torch_func_transforms_see_the_true_derivative(name):
    # the custom ops' autograd is reverse mode only: under jvp / forward AD / torch.func.grad
    # the references serve (a jvp through the op used to be silently zero)
    import torch.autograd.forward_ad as fwAD

    import refusion.ops as ops

    fn = getattr(ops, name)
    torch.manual_seed(0)
    x = torch.rand(1, 2, 9, 11, dtype=torch.float64) + 0.1
    t = torch.randn_like(x)
    eps = 1e-6
    fd = (fn(x + eps * t) - fn(x - eps * t)) / (2 * eps)
    _, tangent = torch.func.jvp(fn, (x,), (t,))
    assert torch.allclose(tangent, fd, atol=1e-6) and fd.abs().max() > 0.1
    with fwAD.dual_level():
        out = fn(fwAD.make_dual(x, t))
        assert torch.allclose(fwAD.unpack_dual(out).tangent, fd, atol=1e-6)
    g = torch.func.grad(lambda z: (fn(z) * t[:, : fn(z).shape[1]]).sum())(x)
    x.requires_grad_(True)
    (want,) = torch.autograd.grad((fn(x) * t[:, : fn(x).shape[1]]).sum(), x)
    assert torch.allclose(g, want, atol=1e-10)


def test_gate_gradient_at_extreme_magnitudes():
    # GELU'(a) is 1 far right and 0 far left; a clamped exp in the float kernel once made
    # a * pdf(a) grow with |a| (GELU'(3e38) came out as 2161)
    import refusion.ops._kernels  # noqa: F401 - registers the ops

    a = torch.tensor([1e30, 1e35, 3e38, -1e35, -100.0]).view(1, 1, 1, 5)
    one = torch.ones_like(a)
    ga, _ = torch.ops.refusion.gelu_mul_backward(one, a, one)
    assert ga.flatten().tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    a64 = torch.tensor([-9.0, -20.0], dtype=torch.float64).view(1, 1, 1, 2)
    ga64, _ = torch.ops.refusion.gelu_mul_backward(torch.ones_like(a64), a64, torch.ones_like(a64))
    # GELU'(a) = cdf(a) + a pdf(a), summed from erfc without cancellation: relative 1e-12
    import math

    want = [0.5 * math.erfc(-x / math.sqrt(2)) + x * math.exp(-0.5 * x * x)
            / math.sqrt(2 * math.pi) for x in (-9.0, -20.0)]
    assert ga64.flatten().tolist() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("name", ["gelu_gate", "sobel_grad"])
def test_transforms_inside_torch_compile_see_the_true_derivative(name):
    # under dynamo the eager transform checks do not apply; a compiled jvp used to be 0 and a
    # compiled forward-AD tangent None
    import torch.autograd.forward_ad as fwAD

    import refusion.ops as ops

    fn = getattr(ops, name)
    torch.manual_seed(0)
    x = torch.rand(1, 2, 9, 11) + 0.1
    t = torch.randn_like(x)
    torch._dynamo.reset()
    want_jvp = torch.func.jvp(lambda z: fn(z).square().sum(), (x,), (t,))[1]
    got_jvp = torch.compile(lambda z: torch.func.jvp(lambda u: fn(u).square().sum(), (z,), (t,))[1],
                            fullgraph=True, backend="eager")(x)
    assert abs(want_jvp.item()) > 0.1 and torch.allclose(got_jvp, want_jvp, rtol=1e-4)

    def tangent(z, tt):
        with fwAD.dual_level():
            return fwAD.unpack_dual(fn(fwAD.make_dual(z, tt)).square().sum()).tangent

    assert torch.allclose(torch.compile(tangent, backend="eager")(x, t), want_jvp, rtol=1e-4)
    # torch.func.grad is invisible to dynamo's tracing here (it even reports requires_grad
    # False), so a compiled grad reaches the custom op, which torch refuses under functorch
    # (custom_op autograd is not a functorch Function in torch 2.13): an error, never a wrong
    # value (eager torch.func.grad is covered above)
    want_g = torch.func.grad(lambda u: fn(u).square().sum())(x)
    try:
        got_g = torch.compile(lambda z: torch.func.grad(lambda u: fn(u).square().sum())(z),
                              fullgraph=True, backend="eager")(x)
    except Exception as exc:  # noqa: BLE001 - torch's own error type varies
        assert "functorch" in str(exc) or "setup_context" in str(exc), exc
    else:
        assert torch.allclose(got_g, want_g, rtol=1e-4, atol=1e-6)
    torch._dynamo.reset()


@pytest.mark.skipif(not _native.native_available(), reason="native library not built")
def test_a_plain_compiled_graph_holds_the_custom_ops():
    # the transform check must not send plain compiled code to the references
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    torch._dynamo.reset()
    x = torch.rand(1, 2, 8, 8)
    torch.compile(lambda z: gelu_gate(z) * 2, backend=backend, fullgraph=True)(x)
    torch._dynamo.reset()
    assert any("refusion.gelu_gate" in s for s in seen), seen
