"""Train one ablation variant of a task with a recipe, resumably.

A variant's run folder is ``WORK/<task>/<variant>``: a finished run (``final.safetensors``)
is reused, an interrupted one is resumed, and the wall time of all sittings is summed in
``wall_time.json`` (the model cards report it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from refusion.errors import UserError
from refusion.repro.splits import Split, stage, write_split
from refusion.train.config import recipe_file

VARIANTS = {
    "learned": ["ablation.loss=learned", "ablation.fusion=direct"],
    "fixed": ["ablation.loss=fixed", "ablation.fusion=direct"],
    "decision": ["ablation.loss=learned", "ablation.fusion=decision"],
}


def recipe_path(task: str, recipe: str) -> str:
    """A recipe file: a path, or a shipped name (``cpu``, ``paper``: per task; ``tiny``)."""
    return recipe_file(task, recipe, "--recipe")


def stage_split(split: Split, task_dir: Path) -> tuple[Path, Path]:
    """Write the split on record and lay out its training and validation folders."""
    task_dir.mkdir(parents=True, exist_ok=True)
    write_split(split, task_dir / "split.json")
    return stage(split.train, task_dir / "data" / "train"), stage(split.val,
                                                                  task_dir / "data" / "val")


def train_variant(task: str, variant: str, recipe: str, task_dir: Path,
                  overrides: list[str] | tuple[str, ...] = (), quiet: bool = False) -> Path:
    """Train (or resume, or reuse) ``variant`` and return its final checkpoint."""
    from refusion.train.config import build_config
    from refusion.train.trainer import Trainer, latest_checkpoint, load_run_config

    if variant not in VARIANTS:
        raise UserError(f"unknown variant {variant!r} (choose from {', '.join(VARIANTS)})")
    run_dir = task_dir / variant
    final = run_dir / "final.safetensors"
    if final.exists():
        return final
    train_dir, val_dir = task_dir / "data" / "train", task_dir / "data" / "val"
    if latest_checkpoint(run_dir) is not None:
        cfg, resume = load_run_config(run_dir), True
    else:
        opts = [f"data.root={train_dir}", f"data.val={val_dir}", *VARIANTS[variant],
                *overrides]
        cfg, resume = build_config(task, recipe_path(task, recipe), opts), False
    t0 = time.perf_counter()
    try:
        Trainer(cfg, run_dir, resume=resume, quiet=quiet).fit()
    finally:
        _add_wall_time(run_dir, time.perf_counter() - t0)
    return final


def _add_wall_time(run_dir: Path, seconds: float) -> None:
    from refusion.utils.atomic import atomic_write_text

    path = run_dir / "wall_time.json"
    if not run_dir.is_dir():
        return
    prev = json.loads(path.read_text()) if path.exists() else {"seconds": 0.0, "sittings": 0}
    prev = {"seconds": prev["seconds"] + seconds, "sittings": prev["sittings"] + 1}
    atomic_write_text(path, json.dumps(prev) + "\n")


def wall_time(run_dir: Path) -> float | None:
    """Total training seconds of a run over all its sittings (None if not recorded)."""
    path = run_dir / "wall_time.json"
    return json.loads(path.read_text())["seconds"] if path.exists() else None
