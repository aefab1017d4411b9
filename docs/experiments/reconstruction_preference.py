"""Which fused image lets a *trained* R reconstruct both multi-focus sources best?

Trains a fresh reconstruction module R on each candidate fused image of generated multi-focus
pairs and prints held-out L_r as a Markdown table (``refusion.repro.recon_preference``;
docs/training.md, Known limitations, reports and reads the result).

    python docs/experiments/reconstruction_preference.py --seeds 0 1             # trained R
    python docs/experiments/reconstruction_preference.py --seeds 0 1 --steps 0   # R at init
    python docs/experiments/reconstruction_preference.py --data ../shared/data  # real pairs

``--data``: real multi-focus pairs instead, R trained on the MFIFB pairs of the ``mfif``
reproduction split and scored on its 20 Lytro test pairs; the candidates are source a, the
focus selection (each pixel from the source in focus there) and the average.

About 7 minutes per seed on one CPU thread at the defaults.
"""

from __future__ import annotations

import argparse

import torch

from refusion.repro.recon_preference import (
    CANDIDATES,
    REAL_CANDIDATES,
    held_out_loss,
    real_pairs,
    train_and_score,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, default=2000, help="Adam steps per R (default 2000)")
    ap.add_argument("--width", type=int, default=16,
                    help="R's width (default 16, the recipes'; the demo uses 8)")
    ap.add_argument("--data", help="the shared data folder: real MFIFB / Lytro pairs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.data:
        train, test = real_pairs(args.data, "train"), real_pairs(args.data, "test")
        scores = {name: [train_and_score([(f(a, b), a, b) for a, b in train],
                                         [(f(a, b), a, b) for a, b in test], s, args.steps,
                                         args.width) for s in args.seeds]
                  for name, f in REAL_CANDIDATES.items()}
    else:
        scores = {name: [held_out_loss(make, s, args.steps, args.width) for s in args.seeds]
                  for name, make in CANDIDATES.items()}
    print(f"| fused image given to R | held-out L_r, seeds {', '.join(map(str, args.seeds))} "
          "(intensity + gradient) |")
    print("|---|---|")
    for name, cells in scores.items():
        text = ", ".join(f"{t:.4f} ({i:.4f} + {g:.4f})" for t, i, g in cells)
        print(f"| {name} | {text} |", flush=True)


if __name__ == "__main__":
    main()
