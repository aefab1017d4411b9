"""``refusion repro TASK``: split, train the ablation variants, score the test split, report.

Everything lands in two folders: ``WORK/<task>/`` (split on record, staged data links, one run
folder per variant; resumable) and ``RESULTS/`` (``<task>.md``, ``<task>.json`` with every
per-image value, ``<task>_curves.png``, ``<task>_example.png``), small enough to commit.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from refusion.repro.report import (
    BASELINES,
    PAPER_FIXED,
    PAPER_ROWS,
    TASK_NAMES,
    Scores,
    backend_fuser,
    collapse_notes,
    markdown_table,
    plot_curves,
    plot_example,
    score,
    write_json,
)
from refusion.repro.splits import RULES, Split, make_split, write_split
from refusion.repro.train import recipe_path, stage_split, train_variant, wall_time
from refusion.utils.atomic import atomic_write_text, ensure_writable

AUTHORS_IVIF = "ReFusion_IVIF.pth"
# What ships as named weights: the learnt loss and the fixed-loss ablation (the decision-map
# ablation is reported, not shipped).
PUBLISHED = ("learned", "fixed")


@dataclass
class ReproResult:
    """Where a reproduction put its results, and its scores."""

    task: str
    page: Path
    scores: Scores
    checkpoints: dict[str, Path] = field(default_factory=dict)


def chosen_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a variant is scored with: the best on the validation split, else final."""
    best = run_dir / "best.safetensors"
    return best if best.exists() else run_dir / "final.safetensors"


def _proposal(ckpt: str | Path):
    """A checkpoint's loss proposal module P in eval mode, or None (fixed-loss ablation)."""
    from refusion.checkpoint import build_networks, load_state_checked, read_checkpoint

    c = read_checkpoint(ckpt)
    if "proposal" not in c.tensors:
        return None
    net = build_networks({"proposal": c.configs.get("proposal", {})})["proposal"]
    load_state_checked(net, c.tensors["proposal"], f"checkpoint {ckpt}")
    return net.eval()


def _maps(net, a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        w = net(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None])
    return {"W_a": w.w_a[0, 0].numpy(), "V_a": w.v_a[0, 0].numpy()}


