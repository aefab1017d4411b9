"""Dispatch between the native kernels (registered as torch custom ops) and the references.

Six custom ops are registered in the ``refusion`` namespace:

* ``refusion::sobel_xy(x) -> (sx, sy)``; its autograd is ``sobel_xy_backward``;
* ``refusion::sobel_xy_backward(gx, gy) -> gin``, the transposed Sobel; its autograd is
  ``sobel_xy`` (Sobel is linear), so any order of derivative flows through the kernels;
* ``refusion::gelu_mul(a, b) -> y``; its autograd is ``gelu_mul_backward``;
* ``refusion::gelu_mul_backward(g, a, b) -> (ga, gb)``, a fused kernel whose own autograd is
  written with reference torch ops (so ``gelu_mul`` is twice differentiable and beyond);
* ``refusion::gelu_gate(x) -> y``, the gate on the whole (B, 2C, H, W) tensor; its autograd is
  ``gelu_gate_backward``;
* ``refusion::gelu_gate_backward(g, x) -> gx``, which writes the gradients of both halves
  straight into one (B, 2C, H, W) tensor (no ``cat`` of two half-size gradients); its own
  autograd uses reference torch ops, like ``gelu_mul_backward``.

The ops are registered whether or not ``refusion._C`` is built (their implementations fall back
to the references), so ``torch.library.opcheck`` and ``torch.compile`` see the same schema
everywhere. The public functions route to the ops only when :func:`use_native` allows it:
native module present, not exporting (ONNX export and TorchScript always get the references), a
device with kernels and a dtype the kernels support: float32/float64 on CPU (float16 on CPU runs
the reference), float32/float16/float64 on CUDA.
"""

from __future__ import annotations

import torch
from torch import Tensor

from refusion._native import native_module
from refusion.ops._dispatch import use_native
from refusion.ops.gate import _check_pair, gelu_mul_reference
from refusion.ops.sobel import _check, sobel_xy_reference, sobel_xy_transpose_reference

_DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2}
_KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16),
}


def _kernel_supports(*tensors: Tensor) -> bool:
    """Whether a built kernel serves these tensors (checked inside the op implementations)."""
    mod = native_module()
    if mod is None:
        return False
    t = tensors[0]
    dev = t.device.type
    if dev not in _KERNEL_DTYPES or t.dtype not in _KERNEL_DTYPES[dev]:
        return False
    if not getattr(mod, f"has_{dev}_kernels", False):
        return False
    return all(u.device == t.device and u.dtype == t.dtype for u in tensors[1:])


def _check_operands(*pairs: tuple[str, Tensor, tuple[int, ...]]) -> None:
    """Each ``(name, tensor, expected shape)`` 4-D with that shape, all of one dtype and device.

    The kernels take raw pointers sized from the first operand, so an op called directly
    (``torch.ops.refusion.*``) with mismatched operands must fail here: it would otherwise read
    past the smaller tensor. The public functions check earlier, with the same messages.
    """
    first = pairs[0][1]
    for name, t, shape in pairs:
        if not t.is_floating_point():  # as the public functions say; torch's own error was
            # "GeluKernelImpl not implemented for 'Int'"
            raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")
        if t.dim() != 4:
            raise ValueError(f"{name}: expected a (B, C, H, W) tensor, got {tuple(t.shape)}")
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
        if t.dtype != first.dtype or t.device != first.device:
            raise ValueError(f"{name}: expected {first.dtype} on {first.device}, got {t.dtype} "
                             f"on {t.device}")


def _routable(x: Tensor) -> bool:
    return use_native(x) and x.dtype in _KERNEL_DTYPES.get(x.device.type, ())


def _unit_w_stride(x: Tensor) -> Tensor:
    # The kernels take any B/C/H strides but need unit stride along W for vector loads.
    return x if x.stride(-1) == 1 or x.shape[-1] <= 1 else x.contiguous()


def _batch_slabs(x: Tensor) -> Tensor:
    # The gate kernels read one contiguous (C, H, W) slab per batch item at a batch stride; the
    # channel halves from ``chunk`` have exactly that layout, so they are read without a copy.
    if x.shape[0] == 0 or x[0].is_contiguous():
        return x
    return x.contiguous()


