"""Sobel op: reference definition, native CPU/CUDA kernels vs reference, autograd to 2nd order."""

from __future__ import annotations

import pytest
import torch

from refusion import _native
from refusion.ops import SobelGrad, sobel_grad, sobel_xy
from refusion.ops import _kernels as K
from refusion.ops.sobel import sobel_xy_reference, sobel_xy_transpose_reference

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    ),
]
SHAPES = [(2, 3, 17, 23), (1, 1, 1, 1), (1, 1, 1, 7), (1, 1, 7, 1), (1, 2, 2, 2), (3, 1, 64, 65)]


def require_kernels(device: str) -> None:
    mod = _native.native_module()
    if mod is None:
        pytest.skip("refusion._C is not built (or REFUSION_DISABLE_NATIVE is set)")
    if not getattr(mod, f"has_{device}_kernels", False):
        pytest.skip(f"refusion._C was built without {device.upper()} kernels")


def assert_pair_close(got, want, **tol) -> None:
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **tol)


@pytest.mark.parametrize("device", DEVICES)
class TestSobel:
    def test_definition(self, device):
        # Constant image: zero everywhere, border included (replicate padding).
        sx, sy = sobel_xy(torch.full((1, 1, 4, 5), 3.0, device=device))
        assert sx.abs().max() == 0 and sy.abs().max() == 0
        # Horizontal ramp x[i, j] = j: Sx = 8 inside, 4 on the replicated left/right columns.
        ramp = torch.arange(5.0, device=device).expand(1, 1, 4, 5)
        sx, sy = sobel_xy(ramp)
        want = torch.tensor([4.0, 8.0, 8.0, 8.0, 4.0], device=device).expand(1, 1, 4, 5)
        torch.testing.assert_close(sx, want)
        assert sy.abs().max() == 0
        torch.testing.assert_close(sobel_grad(ramp), want)

    @pytest.mark.parametrize("impl", ["reference", "public"])
    def test_flat_regions_are_exactly_zero(self, device, impl):
        # Values that are not sums of powers of two: a 3x3 convolution leaves residues of
        # ~1e-8 here, whose sign then picks the subgradient of |Sx| in the losses.
        fn = sobel_xy_reference if impl == "reference" else sobel_xy
        g = torch.Generator().manual_seed(0)
        levels = torch.rand(4, generator=g).to(device)
        x = levels[torch.randint(0, 4, (2, 3, 1, 1), generator=g).to(device)].expand(2, 3, 9, 11)
        x = x.clone()
        x[..., 5:, :] = 0.1  # a horizontal edge: non-zero only on the two rows around it
        sx, sy = fn(x)
        assert sx.abs().max() == 0
        flat = torch.ones_like(sy, dtype=torch.bool)
        flat[..., 4:6, :] = False
        assert sy[flat].abs().max() == 0
        assert (sy[~flat] != 0).any()  # the edge is there

    @pytest.mark.parametrize("shape", SHAPES)
    def test_native_matches_reference(self, device, shape):
        require_kernels(device)
        x = torch.rand(shape, device=device)
        assert_pair_close(K.sobel_xy_op(x), sobel_xy_reference(x), rtol=1e-6, atol=1e-6)
        if device == "cpu":
            # Same order of operations as the CPU kernel: bit for bit, so the two paths train
            # alike (see sobel_xy_reference).
            assert_pair_close(K.sobel_xy_op(x), sobel_xy_reference(x), rtol=0, atol=0)

    def test_non_finite_pixels_like_the_kernel(self, device):
        # Neither reads a pixel's own value for its Sx/Sy (zero-weight taps are skipped), so a
        # NaN stays finite there and spreads to its neighbours only (except across a border,
        # where replication makes the pixel its own neighbour).
        require_kernels(device)
        x = torch.rand(1, 1, 6, 7, device=device)
        x[0, 0, 2, 3], x[0, 0, 4, 0] = float("nan"), float("inf")
        ref = sobel_xy_reference(x)
        assert all(bool(r[0, 0, 2, 3].isfinite()) for r in ref)
        tol = dict(rtol=0, atol=0) if device == "cpu" else dict(rtol=1e-6, atol=1e-6)
        assert_pair_close(K.sobel_xy_op(x), ref, equal_nan=True, **tol)

    @pytest.mark.parametrize("shape", SHAPES)
    def test_native_backward_matches_reference(self, device, shape):
        require_kernels(device)
        gx, gy = torch.randn(shape, device=device), torch.randn(shape, device=device)
        torch.testing.assert_close(
            K.sobel_xy_backward_op(gx, gy),
            sobel_xy_transpose_reference(gx, gy),
            rtol=1e-5,
            atol=1e-5,
        )

    def test_transpose_reference_is_the_adjoint(self, device):
        x = torch.randn(2, 2, 6, 5, dtype=torch.float64, device=device, requires_grad=True)
        gx, gy = torch.randn_like(x), torch.randn_like(x)
        sx, sy = sobel_xy_reference(x)
        (want,) = torch.autograd.grad((sx * gx + sy * gy).sum(), x)
        torch.testing.assert_close(sobel_xy_transpose_reference(gx, gy), want)

    def test_public_api_routes_to_kernel(self, device, monkeypatch):
        require_kernels(device)
        calls = []
        op = K.sobel_xy_op
        monkeypatch.setattr(K, "sobel_xy_op", lambda x: calls.append(1) or op(x))
        sobel_grad(torch.rand(1, 1, 8, 8, device=device))
        assert calls == [1]

    def test_float16(self, device):
        # CUDA: native float16 kernel (float32 accumulation); CPU: float16 runs the reference.
        x = torch.rand(2, 3, 31, 33, device=device)
        got = sobel_xy(x.half())
        assert got[0].dtype == torch.float16
        assert_pair_close([g.float() for g in got], sobel_xy_reference(x), rtol=2e-3, atol=4e-3)

    def test_non_contiguous(self, device):
        base = torch.rand(3, 4, 20, 26, device=device)
        views = [
            base[:, 1:3, 2:-3, 1:-2],  # unit W stride, strided B/C/H: no copy
            base[::2, :, ::2, ::3],  # W stride 3: copied by the wrapper
            base.transpose(2, 3),
            base[:, :1].expand(3, 2, 20, 26),  # stride-0 channel
        ]
        for v in views:
            assert not v.is_contiguous()
            assert_pair_close(sobel_xy(v), sobel_xy_reference(v.contiguous()), rtol=1e-6, atol=1e-6)

    def test_autograd_matches_reference(self, device):
        x = torch.rand(2, 3, 12, 9, device=device, requires_grad=True)
        (g_native,) = torch.autograd.grad(sobel_grad(x).square().sum(), x)
        sx, sy = sobel_xy_reference(x)
        (g_ref,) = torch.autograd.grad((sx.abs() + sy.abs()).square().sum(), x)
        torch.testing.assert_close(g_native, g_ref, rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize("shape", [(1, 2, 5, 6), (2, 1, 1, 3), (1, 1, 1, 1)])
    def test_gradcheck_gradgradcheck(self, device, shape):
        x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
        assert torch.autograd.gradcheck(sobel_xy, (x,))
        assert torch.autograd.gradgradcheck(sobel_xy, (x,))
        # Second-order through the nonlinear magnitude (meta-gradient style).
        assert torch.autograd.gradgradcheck(lambda t: sobel_grad(t * t), (x,))

    def test_gradcheck_backward_op(self, device):
        require_kernels(device)
        gx = torch.randn(1, 2, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
        gy = torch.randn_like(gx, requires_grad=True)
        assert torch.autograd.gradcheck(K.sobel_xy_backward_op, (gx, gy))
        assert torch.autograd.gradgradcheck(K.sobel_xy_backward_op, (gx, gy))

    def test_opcheck(self, device):
        x = torch.randn(2, 3, 7, 9, device=device, requires_grad=True)
        torch.library.opcheck(K.sobel_xy_op, (x,))
        g = torch.randn(2, 3, 7, 9, device=device, requires_grad=True)
        torch.library.opcheck(K.sobel_xy_backward_op, (g, g.detach().clone().requires_grad_()))

    def test_export_uses_reference(self, device, monkeypatch):
        def fail(*args):
            raise AssertionError("native Sobel called while exporting")

        x = torch.rand(1, 1, 6, 7, device=device)
        with monkeypatch.context() as m:
            m.setattr(K, "sobel_xy_op", fail)
            m.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
            assert_pair_close(sobel_xy(x), sobel_xy_reference(x))
        # Tracing (TorchScript, the legacy ONNX exporter's front end) sees standard ops only.
        traced = torch.jit.trace(SobelGrad(), x, check_trace=False)
        assert "refusion::" not in str(traced.graph)
        torch.testing.assert_close(traced(x), sobel_grad(x))

    def test_disable_native_env(self, device, monkeypatch):
        monkeypatch.setenv("REFUSION_DISABLE_NATIVE", "1")
        _native.native_module.cache_clear()
        try:
            monkeypatch.setattr(K, "sobel_xy_op", lambda x: pytest.fail("kernel used"))
            x = torch.rand(1, 2, 5, 5, device=device)
            assert_pair_close(sobel_xy(x), sobel_xy_reference(x))
        finally:
            monkeypatch.delenv("REFUSION_DISABLE_NATIVE")
            _native.native_module.cache_clear()

    def test_input_checks(self, device):
        with pytest.raises(ValueError, match="B, C, H, W"):
            sobel_xy(torch.rand(3, 4, 5, device=device))
        with pytest.raises(TypeError, match="floating"):
            sobel_xy(torch.ones(1, 1, 3, 3, dtype=torch.int32, device=device))
        with pytest.raises(TypeError):
            sobel_xy([[1.0]])

    def test_empty(self, device):
        sx, sy = sobel_xy(torch.rand(0, 3, 4, 4, device=device))
        assert sx.shape == sy.shape == (0, 3, 4, 4)


@pytest.mark.parametrize("shape", [(2, 3, 0, 5), (2, 3, 5, 0), (0, 3, 4, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_empty_images_give_empty_responses_on_every_path(shape, dtype, monkeypatch):
    # the kernels returned empties where the reference (replicate padding) raised, so the
    # same call failed under REFUSION_DISABLE_NATIVE=1, during export or in float16
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    for native in (True, False):
        if not native:
            monkeypatch.setattr(K, "use_native", lambda t: False)
        sx, sy = sobel_xy(x)
        assert sx.shape == sy.shape == x.shape and sx.dtype == dtype
        (gx,) = torch.autograd.grad(sx.sum() + sy.sum(), x)
        assert gx.shape == x.shape
    assert sobel_xy_reference(x.detach())[0].shape == x.shape
    assert sobel_xy_transpose_reference(x.detach(), x.detach()).shape == x.shape
