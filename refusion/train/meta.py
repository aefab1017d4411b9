"""Algorithm 1 as pure functions: the inner step (Eqs. 7-8), the meta step of P (Eqs. 9-10)
and the fusion step of F and R (Eqs. 11-12).

Nothing here mutates a parameter in place: the inner step builds *fast weights*
``theta' = theta - beta * grad`` as new tensors in a dict and evaluates the networks on them with
:func:`torch.func.functional_call`. The outer gradient of P is returned, not applied, so that the
caller can all-reduce it (distributed training) before its optimizer step.

Meta-gradient paths (second order, the default). P enters the outer loss only through the
inner gradient of F: ``theta_F' = theta_F - beta_F grad_F L_f(F; W, V = P(I_a, I_b))``, so

    dL_outer/dtheta_P = -beta_F (dL_outer/dtheta_F')^T  d^2 L_f / (dtheta_F dtheta_P)

where ``dL_outer/dtheta_F'`` includes the path through R's inner step (Eq. 8 uses the fused
image of F', so ``theta_R'`` depends on ``theta_F'``). Autograd computes all of it from the
graph kept with ``create_graph=True``.

First order (``first_order=True``). Treating every inner gradient as a constant, as first-order
MAML does, would leave P with a zero gradient (P acts only through F's inner gradient), so the
first-order variant keeps that one mixed term and approximates it by a central finite
difference of first-order gradients (the DARTS approximation):

    u = dL_outer/dtheta_F'  (R's inner gradient held constant)
    dL_outer/dtheta_P ~= -beta_F [grad_P L_f(theta_F + eps u) - grad_P L_f(theta_F - eps u)] / 2 eps

with ``eps = fd_epsilon / |u|``. No backward pass builds a graph, which is what makes it cheaper.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from refusion.losses import LossTerms, fusion_loss, reconstruction_loss
from refusion.models.proposal import LossWeights, fixed_weights

Params = dict[str, Tensor]
# Gradient combiner: called on a list of per-parameter gradients, returns their mean over the
# processes of a distributed run (identity on one process). May be differentiable.
Reduce = Callable[[list[Tensor]], list[Tensor]]


def _identity(xs: list[Tensor]) -> list[Tensor]:
    return xs


@dataclass
class Batch:
    """Two sources, each ``(B, 1, h, w)`` luma in [0, 1]."""

    a: Tensor
    b: Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.a.to(device, non_blocking=True), self.b.to(device, non_blocking=True))


@dataclass
class MetaOutput:
    """Result of one meta step (all scalars detached, for logging).

    ``grads`` maps P's parameter names to the meta-gradient (already reduced over processes).
    """

    grads: Params
    outer: Tensor  # L_r(R'(F'(meta-test batch)))
    inner_fusion: Tensor  # L_f of the inner step
    inner_reconstruction: Tensor  # L_r of the inner step
    w_a: Tensor  # mean W_a on the meta-training batch
    v_a: Tensor  # mean V_a


@dataclass
class FusionOutput:
    """Losses and maps of one fusion step (detached)."""

    fusion: LossTerms
    reconstruction: LossTerms
    weights: LossWeights
    fused: Tensor
    rec_a: Tensor
    rec_b: Tensor


def params_of(module: nn.Module) -> Params:
    """The module's trainable parameters by name (the live tensors, not copies)."""
    return {k: v for k, v in module.named_parameters() if v.requires_grad}


def inner_update(params: Params, grads: Iterable[Tensor | None], lr: float) -> Params:
    """Fast weights ``theta' = theta - lr * grad`` as new tensors (``None`` grad: unchanged).

    Args:
        params: name -> parameter tensor.
        grads: one gradient per entry of ``params``, in the same order.
        lr: the inner step size (beta).
    """
    return {
        k: p if g is None else p - lr * g for (k, p), g in zip(params.items(), grads, strict=True)
    }


def fuse(fusion: nn.Module, params: Params | None, a: Tensor, b: Tensor) -> Tensor:
    """``F(I_a, I_b)`` on the given fast weights (``None``: the module's own)."""
    x = torch.cat([a, b], dim=1)
    return fusion(x) if params is None else functional_call(fusion, params, (x,))


def reconstruct(recon: nn.Module, params: Params | None, fused: Tensor) -> tuple[Tensor, Tensor]:
    """``R(I_f)`` on the given fast weights (``None``: the module's own)."""
    return recon(fused) if params is None else functional_call(recon, params, (fused,))


def _grads(loss: Tensor, params: Params, create_graph: bool) -> list[Tensor]:
    gs = torch.autograd.grad(
        loss, list(params.values()), create_graph=create_graph, allow_unused=True
    )
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params.values(), gs)]


