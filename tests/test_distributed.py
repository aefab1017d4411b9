"""Two gloo processes on a global batch follow the same trajectory as one process."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from refusion.train.synthetic import make_pairs, write_pairs

STEPS = ["schedule.epochs=1", "schedule.meta_steps=2", "schedule.fusion_steps=2",
         "schedule.patch=16", "fusion.dim=4", "fusion.blocks=1", "fusion.heads=2",
         "fusion.afm_expansion=1", "proposal.width=4", "reconstruction.width=4",
         "log.progress=false", "log.tensorboard=false", "optim.lr_proposal=1e-2",
         "optim.lr_fusion=1e-3", "optim.lr_reconstruction=1e-3", "meta.inner_lr_fusion=0.1",
         "meta.inner_lr_reconstruction=0.1"]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(rank: int, world: int, port: int, root: str, out: str, batch: int, extra: list[str],
           native: bool = True):
    torch.set_num_threads(1)
    from refusion.ops import _kernels

    routable = _kernels._routable
    if not native:  # the pure-PyTorch references, as without a built refusion._C
        _kernels._routable = lambda x: False
    try:
        _run(rank, world, port, root, out, batch, extra)
    finally:
        _kernels._routable = routable


def _run(rank: int, world: int, port: int, root: str, out: str, batch: int, extra: list[str]):
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                          RANK=str(rank), LOCAL_RANK=str(rank))
    from refusion.train import Trainer, build_config
    from refusion.train.distributed import shutdown

    cfg = build_config("mfif", None, [f"data.root={root}", f"schedule.batch={batch}", "device=cpu",
                                      *STEPS, *extra])
    tr = Trainer(cfg, out, quiet=True)
    tr.fit()
    if rank == 0:
        state = {f"{n}.{k}": v for n, m in tr.networks.items() for k, v in m.state_dict().items()}
        torch.save(state, Path(out) / "weights.pt")
    shutdown()
    (Path(out) / f"done-{rank}").touch()  # training and the process group's end both returned


def _spawn(world: int, args: tuple, out: Path) -> None:
    """``mp.spawn`` that tolerates one failure mode only: a rank aborted (SIGABRT) by gloo's
    threads at interpreter exit, after every rank had finished training and left the process
    group. Seen twice in CI runs on a loaded 2-core machine ("terminate called without an
    active exception" in rank 1), never reproduced alone; what this test checks is already
    written then. Any other failure, or an abort before a rank finished, still fails."""
    import signal
    import warnings

    try:
        mp.spawn(_train, args=args, nprocs=world, join=True)
    except mp.ProcessExitedException as exc:
        finished = all((out / f"done-{r}").exists() for r in range(world))
        if exc.exit_code != -signal.SIGABRT or not finished:
            raise
        warnings.warn(f"rank {exc.error_index} aborted at exit after finishing: {exc}",
                      RuntimeWarning, stacklevel=2)


@pytest.mark.parametrize(("first_order", "native"), [(False, True), (True, True), (False, False)],
                         ids=["second-order", "first-order", "second-order-references"])
def test_two_processes_match_one(tmp_path, first_order, native):
    root = tmp_path / "data"
    write_pairs(make_pairs("mfif", ["camera", "coins"], 2, 0, side=40), root, "mfif")
    extra = [f"meta.first_order={str(first_order).lower()}"]
    _train(0, 1, 0, str(root), str(tmp_path / "one"), 4, extra, native)
    _spawn(2, (2, _free_port(), str(root), str(tmp_path / "two"), 2, extra, native),
           tmp_path / "two")
    one = torch.load(tmp_path / "one" / "weights.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "weights.pt", weights_only=True)
    assert one.keys() == two.keys()
    # The bound, 1e-6, for the paper's second-order meta-gradient (measured 1.3e-7
    # with the kernels, 1.5e-7 with the references). The first-order one is a finite
    # difference: it divides float32 rounding differences (another summation order across
    # processes) by 2 eps, hence a looser bound for it (measured 1.3e-6).
    atol = 1e-5 if first_order else 1e-6
    worst = max(float((two[k] - one[k]).abs().max()) for k in one)
    assert worst <= atol, worst
