"""Does the learnt V keep following focus epoch after epoch, with R trained?

Runs the recipe of tests/test_trainer_multifocus.py (``refusion.repro.focus
.synthetic_focus_recipe``: a warm-up of F alone, then epochs of Algorithm 1 with R trained) for
one seed and prints, after the warm-up and after each epoch, the mean V_a where source a / b is
in focus on the held-out pairs, the fused/average sharpness, and whether the test's checks
hold. docs/training.md, Known limitations, reports the result for seeds 0-5.

    python docs/experiments/multifocus_epochs.py 0                 # seed 0, 3 epochs
    python docs/experiments/multifocus_epochs.py 1 --epochs 2 optim.lr_reconstruction=1e-3

About 4 minutes per seed and 3 epochs on one CPU thread.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import torch

from refusion.repro.focus import (
    favours_in_focus,
    region_scores,
    sharper_than_average,
    synthetic_focus_pairs,
    synthetic_focus_recipe,
)
from refusion.train import Trainer, build_config
from refusion.train.trainer import load_run_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("seed", type=int)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--meta", type=int, default=60)
    ap.add_argument("overrides", nargs="*", help="key=value on top of the recipe")
    args = ap.parse_intermixed_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        held_out = synthetic_focus_pairs(Path(tmp) / "d")
        run = Path(tmp) / "run"
        recipe = synthetic_focus_recipe(Path(tmp) / "d", warmup=args.warmup, meta=args.meta,
                                        seed=args.seed)
        tr = Trainer(build_config("mfif", None, recipe + args.overrides), run, quiet=True)
        print(f"seed {args.seed}, R at Adam {tr.cfg.optim.lr_reconstruction:g}")
        print("| after | V_a where a / b is in focus | fused/average sharpness | checks | "
              "L_r of R (last logged step) |")
        print("|---|---|---|---|---|")
        for epoch in range(args.epochs + 1):
            if epoch:
                total = args.warmup * (epoch + 1)
                tr = Trainer(load_run_config(run, [f"schedule.epochs={epoch}",
                                                   f"schedule.max_steps={total}"]),
                             run, resume=True, quiet=True)
            tr.fit()
            scores = [region_scores(tr.proposal, tr.fusion, p) for p in held_out]
            ok = all(favours_in_focus(m) and sharper_than_average(m) for m in scores)
            v = ", ".join(f"{m['v_a|A']:.3f} / {m['v_a|B']:.3f}" for m in scores)
            s = ", ".join(f"{m['sharp|A']:.2f} / {m['sharp|B']:.2f}" for m in scores)
            print(f"| {'warm-up' if not epoch else f'epoch {epoch}'} | {v} | {s} | "
                  f"{'pass' if ok else 'fail'} | {_last_reconstruction_loss(run):.3f} |",
                  flush=True)


def _last_reconstruction_loss(run: Path) -> float:
    """L_r of the last row of the run's metrics.csv that logs a fusion step."""
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    return float(next(r["reconstruction"] for r in reversed(rows) if r["phase"] == "fusion"))


if __name__ == "__main__":
    main()