def meta_step(
    fusion: nn.Module,
    proposal: nn.Module,
    recon: nn.Module,
    train: Batch,
    test: Batch,
    *,
    inner_lr_fusion: float,
    inner_lr_reconstruction: float,
    alpha1: float = 1.0,
    alpha2: float = 1.0,
    first_order: bool = False,
    fd_epsilon: float = 1e-2,
    reduce: Reduce = _identity,
    reduce_differentiable: Reduce | None = None,
) -> MetaOutput:
    """One meta step of Algorithm 1 (Eqs. 7-10): returns P's meta-gradient; updates nothing.

    Args:
        fusion, proposal, recon: F, P, R (their parameters are read, never written).
        train: meta-training batch (inner step); test: meta-testing batch (outer loss).
        inner_lr_fusion, inner_lr_reconstruction: beta_F, beta_R.
        alpha1, alpha2: gradient-term weights of L_f and L_r.
        first_order: finite-difference approximation instead of second-order autograd.
        fd_epsilon: relative finite-difference step (first order only).
        reduce: mean over processes of plain gradients (identity on one process).
        reduce_differentiable: the same, differentiable (for the second-order inner
            gradients); defaults to ``reduce``.
    """
    red_d = reduce_differentiable or reduce
    p_params = params_of(proposal)
    f_params = params_of(fusion)
    r_params = params_of(recon)

    # Eq. 7: inner step of F with the loss proposed by P on the meta-training batch.
    weights = proposal(train.a, train.b)
    lf = fusion_loss(fuse(fusion, f_params, train.a, train.b), train.a, train.b, weights, alpha1)
    g_f = _grads(lf.total, f_params, create_graph=not first_order)
    g_f = red_d(g_f) if not first_order else reduce(g_f)
    f_fast = inner_update(f_params, g_f, inner_lr_fusion)

    # Eq. 8: inner step of R on the fused image of F' (so theta_R' depends on theta_F').
    fused_fast = fuse(fusion, f_fast, train.a, train.b)
    lr_in = reconstruction_loss(*reconstruct(recon, r_params, fused_fast), train.a, train.b, alpha2)
    g_r = _grads(lr_in.total, r_params, create_graph=not first_order)
    g_r = red_d(g_r) if not first_order else [g.detach() for g in reduce(g_r)]
    r_fast = inner_update(r_params, g_r, inner_lr_reconstruction)

    # Eqs. 9-10: outer reconstruction loss through F' and R' on the meta-testing batch.
    fused_test = fuse(fusion, f_fast, test.a, test.b)
    outer = reconstruction_loss(*reconstruct(recon, r_fast, fused_test), test.a, test.b, alpha2)

    names = list(p_params)
    if not first_order:
        gp = torch.autograd.grad(outer.total, list(p_params.values()), allow_unused=True)
        gp = [torch.zeros_like(p) if g is None else g for p, g in zip(p_params.values(), gp)]
    else:
        gp = _first_order_meta_grad(
            fusion, proposal, f_params, f_fast, p_params, outer.total, train,
            inner_lr_fusion, alpha1, fd_epsilon, reduce,
        )
    gp = reduce([g.detach() for g in gp])
    return MetaOutput(
        grads=dict(zip(names, gp)),
        outer=outer.total.detach(),
        inner_fusion=lf.total.detach(),
        inner_reconstruction=lr_in.total.detach(),
        w_a=weights.w_a.detach().mean(),
        v_a=weights.v_a.detach().mean(),
    )


def _first_order_meta_grad(
    fusion: nn.Module,
    proposal: nn.Module,
    f_params: Params,
    f_fast: Params,
    p_params: Params,
    outer: Tensor,
    train: Batch,
    beta_f: float,
    alpha1: float,
    fd_epsilon: float,
    reduce: Reduce,
) -> list[Tensor]:
    # f_fast was built from detached inner gradients, so d outer / d f_fast is a plain
    # first-order backward; it is the direction u of the Hessian-vector product.
    u = reduce(list(torch.autograd.grad(outer, list(f_fast.values()), allow_unused=True)))
    u = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(f_params.values(), u)]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in u))
    if float(norm) == 0.0:
        return [torch.zeros_like(p) for p in p_params.values()]
    eps = fd_epsilon / float(norm)

    def grad_p_at(sign: float) -> list[Tensor]:
        shifted = {
            k: (p + sign * eps * d).detach() for (k, p), d in zip(f_params.items(), u)
        }
        w = proposal(train.a, train.b)
        fused = fuse(fusion, shifted, train.a, train.b)
        loss = fusion_loss(fused, train.a, train.b, w, alpha1).total
        return _grads(loss, p_params, create_graph=False)

    plus, minus = grad_p_at(1.0), grad_p_at(-1.0)
    return [-beta_f * (gp - gm) / (2.0 * eps) for gp, gm in zip(plus, minus)]


def fusion_step_losses(
    fusion: nn.Module,
    proposal: nn.Module | None,
    recon: nn.Module,
    batch: Batch,
    *,
    alpha1: float = 1.0,
    alpha2: float = 1.0,
    train_reconstruction: bool = True,
) -> FusionOutput:
    """Losses of one fusion step (Eqs. 11-12), graphs attached for backward.

    ``L_f`` uses W, V from the frozen P (no gradient reaches P; ``proposal=None`` means the fixed
    loss W = V = 1/2), and ``L_r`` reconstructs from the *detached* fused image, so that
    ``L_f.backward()`` trains only F and ``L_r.backward()`` only R. ``train_reconstruction=False``
    (the warm-up) computes ``L_r`` without a graph, for the log only.
    """
    with torch.no_grad():
        weights = fixed_weights(batch.a) if proposal is None else proposal(batch.a, batch.b)
    fused = fuse(fusion, None, batch.a, batch.b)
    lf = fusion_loss(fused, batch.a, batch.b, weights, alpha1)
    with torch.set_grad_enabled(train_reconstruction and torch.is_grad_enabled()):
        rec_a, rec_b = reconstruct(recon, None, fused.detach())
        lr = reconstruction_loss(rec_a, rec_b, batch.a, batch.b, alpha2)
    return FusionOutput(lf, lr, weights, fused.detach(), rec_a.detach(), rec_b.detach())


__all__ = [
    "Batch",
    "FusionOutput",
    "MetaOutput",
    "fuse",
    "fusion_step_losses",
    "inner_update",
    "meta_step",
    "params_of",
    "reconstruct",
]
