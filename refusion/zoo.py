"""Named weights shipped inside the package ("model zoo"), each with a model card.

A shipped checkpoint is ``refusion/weights/<name>.safetensors`` (our checkpoint format, see
:mod:`refusion.checkpoint`) next to ``<name>.json``, its model card: the data and split it was
trained on, the recipe, steps, wall time, machine, test metrics, the architecture stored in the
checkpoint, the SHA-256 and size of the weights file and the project version that published it.

Names: ``ivif``, ``mif``, ``mfif``, ``meif`` are the learnt-loss checkpoints of each task (the
defaults of ``refusion-fuse``, ``refusion-video`` and ``refusion-export``); ``<task>-fixed`` is
the Table 4 fixed-loss ablation, and ``<task>-decision`` is reserved for the decision-map one
(none ships: each collapsed to one source); ``ivif-fast`` has one Restormer block per stage.

``$REFUSION_WEIGHTS_DIR`` (one folder, or several separated by ``os.pathsep``) adds folders with
the same layout that take precedence over the package's. :func:`resolve_weights` turns what a
user passed to ``--weights`` into a file; :func:`publish_weights` writes a checkpoint and its
card into such a folder; :func:`check_card` verifies that a card describes its tensors.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refusion import __version__
from refusion.cli._common import TASKS
from refusion.errors import CheckpointError, UserError
from refusion.utils.atomic import atomic_write_text
from refusion.utils.hashing import sha256_file

ENV_DIR = "REFUSION_WEIGHTS_DIR"
DEFAULT_TASK = "ivif"
CARD_FORMAT = "refusion-model-card"
CARD_VERSION = 1
VARIANTS = ("learnt", "fixed", "decision", "fixed-decision")
#: Facts the publisher must state; ``steps`` defaults to the checkpoint's step.
REQUIRED_FACTS = ("data", "split", "recipe", "wall_time_s", "machine", "test_metrics")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass
class WeightsInfo:
    """One named checkpoint: where it is and what its model card says."""

    name: str
    task: str
    variant: str
    path: Path
    card: dict = field(default_factory=dict)
    card_path: Path | None = None
    source: str = "package"  # or the $REFUSION_WEIGHTS_DIR folder it came from

    @property
    def size_bytes(self) -> int:
        """Size of the weights file in bytes."""
        return self.path.stat().st_size

    @property
    def steps(self) -> int | None:
        """Training steps according to the card (None when the card does not say)."""
        steps = self.card.get("steps")
        return int(steps) if isinstance(steps, int | float) else None

    def as_dict(self) -> dict:
        """JSON-friendly summary (for ``refusion weights --json``)."""
        return {"name": self.name, "task": self.task, "variant": self.variant,
                "path": str(self.path), "size_bytes": self.size_bytes, "steps": self.steps,
                "source": self.source, "card": self.card}


# ----------------------------------------------------------------------------------- listing
def _package_dir() -> Path | None:
    """``refusion/weights`` as a folder (packages installed as plain files; never zipped)."""
    from importlib.resources import files

    try:
        root = files("refusion.weights")
    except ModuleNotFoundError:
        return None
    return root if isinstance(root, Path) and root.is_dir() else None


def weights_dirs() -> list[tuple[Path, str]]:
    """The folders searched, in precedence order, each with a label for listings.

    Raises:
        UserError: ``$REFUSION_WEIGHTS_DIR`` names something that is not a folder.
    """
    out: list[tuple[Path, str]] = []
    for part in filter(None, os.environ.get(ENV_DIR, "").split(os.pathsep)):
        d = Path(part).expanduser()
        if not d.is_dir():
            raise UserError(f"${ENV_DIR}={part} is not a folder")
        out.append((d, str(d)))
    pkg = _package_dir()
    if pkg is not None:
        out.append((pkg, "package"))
    return out


def _read_card(path: Path) -> dict:
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def _task_of(name: str) -> str:
    return name.split("-", 1)[0]


def _variant_of(name: str) -> str:
    _, _, rest = name.partition("-")
    return rest or "learnt"


def _sort_key(w: WeightsInfo) -> tuple:
    t = TASKS.index(w.task) if w.task in TASKS else len(TASKS)
    v = VARIANTS.index(w.variant) if w.variant in VARIANTS else len(VARIANTS)
    return t, w.task, v, w.name


def list_weights() -> list[WeightsInfo]:
    """Every named checkpoint, ``$REFUSION_WEIGHTS_DIR`` first shadowing the package's.

    A ``<name>.safetensors`` without a readable ``<name>.json`` is still listed (with an empty
    card, task and variant guessed from the name); :func:`check_card` reports it.
    """
    found: dict[str, WeightsInfo] = {}
    for folder, label in weights_dirs():
        for path in sorted(folder.glob("*.safetensors")):
            name = path.stem
            if name in found or not _NAME.match(name):
                continue
            card_path = path.with_suffix(".json")
            card = _read_card(card_path) if card_path.is_file() else {}
            found[name] = WeightsInfo(
                name=name,
                task=str(card.get("task") or _task_of(name)),
                variant=str(card.get("variant") or _variant_of(name)),
                path=path,
                card=card,
                card_path=card_path if card_path.is_file() else None,
                source=label,
            )
    return sorted(found.values(), key=_sort_key)


def find_weights(name: str) -> WeightsInfo | None:
    """The named checkpoint ``name``, or None."""
    return next((w for w in list_weights() if w.name == name), None)


def default_weights(task: str | None) -> WeightsInfo | None:
    """The learnt checkpoint of ``task`` (``ivif`` when None): the one named after the task,
    else the first learnt one recorded for that task."""
    task = task or DEFAULT_TASK
    known = list_weights()
    exact = next((w for w in known if w.name == task), None)
    if exact is not None:
        return exact
    return next((w for w in known if w.task == task and w.variant == "learnt"), None)


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or os.sep in spec or (os.altsep or "/") in spec or "." in spec


def resolve_weights(spec: str | os.PathLike | None, task: str | None,
                    option: str = "--weights") -> str:
    """What ``--weights`` (or the ``option`` that gave ``spec``) means, as a file path.

    Order: nothing given -> the learnt checkpoint of ``task`` (``ivif`` when None); an existing
    file -> unchanged; a shipped name -> its file; anything that looks like a path (a folder
    separator or a dot, which names never hold) -> unchanged, so the loader reports a missing
    file in its own words (``.onnx``/``.plan`` files pass through the same way).

    Raises:
        UserError: no weights ship for ``task``, or ``spec`` is neither a file nor a name.
    """
    if spec is None or str(spec) == "":
        w = default_weights(task)
        if w is None:
            raise UserError(
                f"no shipped weights for task '{task or DEFAULT_TASK}': pass --weights CKPT "
                "(`refusion weights` lists what is available)"
            )
        return str(w.path)
    s = str(spec)
    if Path(s).is_file():
        return s
    if Path(s).is_dir():  # a refusion-train run folder, most likely
        inside = [n for n in ("final.safetensors", "best.safetensors") if (Path(s) / n).is_file()]
        hint = (f": give a checkpoint in it, e.g. {Path(s) / inside[0]}" if inside
                else " (give a checkpoint file)")
        raise UserError(f"{option} {s} is a folder{hint}")
    known = list_weights()
    hit = next((w for w in known if w.name == s), None)
    if hit is not None:
        return str(hit.path)
    if _looks_like_path(s):
        return s
    names = ", ".join(w.name for w in known) or "none ship with this installation"
    raise UserError(f"{option} {s}: no such file and no shipped weights of that name "
                    f"(available: {names})")


def shipped_name(path: str | os.PathLike) -> str | None:
    """The name under which ``path`` is listed by :func:`list_weights`, or None."""
    try:
        target = Path(path).resolve()
    except OSError:
        return None
    return next((w.name for w in list_weights() if w.path.resolve() == target), None)


def weights_label(spec: str | os.PathLike | None, resolved: str | os.PathLike) -> str:
    """How to name the weights in messages: the shipped name, else the path as given."""
    return shipped_name(resolved) or str(spec or resolved)


# -------------------------------------------------------------------------------- publishing
def variant_from_extra(extra: dict) -> str:
    """``learnt``, ``fixed``, ``decision`` or ``fixed-decision`` from a checkpoint's ``extra``
    (the trainer records its Table 4 switches as ``extra["ablation"]``)."""
    abl = extra.get("ablation") if isinstance(extra, dict) else None
    if not isinstance(abl, dict):
        return "learnt"
    fixed = abl.get("loss") == "fixed"
    decision = abl.get("fusion") == "decision"
    if fixed and decision:
        return "fixed-decision"
    return "fixed" if fixed else "decision" if decision else "learnt"


def card_for(checkpoint: str | os.PathLike, name: str, facts: dict) -> dict:
    """The model card of ``checkpoint`` published as ``name`` (without ``sha256``/``size``).

    ``facts`` holds what the checkpoint cannot know: ``data``, ``split``, ``recipe``,
    ``wall_time_s``, ``machine``, ``test_metrics`` (all required), optionally ``steps``
    (default: the checkpoint's step), ``task`` (for checkpoints that do not record one),
    ``variant`` and free-form entries (``notes``, ``license``...), which are kept.

    Raises:
        UserError: a bad name, missing facts, or facts that contradict the checkpoint.
    """
    from refusion.checkpoint import read_checkpoint

    return _card(read_checkpoint(checkpoint), name, facts)


def _card(ckpt: Any, name: str, facts: dict) -> dict:
    if not _NAME.match(name):
        raise UserError(f"weights name {name!r} must be lower-case letters, digits, '-' or '_'")
    missing = [k for k in REQUIRED_FACTS if k not in facts]
    if missing:
        raise UserError(f"model card of {name}: missing {', '.join(missing)}")
    if "fusion" not in ckpt.tensors:
        raise CheckpointError(f"{ckpt.path} holds no fusion network")
    task = ckpt.task or facts.get("task")
    if facts.get("task") and ckpt.task and facts["task"] != ckpt.task:
        raise UserError(f"{name}: facts say task {facts['task']!r}, the checkpoint "
                        f"{ckpt.task!r}")
    if task not in TASKS:
        raise UserError(f"{name}: task must be one of {', '.join(TASKS)}, got {task!r}")
    variant = variant_from_extra(ckpt.extra)
    if facts.get("variant") and "ablation" in ckpt.extra and facts["variant"] != variant:
        raise UserError(f"{name}: facts say variant {facts['variant']!r}, the checkpoint "
                        f"{variant!r}")
    variant = facts.get("variant") or variant
    if name in TASKS and (name != task or variant != "learnt"):
        raise UserError(f"the name {name!r} is reserved for the learnt {name} checkpoint "
                        f"(this is {task} {variant}): use e.g. {task}-{variant}")
    steps = int(facts.get("steps", ckpt.step))
    if ckpt.step and steps != ckpt.step:
        raise UserError(f"{name}: facts say {steps} steps, the checkpoint {ckpt.step}")
    known = {"name", "task", "variant", "steps", *REQUIRED_FACTS}
    card = {
        "format": CARD_FORMAT,
        "card_version": CARD_VERSION,
        "name": name,
        "task": task,
        "variant": variant,
        "data": facts["data"],
        "split": facts["split"],
        "recipe": facts["recipe"],
        "steps": steps,
        "wall_time_s": facts["wall_time_s"],
        "machine": facts["machine"],
        "test_metrics": facts["test_metrics"],
        "architecture": ckpt.configs,
        "networks": sorted(ckpt.tensors),
        "parameters": {net: int(sum(t.numel() for t in ts.values()))
                       for net, ts in sorted(ckpt.tensors.items())},
        "ablation": ckpt.extra.get("ablation"),
        "project_version": __version__,
        "trained_with_version": ckpt.version or None,
        "source_format": ckpt.source,
    }
    card.update({k: v for k, v in facts.items() if k not in known})
    return card


def publish_weights(checkpoint: str | os.PathLike, name: str, folder: str | os.PathLike,
                    facts: dict) -> Path:
    """Write ``<folder>/<name>.safetensors`` and its model card ``<name>.json``, atomically.

    The weights are re-saved rather than copied: every network the checkpoint holds (F, and P
    and R when present: the learnt loss is of interest too) is rebuilt from its stored
    configuration, loaded strictly and written as float32, with the checkpoint's task, step and
    ``extra`` (ablation switches, seed, validation scores); our checkpoints hold no optimizer
    state (that lives in the trainer's ``.state.pt``), and nothing else is carried over. The
    authors' ``.pth`` files publish too (``facts`` must then give the ``task``). See
    :func:`card_for` for ``facts``.

    Returns:
        The path of the written ``.safetensors``.
    """
    from refusion.checkpoint import (
        build_networks,
        load_state_checked,
        read_checkpoint,
        save_checkpoint,
    )

    ckpt = read_checkpoint(checkpoint)
    card = _card(ckpt, name, facts)
    nets = build_networks(ckpt.configs)
    for net in ckpt.tensors:
        if net not in nets:
            raise CheckpointError(f"{checkpoint}: tensors for {net} but no configuration")
    for net, module in nets.items():
        if net not in ckpt.tensors:
            raise CheckpointError(f"{checkpoint}: configuration for {net} but no tensors")
        load_state_checked(module.float(), ckpt.tensors[net], f"checkpoint {checkpoint}")
    dest = Path(folder) / f"{name}.safetensors"
    save_checkpoint(dest, nets, task=card["task"], step=card["steps"], extra=ckpt.extra)
    card["size_bytes"] = dest.stat().st_size
    card["sha256"] = sha256_file(dest)
    atomic_write_text(dest.with_suffix(".json"), json.dumps(card, indent=2) + "\n")
    return dest


# ---------------------------------------------------------------------------------- checking
def check_card(info: WeightsInfo) -> list[str]:
    """What is wrong between a model card and its weights file (empty when nothing).

    Checks: the card exists and is ours, its name, the SHA-256 and size of the file, that the
    file reads as our checkpoint, that the card's architecture equals the configuration stored
    in the checkpoint, that the networks built from that architecture load the tensors strictly,
    that the tensors are float32, and that task, steps and variant agree with the checkpoint.
    """
    from refusion.checkpoint import build_networks, load_state_checked, read_checkpoint

    card = info.card
    if not card:
        return ["model card missing or unreadable"
                + (f" ({info.card_path})" if info.card_path else f" (no {info.name}.json)")]
    problems = []
    if card.get("format") != CARD_FORMAT:
        problems.append(f"card format is {card.get('format')!r}, not {CARD_FORMAT!r}")
    if card.get("name") != info.name:
        problems.append(f"card names {card.get('name')!r}, the file is {info.name!r}")
    missing = [k for k in (*REQUIRED_FACTS, "steps", "architecture", "sha256", "size_bytes",
                           "task", "variant", "project_version") if k not in card]
    if missing:
        problems.append(f"card lacks {', '.join(missing)}")
    if "size_bytes" in card and card["size_bytes"] != info.size_bytes:
        problems.append(f"size {info.size_bytes} bytes, card says {card['size_bytes']}")
    if "sha256" in card and card["sha256"] != sha256_file(info.path):
        problems.append("sha256 of the weights differs from the card's")
    try:
        ckpt = read_checkpoint(info.path)
    except UserError as exc:
        return [*problems, str(exc)]
    arch = card.get("architecture")
    if arch != ckpt.configs:
        problems.append("card architecture differs from the configuration in the checkpoint: "
                        f"card {json.dumps(arch, sort_keys=True)} vs checkpoint "
                        f"{json.dumps(ckpt.configs, sort_keys=True)}")
    if isinstance(arch, dict):
        if set(arch) != set(ckpt.tensors):
            problems.append(f"card architecture has {sorted(arch)}, the checkpoint holds "
                            f"{sorted(ckpt.tensors)}")
        try:
            nets = build_networks({k: v for k, v in arch.items() if k in ckpt.tensors})
            for net, module in nets.items():
                load_state_checked(module, ckpt.tensors[net], f"{net} of {info.name}")
        except UserError as exc:
            problems.append(str(exc))
    else:
        problems.append("card architecture is not a mapping")
    odd = sorted({str(t.dtype) for ts in ckpt.tensors.values() for t in ts.values()
                  if t.is_floating_point() and str(t.dtype) != "torch.float32"})
    if odd:
        problems.append(f"tensors are not all float32 ({', '.join(odd)})")
    if card.get("task") != ckpt.task:
        problems.append(f"card task {card.get('task')!r}, checkpoint {ckpt.task!r}")
    if "steps" in card and card["steps"] != ckpt.step:
        problems.append(f"card steps {card['steps']}, checkpoint {ckpt.step}")
    if "ablation" in ckpt.extra and card.get("variant") != variant_from_extra(ckpt.extra):
        problems.append(f"card variant {card.get('variant')!r}, checkpoint "
                        f"{variant_from_extra(ckpt.extra)!r}")
    return problems


def metric_summary(card: dict, limit: int = 4) -> str:
    """A short line of the card's test metrics: ``EN 6.61 SD 42.3 ...`` (first data set's when
    the metrics are grouped by data set)."""
    metrics = card.get("test_metrics")
    if not isinstance(metrics, dict) or not metrics:
        return "-"
    prefix = ""
    first = next(iter(metrics.values()))
    if isinstance(first, dict):
        prefix = f"{next(iter(metrics))}: "
        metrics = first
    parts = [f"{k} {v:.4g}" if isinstance(v, int | float) else f"{k} {v}"
             for k, v in list(metrics.items())[:limit]]
    return prefix + " ".join(parts)
