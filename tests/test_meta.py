"""Algorithm 1's meta step: exact meta-gradient (finite differences, float64), the first-order
variant against a hand-written reference, and no in-place mutation of parameters."""

from __future__ import annotations

import copy

import pytest
import torch

from refusion.losses import fusion_loss, reconstruction_loss
from refusion.models import (
    FusionConfig,
    FusionNet,
    ProposalConfig,
    ProposalNet,
    ReconstructionConfig,
    ReconstructionNet,
)
from refusion.train.meta import Batch, fusion_step_losses, inner_update, meta_step

BETA_F, BETA_R = 0.5, 0.3  # large inner steps so that the meta-gradient is far from zero


pytestmark = pytest.mark.usefixtures("one_thread")


def _nets(dtype=torch.float64):
    torch.manual_seed(1)
    f = FusionNet(FusionConfig(dim=4, blocks=1, heads=2, afm_expansion=1)).to(dtype)
    p = ProposalNet(ProposalConfig(width=4, dilations=(1, 2))).to(dtype)
    r = ReconstructionNet(ReconstructionConfig(width=4, dilations=(1,))).to(dtype)
    with torch.no_grad():  # a non-trivial P (the zero-initialised head would block the body)
        p.head.weight.normal_(0, 0.3)
        p.head.bias.normal_(0, 0.3)
    return f, p, r


def _batches(dtype=torch.float64, size=8):
    g = torch.Generator().manual_seed(2)
    mk = lambda: torch.rand(2, 1, size, size, generator=g, dtype=dtype)  # noqa: E731
    return Batch(mk(), mk()), Batch(mk(), mk())


def _outer(f, p, r, train, test, **kw) -> float:
    return float(meta_step(f, p, r, train, test, inner_lr_fusion=BETA_F,
                           inner_lr_reconstruction=BETA_R, **kw).outer)


def test_meta_gradient_matches_finite_differences():
    f, p, r = _nets()
    train, test = _batches()
    out = meta_step(f, p, r, train, test, inner_lr_fusion=BETA_F, inner_lr_reconstruction=BETA_R)
    g = torch.Generator().manual_seed(3)
    h = 1e-6
    for _ in range(3):  # directional derivatives along random directions of all of theta_P
        d = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in p.named_parameters()}
        analytic = sum(float((out.grads[k] * d[k]).sum()) for k in d)

        def shifted(s, d=d):
            q = copy.deepcopy(p)
            with torch.no_grad():
                for k, v in q.named_parameters():
                    v += s * h * d[k]
            return _outer(f, q, r, train, test)

        numeric = (shifted(1.0) - shifted(-1.0)) / (2 * h)
        assert abs(numeric) > 1e-6  # the test would be vacuous otherwise
        assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-9)


def _first_order_reference(f, p, r, train, test, eps_rel):
    """Algorithm 1 with deep copies and in-place SGD: the obvious, slow implementation."""
    fa = copy.deepcopy(f)
    loss = fusion_loss(fa.fuse(train.a, train.b), train.a, train.b, p(train.a, train.b)).total
    gf = torch.autograd.grad(loss, list(fa.parameters()))
    with torch.no_grad():
        for w, gw in zip(fa.parameters(), gf):
            w -= BETA_F * gw
    ra = copy.deepcopy(r)
    fused = fa.fuse(train.a, train.b).detach()
    gr = torch.autograd.grad(
        reconstruction_loss(*ra(fused), train.a, train.b).total, list(ra.parameters())
    )
    with torch.no_grad():
        for w, gw in zip(ra.parameters(), gr):
            w -= BETA_R * gw
    outer = reconstruction_loss(*ra(fa.fuse(test.a, test.b)), test.a, test.b).total
    u = torch.autograd.grad(outer, list(fa.parameters()))
    eps = eps_rel / float(torch.sqrt(sum((x**2).sum() for x in u)))
    gps = []
    for s in (1.0, -1.0):
        fs = copy.deepcopy(f)
        with torch.no_grad():
            for w, d in zip(fs.parameters(), u):
                w += s * eps * d
        lf = fusion_loss(fs.fuse(train.a, train.b), train.a, train.b, p(train.a, train.b)).total
        gps.append(torch.autograd.grad(lf, list(p.parameters())))
    return [-BETA_F * (x - y) / (2 * eps) for x, y in zip(*gps)]


def test_first_order_matches_hand_written_reference():
    f, p, r = _nets()
    train, test = _batches()
    out = meta_step(f, p, r, train, test, inner_lr_fusion=BETA_F, inner_lr_reconstruction=BETA_R,
                    first_order=True, fd_epsilon=1e-3)
    ref = _first_order_reference(f, p, r, train, test, 1e-3)
    for (k, got), want in zip(out.grads.items(), ref):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-12, msg=k)
    assert any(float(g.abs().sum()) > 0 for g in out.grads.values())


def test_first_order_approximates_second_order_without_the_r_path():
    # With beta_R = 0 the only difference left is the finite-difference error, O(eps^2).
    f, p, r = _nets()
    train, test = _batches()
    kw = dict(inner_lr_fusion=BETA_F, inner_lr_reconstruction=0.0)
    exact = meta_step(f, p, r, train, test, **kw).grads
    approx = meta_step(f, p, r, train, test, first_order=True, fd_epsilon=1e-4, **kw).grads
    for k in exact:
        torch.testing.assert_close(approx[k], exact[k], rtol=1e-4, atol=1e-8, msg=k)


def test_meta_step_mutates_nothing():
    f, p, r = _nets(torch.float32)
    train, test = _batches(torch.float32)
    before = [t.clone() for m in (f, p, r) for t in m.parameters()]
    meta_step(f, p, r, train, test, inner_lr_fusion=0.1, inner_lr_reconstruction=0.1)
    after = [t for m in (f, p, r) for t in m.parameters()]
    assert all(torch.equal(x, y) for x, y in zip(before, after))
    assert all(t.grad is None for m in (f, p, r) for t in m.parameters())


def test_inner_update_builds_new_tensors():
    w = torch.ones(3, requires_grad=True)
    out = inner_update({"w": w}, [torch.full((3,), 2.0)], 0.5)
    assert torch.equal(out["w"], torch.zeros(3)) and out["w"] is not w
    assert torch.equal(w, torch.ones(3))


def test_fusion_step_trains_only_f_and_r():
    f, p, r = _nets(torch.float32)
    train, _ = _batches(torch.float32)
    out = fusion_step_losses(f, p, r, train)
    (out.fusion.total + out.reconstruction.total).backward()
    assert all(t.grad is None for t in p.parameters())
    assert all(t.grad is not None for t in f.parameters())
    assert all(t.grad is not None for t in r.parameters())
