"""``refusion demo``: meta-train a small ReFusion on generated pairs and compare it with averaging.

Nothing is downloaded: pairs are generated from scikit-image's bundled photographs
(:mod:`refusion.train.synthetic`); training uses the real trainer (Algorithm 1) with a small
network; the held-out photos (never seen in training) are fused and scored against plain
averaging, with the all-in-focus (well-exposed) photo as the reference.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from refusion.inference import fuse_lumas
from refusion.train.config import build_config
from refusion.train.meta import fuse
from refusion.train.synthetic import (
    TEST_PHOTOS,
    TRAIN_PHOTOS,
    SynthPair,
    available_photos,
    make_pairs,
    multifocus_pairs,
    write_pairs,
)
from refusion.train.trainer import Trainer
from refusion.utils.atomic import atomic_path, ensure_writable

METRICS = ("EN", "SD", "SF", "AG", "Qabf")


@dataclass
class DemoBudget:
    """How much the demo trains, and how (about 1-3 minutes on two CPU cores).

    ``warmup``: steps that train F alone with the fixed loss before Algorithm 1
    (``schedule.warmup_steps``; P and R keep their initialisation); ``lr_reconstruction``: R's
    Adam rate in Algorithm 1's fusion steps; ``both_orders``: every training pair also with its
    sources swapped. The multi-focus demo uses a warm-up and both orders: with them, P learns
    the paper's focus map in a minute (docs/training.md, Known limitations, says why each
    matters). It runs one epoch, whose meta block meets R at its initialisation, so R's rate
    changes neither P nor F there; it trains at the paper's 1e-4, at which a longer run keeps
    the map longest.
    """

    side: int = 160
    per_photo: int = 2
    epochs: int = 2
    meta_steps: int = 30
    fusion_steps: int = 120
    patch: int = 64
    batch: int = 4
    photos: int = len(TRAIN_PHOTOS)
    warmup: int = 0
    lr_reconstruction: float = 1e-3
    both_orders: bool = False
    lr_proposal: float = 1e-3


BUDGETS = {
    "mfif": DemoBudget(per_photo=1, epochs=1, meta_steps=80, fusion_steps=220, patch=48,
                       warmup=300, lr_reconstruction=1e-4, both_orders=True, lr_proposal=2e-3),
    "meif": DemoBudget(),
}


def quick_budget(task: str) -> DemoBudget:
    """The task's demo at toy size (tests): the same code paths in a few seconds."""
    return replace(BUDGETS[task], side=48, per_photo=1, epochs=1, meta_steps=2, fusion_steps=3,
                   patch=32, batch=2, photos=2, warmup=min(BUDGETS[task].warmup, 2))


def _settings(b: DemoBudget, root: Path, seed: int) -> list[str]:
    return [
        f"data.root={root}", f"seed={seed}", f"schedule.epochs={b.epochs}",
        # Small tensors gain nothing from more threads, and spin-waiting threads on a busy
        # machine cost more than they give.
        "threads=1",
        f"schedule.meta_steps={b.meta_steps}", f"schedule.fusion_steps={b.fusion_steps}",
        f"schedule.patch={b.patch}", f"schedule.batch={b.batch}",
        f"schedule.warmup_steps={b.warmup}",
        # A small F (about 12k parameters) and faster learning rates, so minutes suffice.
        "fusion.dim=8", "fusion.blocks=1", "fusion.heads=2", "proposal.width=8",
        "reconstruction.width=8", "optim.lr_fusion=1e-3",
        f"optim.lr_reconstruction={b.lr_reconstruction}",
        f"optim.lr_proposal={b.lr_proposal}", "meta.inner_lr_fusion=1e-2",
        "meta.inner_lr_reconstruction=1e-2", "log.tensorboard=false", "log.panel_every=100000",
        f"log.checkpoint_every={10**9}",
    ]


def _describe(b: DemoBudget) -> str:
    text = (f"meta-training a small F: {b.warmup} warm-up steps of F alone, then " if b.warmup
            else "meta-training a small F: ")
    text += f"{b.epochs} x ({b.meta_steps} meta + {b.fusion_steps} fusion) steps"
    text += f" at {b.patch}x{b.patch}, batch {b.batch}"
    return text


def _scores(p: SynthPair, fused: np.ndarray) -> dict[str, float]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from refusion.metrics import compute_suite

    s = 255.0
    out = compute_suite(p.a.astype(np.float64) * s, p.b.astype(np.float64) * s,
                        fused.astype(np.float64) * s, metrics=METRICS)
    out["PSNR_ref"] = float(peak_signal_noise_ratio(p.reference, fused, data_range=1.0))
    out["SSIM_ref"] = float(structural_similarity(p.reference, fused, data_range=1.0))
    return out


def _row(images: list[np.ndarray], labels: list[str]) -> np.ndarray:
    tiles = []
    for img, lab in zip(images, labels):
        t = cv2.cvtColor(np.clip(np.round(img * 255), 0, 255).astype(np.uint8),
                         cv2.COLOR_GRAY2BGR)
        bar = np.zeros((22, t.shape[1], 3), np.uint8)
        cv2.putText(bar, lab, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                    cv2.LINE_AA)
        tiles.append(np.vstack([bar, t]))
        tiles.append(np.full((tiles[-1].shape[0], 4, 3), 64, np.uint8))
    return np.hstack(tiles[:-1])