def _stream_args(t: Tensor) -> tuple[int, int]:
    return torch.cuda.current_stream(t.device).cuda_stream, t.device.index


def _launch(cpu_name: str, cuda_name: str, t: Tensor, *args: int) -> None:
    mod = native_module()
    if t.device.type == "cpu":
        getattr(mod, cpu_name)(*args, torch.get_num_threads())
    else:
        getattr(mod, cuda_name)(*args, *_stream_args(t))


def _w_strides(x: Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


# --------------------------------------------------------------------------------------------
# Sobel


@torch.library.custom_op("refusion::sobel_xy", mutates_args=())
def sobel_xy_op(x: Tensor) -> tuple[Tensor, Tensor]:
    """Sobel responses ``(sx, sy)`` of ``x`` (B, C, H, W); contiguous outputs."""
    _check(x)
    if not _kernel_supports(x):
        sx, sy = sobel_xy_reference(x)
        # The reference returns two views of one buffer; ops must not return aliases.
        return sx.contiguous().clone(), sy.contiguous().clone()
    x = _unit_w_stride(x)
    sx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    sy = torch.empty_like(sx)
    if x.numel():
        _launch(
            "sobel_xy_cpu",
            "sobel_xy_cuda",
            x,
            x.data_ptr(),
            sx.data_ptr(),
            sy.data_ptr(),
            _DTYPE_CODE[x.dtype],
            *x.shape,
            *_w_strides(x),
        )
    return sx, sy


@sobel_xy_op.register_fake
def _(x: Tensor) -> tuple[Tensor, Tensor]:
    return x.new_empty(x.shape), x.new_empty(x.shape)


@torch.library.custom_op("refusion::sobel_xy_backward", mutates_args=())
def sobel_xy_backward_op(gx: Tensor, gy: Tensor) -> Tensor:
    """Transposed Sobel ``Sx^T gx + Sy^T gy`` with the replicate-border adjoint (B, C, H, W)."""
    _check(gx)
    _check_operands(("gx", gx, gx.shape), ("gy", gy, gx.shape))
    if not _kernel_supports(gx, gy):
        return sobel_xy_transpose_reference(gx, gy).contiguous()
    gx, gy = _unit_w_stride(gx), _unit_w_stride(gy)
    gin = torch.empty(gx.shape, dtype=gx.dtype, device=gx.device)
    if gin.numel():
        _launch(
            "sobel_xy_backward_cpu",
            "sobel_xy_backward_cuda",
            gx,
            gx.data_ptr(),
            gy.data_ptr(),
            gin.data_ptr(),
            _DTYPE_CODE[gx.dtype],
            *gx.shape,
            *_w_strides(gx),
            *_w_strides(gy),
        )
    return gin


@sobel_xy_backward_op.register_fake
def _(gx: Tensor, gy: Tensor) -> Tensor:
    return gx.new_empty(gx.shape)


def _sobel_xy_bwd(ctx, gsx: Tensor | None, gsy: Tensor | None) -> Tensor | None:
    if gsx is None and gsy is None:
        return None
    if gsx is None:
        gsx = torch.zeros_like(gsy)
    if gsy is None:
        gsy = torch.zeros_like(gsx)
    return sobel_xy_backward_op(gsx, gsy)


def _sobel_xy_backward_bwd(ctx, g: Tensor) -> tuple[Tensor, Tensor]:
    # (S^T)^T = S: the double backward is the forward op, again a kernel.
    gx, gy = sobel_xy_op(g)
    return gx, gy


sobel_xy_op.register_autograd(_sobel_xy_bwd)
sobel_xy_backward_op.register_autograd(_sobel_xy_backward_bwd)


# --------------------------------------------------------------------------------------------
# GELU gate

_SQRT1_2 = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


def _gelu_parts(a: Tensor) -> tuple[Tensor, Tensor]:
    """``(Phi(a), phi(a))``: normal CDF and PDF, the pieces of GELU and its derivatives."""
    cdf = 0.5 * (1.0 + torch.erf(a * _SQRT1_2))
    pdf = _INV_SQRT_2PI * torch.exp(-0.5 * a * a)
    return cdf, pdf


def gelu_mul_backward_reference(g: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Reference gradients of ``GELU(a) * b``: ``(g * b * GELU'(a), g * GELU(a))``."""
    cdf, pdf = _gelu_parts(a)
    return g * b * (cdf + a * pdf), g * a * cdf


@torch.library.custom_op("refusion::gelu_mul", mutates_args=())
def gelu_mul_op(a: Tensor, b: Tensor) -> Tensor:
    """``GELU(a) * b`` (exact erf GELU) for (B, C, H, W) tensors; contiguous output."""
    _check_operands(("a", a, a.shape), ("b", b, a.shape))
    if not _kernel_supports(a, b):
        return gelu_mul_reference(a, b).contiguous()
    a, b = _batch_slabs(a), _batch_slabs(b)
    y = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    if y.numel():
        inner = y[0].numel()
        _launch(
            "gelu_mul_cpu",
            "gelu_mul_cuda",
            a,
            a.data_ptr(),
            b.data_ptr(),
            y.data_ptr(),
            _DTYPE_CODE[a.dtype],
            a.shape[0],
            inner,
            a.stride(0),
            b.stride(0),
            inner,
        )
    return y


@gelu_mul_op.register_fake
def _(a: Tensor, b: Tensor) -> Tensor:
    return a.new_empty(a.shape)


@torch.library.custom_op("refusion::gelu_mul_backward", mutates_args=())
def gelu_mul_backward_op(g: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Fused ``(g * b * GELU'(a), g * GELU(a))``; one pass instead of eager's five."""
    _check_operands(("a", a, a.shape), ("b", b, a.shape), ("g", g, a.shape))
    if not _kernel_supports(g, a, b):
        ga, gb = gelu_mul_backward_reference(g, a, b)
        return ga.contiguous(), gb.contiguous()
    g, a, b = _batch_slabs(g), _batch_slabs(a), _batch_slabs(b)
    ga = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    gb = torch.empty_like(ga)
    if ga.numel():
        inner = ga[0].numel()
        _launch(
            "gelu_mul_backward_cpu",
            "gelu_mul_backward_cuda",
            a,
            g.data_ptr(),
            a.data_ptr(),
            b.data_ptr(),
            ga.data_ptr(),
            gb.data_ptr(),
            _DTYPE_CODE[a.dtype],
            a.shape[0],
            inner,
            g.stride(0),
            a.stride(0),
            b.stride(0),
            inner,
        )
    return ga, gb


@gelu_mul_backward_op.register_fake
def _(g: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    return a.new_empty(a.shape), a.new_empty(a.shape)


def _gelu_mul_setup(ctx, inputs, output) -> None:
    a, b = inputs
    ctx.save_for_backward(a, b)


def _gelu_mul_bwd(ctx, g: Tensor) -> tuple[Tensor, Tensor]:
    a, b = ctx.saved_tensors
    ga, gb = gelu_mul_backward_op(g, a, b)
    return ga, gb


def _gelu_mul_backward_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _gelu_mul_double_backward(
    g: Tensor, a: Tensor, b: Tensor, gga: Tensor | None, ggb: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``(ga, gb) = gelu_mul_backward(g, a, b)`` w.r.t. ``(g, a, b)``.

    Written with differentiable torch ops, so third and higher derivatives also work. All
    tensors are (B, C, H, W); ``gga``/``ggb`` are the incoming gradients of ``ga``/``gb``.
    """
    cdf, pdf = _gelu_parts(a)
    dgelu = cdf + a * pdf  # GELU'(a)
    d2gelu = pdf * (2.0 - a * a)  # GELU''(a)
    grad_g = torch.zeros_like(g)
    grad_a = torch.zeros_like(a)
    grad_b = torch.zeros_like(b)
    if gga is not None:  # ga = g * b * GELU'(a)
        grad_g = grad_g + gga * b * dgelu
        grad_a = grad_a + gga * g * b * d2gelu
        grad_b = grad_b + gga * g * dgelu
    if ggb is not None:  # gb = g * GELU(a)
        grad_g = grad_g + ggb * a * cdf
        grad_a = grad_a + ggb * g * dgelu
    return grad_g, grad_a, grad_b


def _gelu_mul_backward_bwd(ctx, gga: Tensor | None, ggb: Tensor | None):
    g, a, b = ctx.saved_tensors
    return _gelu_mul_double_backward(g, a, b, gga, ggb)


gelu_mul_op.register_autograd(_gelu_mul_bwd, setup_context=_gelu_mul_setup)
gelu_mul_backward_op.register_autograd(
    _gelu_mul_backward_bwd, setup_context=_gelu_mul_backward_setup
)


# --------------------------------------------------------------------------------------------
# GELU gate on the whole (B, 2C, H, W) tensor


def _check_gate(x: Tensor) -> None:
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got {x.dtype}")
    if x.dim() != 4 or x.shape[1] % 2:
        raise ValueError(f"expected (B, 2C, H, W) with an even channel count, got {tuple(x.shape)}")


def _gate_shape(x: Tensor) -> tuple[int, int, int, int]:
    return (x.shape[0], x.shape[1] // 2, x.shape[2], x.shape[3])


def _gate_format(x: Tensor) -> torch.memory_format:
    """Layout the gate ops keep: channels-last inputs (mkldnn convolutions produce them) are
    served in place, with channels-last outputs; anything else is made NCHW-contiguous."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _gate_geometry(x: Tensor) -> tuple[int, int, int, int]:
    """``(items, inner, in_stride, out_stride)`` of the kernel's slab loop for the gate input.

    NCHW: one (2C, H, W) slab per batch item, halves ``inner = C*H*W`` apart. Channels-last:
    one slab of 2C channels per pixel, halves ``C`` apart.
    """
    b, c2, h, w = x.shape
    if _gate_format(x) == torch.channels_last:
        return b * h * w, c2 // 2, c2, c2 // 2
    return b, (c2 // 2) * h * w, x.stride(0), (c2 // 2) * h * w


@torch.library.custom_op("refusion::gelu_gate", mutates_args=())
def gelu_gate_op(x: Tensor) -> Tensor:
    """``GELU(x[:, :C]) * x[:, C:]`` for ``x`` (B, 2C, H, W) -> (B, C, H, W).

    The output is channels-last when ``x`` is, NCHW-contiguous otherwise.
    """
    _check_gate(x)
    fmt = _gate_format(x)
    if not _kernel_supports(x):
        a, b = x.chunk(2, dim=1)
        return gelu_mul_reference(a, b).contiguous(memory_format=fmt)
    if fmt == torch.contiguous_format:
        x = _batch_slabs(x)
    y = torch.empty(_gate_shape(x), dtype=x.dtype, device=x.device, memory_format=fmt)
    if y.numel():
        items, inner, sx, sy = _gate_geometry(x)
        _launch(
            "gelu_mul_cpu",
            "gelu_mul_cuda",
            x,
            x.data_ptr(),
            x.data_ptr() + inner * x.element_size(),
            y.data_ptr(),
            _DTYPE_CODE[x.dtype],
            items,
            inner,
            sx,
            sx,
            sy,
        )
    return y


@gelu_gate_op.register_fake
def _(x: Tensor) -> Tensor:
    _check_gate(x)
    return torch.empty(
        _gate_shape(x), dtype=x.dtype, device=x.device, memory_format=_gate_format(x)
    )


@torch.library.custom_op("refusion::gelu_gate_backward", mutates_args=())
def gelu_gate_backward_op(g: Tensor, x: Tensor) -> Tensor:
    """Gradient (B, 2C, H, W) of ``gelu_gate`` at ``x`` (B, 2C, H, W) for ``g`` (B, C, H, W).

    Both halves' gradients are written by one kernel pass into one tensor, in ``x``'s layout
    (channels-last or NCHW-contiguous, as the forward).
    """
    _check_gate(x)
    _check_operands(("x", x, x.shape), ("g", g, _gate_shape(x)))
    fmt = _gate_format(x)
    if not _kernel_supports(g, x):
        a, b = x.chunk(2, dim=1)
        gx = torch.cat(gelu_mul_backward_reference(g, a, b), dim=1)
        return gx.contiguous(memory_format=fmt)
    if fmt == torch.contiguous_format:
        g, x = _batch_slabs(g), _batch_slabs(x)
    else:
        g = g.contiguous(memory_format=fmt)
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    if g.numel():
        items, inner, sx, sg = _gate_geometry(x)
        if fmt == torch.contiguous_format:
            sg = g.stride(0)
        half = inner * x.element_size()
        _launch(
            "gelu_mul_backward_cpu",
            "gelu_mul_backward_cuda",
            x,
            g.data_ptr(),
            x.data_ptr(),
            x.data_ptr() + half,
            gx.data_ptr(),
            gx.data_ptr() + half,
            _DTYPE_CODE[x.dtype],
            items,
            inner,
            sg,
            sx,
            sx,
            2 * inner,
        )
    return gx


@gelu_gate_backward_op.register_fake
def _(g: Tensor, x: Tensor) -> Tensor:
    _check_gate(x)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_gate_format(x))


def _gelu_gate_setup(ctx, inputs, output) -> None:
    (x,) = inputs
    ctx.save_for_backward(x)


def _gelu_gate_bwd(ctx, g: Tensor) -> Tensor:
    (x,) = ctx.saved_tensors
    return gelu_gate_backward_op(g, x)


def _gelu_gate_backward_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _gelu_gate_backward_bwd(ctx, ggx: Tensor) -> tuple[Tensor, Tensor]:
    g, x = ctx.saved_tensors
    a, b = x.chunk(2, dim=1)
    gga, ggb = ggx.chunk(2, dim=1)
    grad_g, grad_a, grad_b = _gelu_mul_double_backward(g, a, b, gga, ggb)
    return grad_g, torch.cat((grad_a, grad_b), dim=1)


gelu_gate_op.register_autograd(_gelu_gate_bwd, setup_context=_gelu_gate_setup)
gelu_gate_backward_op.register_autograd(
    _gelu_gate_backward_bwd, setup_context=_gelu_gate_backward_setup
)


# --------------------------------------------------------------------------------------------
# Public dispatch (called by refusion.ops.sobel_xy / gelu_mul)


def sobel_xy(x: Tensor) -> tuple[Tensor, Tensor]:
    """Sobel responses through the fastest available implementation."""
    _check(x)
    if _routable(x):
        return sobel_xy_op(x)
    return sobel_xy_reference(x)


def gelu_mul(a: Tensor, b: Tensor) -> Tensor:
    """``GELU(a) * b`` through the fastest available implementation."""
    _check_pair(a, b)
    if a.device != b.device or a.dtype != b.dtype:
        raise ValueError(
            f"gate halves must share device and dtype, got {a.device}/{a.dtype} and "
            f"{b.device}/{b.dtype}"
        )
    if not a.is_floating_point():
        raise TypeError(f"expected floating-point tensors, got {a.dtype}")
    if _routable(a):
        return gelu_mul_op(a, b)
    return gelu_mul_reference(a, b)


def gelu_gate(x: Tensor) -> Tensor:
    """``GELU(x[:, :C]) * x[:, C:]`` (B, 2C, H, W) -> (B, C, H, W), fastest implementation."""
    _check_gate(x)
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got {x.dtype}")
    if _routable(x):
        return gelu_gate_op(x)
    a, b = x.chunk(2, dim=1)
    return gelu_mul_reference(a, b)


__all__ = [
    "gelu_gate",
    "gelu_gate_backward_op",
    "gelu_gate_op",
    "gelu_mul",
    "gelu_mul_backward_op",
    "gelu_mul_backward_reference",
    "gelu_mul_op",
    "sobel_xy",
    "sobel_xy_backward_op",
    "sobel_xy_op",
]
