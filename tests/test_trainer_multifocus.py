"""What the paper reports for multi-focus fusion: the learnt gradient weights V favour the
in-focus source in each region, and the fused image is sharper there than averaging."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refusion.ops import sobel_grad
from refusion.train import Trainer, build_config
from refusion.train.synthetic import make_pairs, write_pairs


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason="not reproduced by a CPU-minute training: P first "
                   "learns a global bias of W/V, not the per-region focus map (see "
                   "docs/training.md, 'Known limitations')")
def test_v_favours_the_in_focus_source(tmp_path):
    write_pairs(make_pairs("mfif", ["astronaut", "coffee", "chelsea", "rocket"], 2, 0, side=96),
                tmp_path / "d", "mfif")
    cfg = build_config("mfif", None, [
        f"data.root={tmp_path / 'd'}", "schedule.epochs=1", "schedule.meta_steps=30",
        "schedule.fusion_steps=30", "schedule.patch=32", "schedule.batch=4", "fusion.dim=8",
        "fusion.blocks=1", "fusion.heads=2", "proposal.width=8", "reconstruction.width=8",
        "optim.lr_proposal=3e-3", "optim.lr_fusion=1e-3", "optim.lr_reconstruction=1e-3",
        "meta.inner_lr_fusion=1e-2", "meta.inner_lr_reconstruction=1e-2",
        "log.progress=false", "log.tensorboard=false", "log.panel_every=100000",
    ])
    tr = Trainer(cfg, tmp_path / "run", quiet=True)
    tr.fit()
    test = make_pairs("mfif", ["camera"], 1, 5, side=96)[0]
    a, b = (torch.from_numpy(x)[None, None] for x in (test.a, test.b))
    with torch.no_grad():
        v_a = tr.proposal(a, b).v_a[0, 0].numpy()
        fused = tr.fusion.fuse(a, b)
    m = test.mask > 0.5
    assert v_a[m].mean() > 0.55 and v_a[~m].mean() < 0.45
    sharp_f = sobel_grad(fused)[0, 0].numpy()
    sharp_avg = sobel_grad(0.5 * (a + b))[0, 0].numpy()
    assert sharp_f.mean() > sharp_avg.mean()
    assert np.isfinite(v_a).all()