def learnt_maps(ckpt: str | Path, a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """``W_a`` and ``V_a`` of a checkpoint's loss proposal module P on one pair (empty if the
    checkpoint has no P, as in the fixed-loss ablation)."""
    net = _proposal(ckpt)
    return {} if net is None else _maps(net, a, b)


def pair_maps(ckpt: str | Path, pairs):
    """``(name, a, b, maps)`` for each of ``pairs`` (objects with ``name``, ``a``, ``b`` paths,
    as in a :class:`~refusion.repro.splits.Split`): the sources as ``(H, W)`` float32 in [0, 1]
    and :func:`learnt_maps` of the checkpoint's P (read once); raises ValueError if it has no
    P."""
    from refusion.metrics._io import read_grey

    net = _proposal(ckpt)
    if net is None:
        raise ValueError(f"checkpoint {ckpt} has no loss proposal module P")
    for p in pairs:
        a = (read_grey(p.a) / 255).astype(np.float32)
        b = (read_grey(p.b) / 255).astype(np.float32)
        yield p.name, a, b, _maps(net, a, b)


def run_repro(task: str, data_root: str | Path, *, recipe: str = "cpu",
              variants: tuple[str, ...] = ("learned", "fixed"), work: str | Path = "runs/repro",
              results: str | Path = "docs/results", reference: str | Path | None = None,
              overrides: tuple[str, ...] = (), seed: int = 0, quiet: bool = False,
              publish: str | Path | None = None) -> ReproResult:
    """Re-run a task's experiment end to end (see the module docstring).

    ``publish``: a folder (``refusion/weights`` ships them) that receives each variant as
    named weights with a model card (:func:`publish_variant`).
    """
    split = make_split(task, data_root, seed)
    task_dir = ensure_writable(Path(work) / task, folder=True)
    results = ensure_writable(results, folder=True)
    if publish is not None:
        ensure_writable(publish, folder=True)
    stage_split(split, task_dir)
    write_split(split, results / "splits" / f"{task}.json")

    ckpts: dict[str, Path] = {}
    for v in variants:
        if not quiet:
            print(f"refusion repro: {task}: training '{v}' ({recipe} recipe)", file=sys.stderr)
        train_variant(task, v, recipe, task_dir, overrides, quiet=quiet)
        ckpts[v] = chosen_checkpoint(task_dir / v)

    methods = {v: backend_fuser(p) for v, p in ckpts.items()}
    authors = Path(reference) / AUTHORS_IVIF if reference and task == "ivif" else None
    if authors is not None and authors.is_file():
        methods["authors' checkpoint"] = backend_fuser(authors)
    methods.update(BASELINES)
    example = split.test[0]
    scores, kept = score(split, methods, progress=not quiet, keep={example.name})
    write_json(scores, results / f"{task}.json")

    plot_curves({v: task_dir / v for v in variants}, results / f"{task}_curves.png",
                f"{TASK_NAMES[task]} fusion: training curves ({recipe} recipe)")
    from refusion.metrics._io import read_grey

    a255, b255 = read_grey(example.a), read_grey(example.b)
    fused = {k: kept[example.name][k] for k in variants}
    maps = learnt_maps(ckpts[variants[0]], (a255 / 255).astype(np.float32),
                       (b255 / 255).astype(np.float32)) if variants else {}
    plot_example(a255, b255, fused, maps, results / f"{task}_example.png",
                 f"{example.name}: sources, fused ({', '.join(variants)}), learnt W_a and V_a "
                 f"of '{variants[0]}' (1 = all weight on I_a)")
    analysis = ""  # paragraphs under the table: what the learnt loss asks for
    if task == "mfif" and "learned" in ckpts:
        from refusion.repro.focus import checkpoint_focus_agreement

        try:
            analysis = checkpoint_focus_agreement(ckpts["learned"], split.test).sentence()
        except ValueError as e:  # e.g. no test pair with both sources in focus somewhere
            analysis = f"(V vs focus not measured: {e}.)"
    if "decision" in ckpts:
        from refusion.repro.decision import checkpoint_minimiser

        try:
            check = checkpoint_minimiser(ckpts["decision"], split.test)
            ref = (checkpoint_minimiser(ckpts["learned"], split.test) if "learned" in ckpts
                   else None)
            analysis += ("\n\n" if analysis else "") + check.sentence(
                scores.copies.get("decision"), ref)
        except ValueError as e:
            analysis += f"\n\n(the decision map's learnt loss not measured: {e}.)"
    page = results / f"{task}.md"
    atomic_write_text(page, _page(task, split, recipe, variants, task_dir, scores, ckpts,
                                  overrides, analysis))
    if publish is not None:
        for v, ckpt in ckpts.items():
            if v in PUBLISHED:
                publish_variant(task, v, ckpt, scores, split, recipe, task_dir / v, publish)
    return ReproResult(task, page, scores, ckpts)


def weights_name(task: str, variant: str) -> str:
    """The shipped name of a variant: ``ivif`` (learnt loss), ``ivif-fixed``, ``ivif-decision``."""
    return task if variant == "learned" else f"{task}-{variant}"


def machine() -> str:
    """One line on the machine that trained a run (the model cards record it)."""
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}, "
            f"python {platform.python_version()}, torch {torch.__version__}")


def publish_variant(task: str, variant: str, ckpt: Path, scores: Scores, split: Split,
                    recipe: str, run_dir: Path, folder: str | Path) -> Path:
    """Ship a variant's scored checkpoint as named weights with its model card."""
    from refusion.zoo import publish_weights

    means = {m: round(mean, 4) for m, (mean, _) in scores.summary()[variant].items()}
    facts = {
        "data": f"shared/data/{task}: {RULES[task]}",
        "split": (f"docs/results/splits/{task}.json (seed {split.seed}): {len(split.train)} "
                  f"train, {len(split.val)} validation, {len(split.test)} test pairs"),
        "recipe": Path(recipe_path(task, recipe)).name,
        "wall_time_s": round(wall_time(run_dir) or 0.0, 1),
        "machine": machine(),
        "test_metrics": {f"{task} test split, {len(split.test)} pairs (mean)": means},
        "scoring": "fixed output scale [0,1] -> [0,255], 8-bit, luma; refusion.metrics defaults",
        "variant": {"learned": "learnt"}.get(variant, variant),
        "notes": f"scored checkpoint: {ckpt.name} (the best epoch on the validation pairs by "
                 "Qabf, else the final one); results: docs/results/" + f"{task}.md",
    }
    return publish_weights(ckpt, weights_name(task, variant), folder, facts)


NOTES = {
    "ivif": "SSIM here is the CDDFuse convention, SSIM(F, I_a) + SSIM(F, I_b) (a sum, up to "
            "2); the convention behind the paper's Table 4 SSIM (0.51, 0.37) is not stated "
            "there, so compare its SSIM column by ranking only.",
}


