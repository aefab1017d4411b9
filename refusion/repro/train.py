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
from refusion.utils.atomic import atomic_write_text

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
    from refusion.train.trainer import (
        Trainer,
        latest_checkpoint,
        load_run_config,
        mark_run_folder,
    )

    if variant not in VARIANTS:
        raise UserError(f"unknown variant {variant!r} (choose from {', '.join(VARIANTS)})")
    run_dir = task_dir / variant
    final = run_dir / "final.safetensors"
    train_dir, val_dir = task_dir / "data" / "train", task_dir / "data" / "val"
    opts = [*VARIANTS[variant], *overrides]
    # the folders as given (YAML would cut a --work path at " #")
    cfg = build_config(task, recipe_path(task, recipe), opts,
                       {"data.root": str(train_dir), "data.val": str(val_dir)})
    split_now = (task_dir / "split.json").read_text() if (task_dir / "split.json").exists() \
        else ""
    if (run_dir / "config.yaml").exists():
        # a finished or interrupted run is reused only for the same request: another recipe,
        # override or split would report (or continue) a model trained otherwise, and another
        # split could put training pairs among the test pairs
        _check_same_request(run_dir, load_run_config(run_dir), cfg, split_now)
        if final.exists():
            return final
    resume = latest_checkpoint(run_dir) is not None
    if not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "trained_on_split.json", split_now)
        # repro's own folder, checked above to hold this request: an attempt that failed
        # before its first checkpoint (also one made before run folders were marked) starts
        # over in it
        mark_run_folder(run_dir)
    t0 = time.perf_counter()
    try:
        Trainer(cfg, run_dir, resume=resume, quiet=quiet).fit()
    finally:
        _add_wall_time(run_dir, time.perf_counter() - t0)
    return final


def _check_same_request(run_dir: Path, saved, wanted, split_now: str) -> None:
    """One-line :class:`UserError` when the run in ``run_dir`` was made with other settings or
    on another split than this request."""
    from refusion.config import to_dict

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(to_dict(saved)), flat(to_dict(wanted))
    # what may change between sittings without changing the model
    free = ("log.", "threads", "device", "data.workers")
    diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and
                  not k.startswith(free))
    if diff:
        shown = ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:4])
        raise UserError(f"{run_dir} was trained with other settings ({shown}"
                        f"{', ...' if len(diff) > 4 else ''}): give another --work, or remove "
                        "that run to train it again")
    recorded = run_dir / "trained_on_split.json"
    if recorded.exists() and recorded.read_text() != split_now:
        raise UserError(f"{run_dir} was trained on another split than this request's (another "
                        "--seed or data?): give another --work, or remove that run")


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
