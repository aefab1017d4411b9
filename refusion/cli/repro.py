"""``refusion repro TASK``: re-run a task's experiment of issue 9 end to end."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from refusion.cli._common import TASKS


def default_shared() -> Path:
    """The shared data folder: ``$REFUSION_SHARED``, else ``shared`` beside the source
    checkout this package runs from, else ``../shared`` (beside the working directory, where
    the project's layout puts it) for an installed package."""
    if os.environ.get("REFUSION_SHARED"):
        return Path(os.environ["REFUSION_SHARED"])
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file():  # a source checkout (editable install)
        return root.parent / "shared"
    return Path("..") / "shared"


def add_parser(sub) -> argparse.ArgumentParser:
    shared = default_shared()
    p = sub.add_parser(
        "repro",
        help="train the ablation variants of a task, score its test split, write the report",
        description="Splits the shared fusion data of TASK (train / validation / test, written "
        "down in docs/results/splits), trains the chosen variants with a recipe (resuming "
        "interrupted runs, reusing finished ones), scores the test split against the "
        "authors' checkpoint, plain averaging and per-pixel maximum, and writes "
        "RESULTS/TASK.md with curves and an example picture.",
    )
    p.add_argument("task", choices=TASKS)
    p.add_argument("--data", default=str(shared / "data"),
                   help="the shared data folder holding ivif/ mif/ mfif/ meif/ "
                   "(default %(default)s; $REFUSION_SHARED sets the shared folder)")
    p.add_argument("--reference", default=str(shared / "reference"),
                   help="folder of the authors' checkpoint (default %(default)s)")
    p.add_argument("--recipe", default="cpu",
                   help="cpu, paper, tiny or a YAML file (default %(default)s)")
    p.add_argument("--variants", default="learned,fixed",
                   help="comma-separated: learned, fixed, decision (default %(default)s)")
    p.add_argument("--work", default="runs/repro", help="run folders (default %(default)s)")
    p.add_argument("--results",
                   help="where TASK.md and its pictures go (default docs/results with the cpu "
                   "recipe, whose results the project ships; RUNS/results with any other, "
                   "RUNS being --work, so that a tiny or paper run never replaces them)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    p.add_argument("--publish", metavar="DIR",
                   help="also write each variant as named weights with a model card into DIR "
                   "(refusion/weights is what the package ships)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="training configuration overrides on top of the recipe")
    return p


def default_results(recipe: str, work: str) -> str:
    """``docs/results`` for the cpu recipe (the pages the project ships come from it), else
    ``WORK/results``: a tiny or paper run never replaces the shipped pages."""
    return "docs/results" if recipe == "cpu" else str(Path(work) / "results")


def run(args: argparse.Namespace) -> int:
    from refusion.errors import UserError
    from refusion.repro.run import run_repro
    from refusion.repro.train import VARIANTS

    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise UserError(f"--variants: unknown {', '.join(bad) or '(none given)'} "
                        f"(choose from {', '.join(VARIANTS)})")
    results = args.results or default_results(args.recipe, args.work)
    res = run_repro(args.task, args.data, recipe=args.recipe, variants=variants,
                    work=args.work, results=results, reference=args.reference,
                    overrides=tuple(args.overrides), seed=args.seed,
                    publish=args.publish)
    print(f"refusion repro: wrote {res.page}", file=sys.stderr)
    return 0