def _verdict(scores: Scores) -> str:
    """Learnt against fixed loss (and the baselines), metric by metric, comparing means only
    where both are over the same pairs (a metric undefined on some pairs for one method only
    is named apart, as the table leaves its column unbolded)."""
    summ = scores.summary()
    if "learned" not in summ or "fixed" not in summ:
        return ""

    def split(other: str) -> tuple[list[str], list[str], list[str]]:
        same = [m for m in scores.metrics
                if scores.defined("learned", m) == scores.defined(other, m)
                and scores.defined("learned", m)]
        ahead = [m for m in same if summ["learned"][m][0] > summ[other][m][0]]
        return ahead, [m for m in same if m not in ahead], [m for m in scores.metrics
                                                            if m not in same]

    wins, losses, apart = split("fixed")
    n = len(wins) + len(losses)
    if wins:
        text = (f"The learnt loss beats the fixed loss (W = V = 1/2) on {len(wins)} of "
                f"{n} metrics ({', '.join(wins)})")
        text += f"; the fixed loss is ahead on {', '.join(losses)}." if losses else "."
    elif n:  # said plainly: "beats ... on 0 of 6" reads like a win
        text = (f"The learnt loss does not beat the fixed loss (W = V = 1/2) on any of the "
                f"{n} metrics; the fixed loss is ahead on all of them.")
    else:
        text = "The learnt and the fixed loss cannot be compared on these metrics."
    if apart:
        text += (f" Not compared: {', '.join(apart)} (undefined on some test pairs for one of "
                 "the two).")
    for base in ("average", "maximum"):
        if base in summ:
            ahead, behind, _ = split(base)
            text += (f" Against plain {base} the learnt model is ahead on {len(ahead)} of "
                     f"{len(ahead) + len(behind)} metrics.")
    return text


def _page(task: str, split: Split, recipe: str, variants, task_dir: Path, scores: Scores,
          ckpts: dict[str, Path], overrides, analysis: str = "") -> str:
    from refusion import __version__
    from refusion.train.trainer import load_run_config

    rows = []
    for v in variants:
        cfg = load_run_config(task_dir / v)
        s = cfg.schedule
        wt = wall_time(task_dir / v)
        rows.append(f"| {v} | {s.epochs} x ({0 if cfg.ablation.loss == 'fixed' else s.meta_steps}"
                    f" meta + {s.fusion_steps} fusion) | {s.patch}x{s.patch}, batch {s.batch} | "
                    f"{'' if wt is None else f'{wt / 60:.1f} min'} | `{ckpts[v].name}` |")
    extra = [r for r in (PAPER_ROWS.get(task), PAPER_FIXED.get(task)) if r]
    paper = ("Rows in italics are the paper's, on its own test set: for scale only." if extra
             else "The paper's own numbers for this task are not in the table: we could not "
             "read its tables for this task (only the MSRS figures of Table 4 are quoted in "
             "`refusion/repro/report.py`, `PAPER_ROWS`).")
    rec = Path(recipe_path(task, recipe)).name
    cmd = f"refusion repro {task} --data ../shared/data --recipe {recipe} " \
          f"--variants {','.join(variants)}" + (f" --seed {split.seed}" if split.seed else "") \
          + "".join(f" {o}" for o in overrides)
    return f"""# {TASK_NAMES[task]} fusion ({task}): reproduction with our trainer

Generated by `{cmd}` (refusion {__version__}, {time.strftime('%Y-%m-%d')}; {machine()}).
Recipe `{rec}`
(`refusion/configs/recipes/`).

**Split** ({RULES[task]}): {len(split.train)} training pairs, {len(split.val)} validation pairs
(select the best epoch by Qabf), {len(split.test)} test pairs; the names are in
[`splits/{task}.json`](splits/{task}.json). Nothing was tuned on the test pairs.

| variant | steps | patches | wall time | scored checkpoint |
|---|---|---|---|---|
{chr(10).join(rows)}

## Test split, mean ± std ({len(split.test)} pairs)

All models at the fixed output scale ([0, 1] -> [0, 255], no per-image min-max), rounded to 8
bits; metrics on the luma with the default conventions of `refusion.metrics`. Best mean per
column in bold. {paper}

{markdown_table(scores, extra)}
{_verdict(scores)}
{"".join(chr(10) + "- " + line for line in collapse_notes(scores))}
{NOTES.get(task, "")}

{analysis}

Per-image values: [`{task}.json`]({task}.json).

## Training curves

![training curves]({task}_curves.png)

## Example

![example]({task}_example.png)
"""