def run_demo(task: str = "mfif", out: str | Path = "refusion-demo", quick: bool = False,
             seed: int = 0, log=print) -> dict:
    """Generate data, meta-train, fuse held-out pairs, print the table, save the picture.

    Returns:
        ``{"table": {method: {metric: mean}}, "picture": Path, "run_dir": Path, "seconds": s,
        "v_a": {pair: (mean V_a where a holds the better content, mean V_a where b does)}}``.
    """
    if task not in BUDGETS:
        raise ValueError(f"no demo for task {task!r} (choose from {', '.join(BUDGETS)})")
    budget = quick_budget(task) if quick else BUDGETS[task]
    out = ensure_writable(out, folder=True)
    t0 = time.time()
    train_photos = available_photos(TRAIN_PHOTOS)[: budget.photos]
    test_photos = available_photos(TEST_PHOTOS)[: 1 if quick else None]
    log(f"generating {task} pairs from {len(train_photos)} bundled photos "
        f"(held out: {', '.join(test_photos)})")
    if task == "mfif":
        train_pairs = multifocus_pairs(train_photos, budget.per_photo, seed, budget.side,
                                       both_orders=budget.both_orders)
    else:
        train_pairs = make_pairs(task, train_photos, budget.per_photo, seed, budget.side)
    test_pairs = make_pairs(task, test_photos, 1, seed + 1000, budget.side)
    with tempfile.TemporaryDirectory(prefix="refusion-demo-") as tmp:
        write_pairs(train_pairs, tmp, task)
        cfg = build_config(task, None, _settings(budget, Path(tmp), seed) + (
            ["log.progress=false"] if quick else []))
        log(_describe(budget))
        run_dir = out / f"run-{task}"
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        trainer = Trainer(cfg, run_dir, quiet=quick)
        trainer.fit()
    table: dict[str, dict[str, float]] = {"average": {}, "ReFusion (demo)": {}}
    shipped = _shipped_model(task)
    if shipped is not None:
        table[f"shipped '{shipped[0]}'"] = {}
        log(f"also fusing with the shipped weights '{shipped[0]}' (trained on real {task} "
            "pairs, see docs/results)")
    rows = []
    v_split: dict[str, tuple[float, float]] = {}
    trainer.fusion.eval()
    for p in test_pairs:
        avg = 0.5 * (p.a + p.b)
        with torch.no_grad():
            ta = torch.from_numpy(p.a)[None, None].to(trainer.device)
            tb = torch.from_numpy(p.b)[None, None].to(trainer.device)
            fused = fuse(trainer.fusion, None, ta, tb)[0, 0].float().cpu().numpy()
            w = trainer.proposal(ta, tb)
        v_a, in_a = w.v_a[0, 0].cpu().numpy(), p.mask > 0.5
        v_split[p.name] = (float(v_a[in_a].mean()), float(v_a[~in_a].mean()))
        results = [("average", avg), ("ReFusion (demo)", fused)]
        if shipped is not None:
            results.append((f"shipped '{shipped[0]}'", fuse_lumas(shipped[1], p.a, p.b)))
        for name, img in results:
            for k, v in _scores(p, img).items():
                table[name][k] = table[name].get(k, 0.0) + v / len(test_pairs)
        extra = [results[2][1]] if shipped is not None else []
        rows.append(_row([p.a, p.b, avg, fused, *extra, p.reference,
                          w.w_a[0, 0].cpu().numpy(), v_a],
                         ["source a", "source b", "average", "ReFusion",
                          *(["shipped"] if extra else []), "reference", "W_a", "V_a"]))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows]
    picture = out / f"demo_{task}.png"
    with atomic_path(picture) as tmp_png:
        cv2.imwrite(str(tmp_png), np.vstack(rows))
    seconds = time.time() - t0
    log(format_table(table))
    good = "in focus" if task == "mfif" else "better exposed"
    log(f"learnt V_a (1 = gradients from source a) where a / b is {good}: "
        + ", ".join(f"{n} {va:.2f} / {vb:.2f}" for n, (va, vb) in v_split.items()))
    log(f"trained {trainer.step} steps in {seconds:.0f} s; picture: {picture}")
    return {"table": table, "picture": picture, "run_dir": run_dir, "seconds": seconds,
            "v_a": v_split}


def _shipped_model(task: str):
    """``(name, F)`` of the learnt weights shipped for ``task``, or None when none ships."""
    from refusion.checkpoint import load_fusion_model
    from refusion.zoo import default_weights

    info = default_weights(task)
    if info is None:
        return None
    model, _ = load_fusion_model(info.path)
    return info.name, model


def format_table(table: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per method, one column per metric."""
    names = list(next(iter(table.values())))
    head = f"{'method':<18}" + "".join(f"{n:>10}" for n in names)
    lines = [head, "-" * len(head)]
    for method, vals in table.items():
        lines.append(f"{method:<18}" + "".join(f"{vals[n]:>10.4f}" for n in names))
    return "\n".join(lines)


def main_demo(task: str, out: str, quick: bool, seed: int) -> int:
    run_demo(task, out, quick, seed, log=lambda s: print(s, file=sys.stdout, flush=True))
    return 0
