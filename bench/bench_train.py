"""Speed of Algorithm 1's steps on the CPU: the published F at 128x128, batch 4 (pytest-benchmark).

Run: ``python -m pytest bench/bench_train.py --benchmark-only``. ``test_second_order_share``
prints how a second-order meta step splits into the forward/inner part and the outer backward
through the inner gradients (the "second-order backward").
"""

from __future__ import annotations

import time

import pytest
import torch

from refusion.losses import fusion_loss, reconstruction_loss
from refusion.models import FusionNet, ProposalNet, ReconstructionNet
from refusion.train.meta import (
    Batch,
    _grads,
    fuse,
    fusion_step_losses,
    inner_update,
    meta_step,
    params_of,
    reconstruct,
)

BATCH, SIZE, BETA = 4, 128, 1e-3


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    nets = FusionNet(), ProposalNet(), ReconstructionNet()
    mk = lambda: Batch(torch.rand(BATCH, 1, SIZE, SIZE), torch.rand(BATCH, 1, SIZE, SIZE))  # noqa: E731
    return nets, mk(), mk()


@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
def test_meta_step(benchmark, setup, first_order):
    (f, p, r), train, test = setup
    benchmark.group = "train step 128x128 b4"
    benchmark.pedantic(
        lambda: meta_step(f, p, r, train, test, inner_lr_fusion=BETA, inner_lr_reconstruction=BETA,
                          first_order=first_order),
        rounds=3, warmup_rounds=1,
    )


def test_fusion_step(benchmark, setup):
    (f, p, r), train, _ = setup
    benchmark.group = "train step 128x128 b4"
    opt = torch.optim.Adam(list(f.parameters()) + list(r.parameters()), 1e-4)

    def step():
        out = fusion_step_losses(f, p, r, train)
        opt.zero_grad()
        (out.fusion.total + out.reconstruction.total).backward()
        opt.step()

    benchmark.pedantic(step, rounds=5, warmup_rounds=1)


def _timed_meta(f, p, r, train, test) -> tuple[float, float]:
    """meta_step's second-order path, timed in two parts: (everything before, outer backward)."""
    t0 = time.perf_counter()
    pp, fp, rp = params_of(p), params_of(f), params_of(r)
    lf = fusion_loss(fuse(f, fp, train.a, train.b), train.a, train.b, p(train.a, train.b))
    f_fast = inner_update(fp, _grads(lf.total, fp, True), BETA)
    fused = fuse(f, f_fast, train.a, train.b)
    lr_in = reconstruction_loss(*reconstruct(r, rp, fused), train.a, train.b)
    r_fast = inner_update(rp, _grads(lr_in.total, rp, True), BETA)
    outer = reconstruction_loss(*reconstruct(r, r_fast, fuse(f, f_fast, test.a, test.b)),
                                test.a, test.b)
    t1 = time.perf_counter()
    torch.autograd.grad(outer.total, list(pp.values()), allow_unused=True)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def test_second_order_share(benchmark, setup, capsys):
    # Through the benchmark fixture so that --benchmark-only runs it too.
    (f, p, r), train, test = setup
    runs = []
    benchmark.group = "meta step, split"
    benchmark.pedantic(lambda: runs.append(_timed_meta(f, p, r, train, test)), rounds=3,
                       iterations=1, warmup_rounds=1)
    runs = runs[-3:]  # without the warm-up
    before = sum(x for x, _ in runs) / len(runs)
    outer = sum(y for _, y in runs) / len(runs)
    benchmark.extra_info["outer_backward_share"] = outer / (before + outer)
    with capsys.disabled():
        print(f"\nsecond-order meta step: {before + outer:.2f} s = forward + inner gradients "
              f"{before:.2f} s + outer (second-order) backward {outer:.2f} s "
              f"({100 * outer / (before + outer):.0f} %)")
