"""``refusion demo``: the whole pipeline on a fresh machine with nothing downloaded."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo",
        help="meta-train a small model on generated pairs and compare it with averaging",
        description="Generates multi-focus (or multi-exposure) pairs from scikit-image's bundled "
        "photographs, meta-trains a small ReFusion with Algorithm 1 on the CPU for about a "
        "minute on two cores (mfif: after a warm-up of F alone; see docs/training.md), fuses "
        "held-out pairs, prints metrics against plain averaging and "
        "the learnt V_a per region, and saves a side-by-side picture.",
    )
    p.add_argument("--task", choices=("mfif", "meif"), default="mfif")
    p.add_argument("--out", default="refusion-demo", help="output folder (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="a few seconds of training (smoke test)")
    p.add_argument("--seed", type=int, default=0)
    return p


def run(args: argparse.Namespace) -> int:
    from refusion.train.demo import main_demo

    return main_demo(args.task, args.out, args.quick, args.seed)
