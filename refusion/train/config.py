"""Trainer configuration: one dataclass per concern, presets per task in YAML.

Precedence: dataclass defaults (the paper's settings) < the task preset
``refusion/configs/train/<task>.yaml`` < ``--config FILE`` < ``key.sub=value`` overrides.
"""

from __future__ import annotations

import importlib.resources
import os
from dataclasses import dataclass, field
from typing import Literal

import yaml

from refusion.cli._common import TASKS, max_threads
from refusion.config import _merge, apply_overrides, from_dict, read_yaml_mapping, to_dict
from refusion.errors import UserError
from refusion.losses import LossConfig
from refusion.models import FusionConfig, ProposalConfig, ReconstructionConfig


@dataclass
class DataConfig:
    """Where the pairs are and how patches are drawn.

    Attributes:
        root: training folder holding the two modality folders (``ir``/``vi``, ...).
        a, b: explicit source folders (instead of ``root``).
        val: optional validation folder (same layouts); empty = no validation.
        meta_test_fraction: share of the training pairs held out as the meta-testing subset
            (the rest is the meta-training subset); the fusion steps draw from all pairs.
        split_seed: seed of that split (independent of the training seed).
        on_error: ``skip`` (report and drop) or ``fail`` (stop) for unreadable or
            mismatched pairs; both report the files by name before training starts.
        flips: random horizontal/vertical flips of the patches.
        workers: DataLoader worker processes (0 = load in the training process).
        cache: keep every decoded training pair in memory (float32, 8 bytes a pixel of a
            pair, in each process); ``false`` keeps the file names only and decodes the two
            files of each patch when it is drawn (datasets larger than memory; with
            ``workers`` to decode in parallel). The batches are the same either way.
    """

    root: str = ""
    a: str = ""
    b: str = ""
    val: str = ""
    meta_test_fraction: float = 0.3
    split_seed: int = 0
    on_error: Literal["skip", "fail"] = "skip"
    flips: bool = True
    workers: int = 0
    cache: bool = True


@dataclass
class OptimConfig:
    """Adam for F, R and P (the paper: learning rate 1e-4 for all three)."""

    lr_fusion: float = 1e-4
    lr_reconstruction: float = 1e-4
    lr_proposal: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0


@dataclass
class MetaConfig:
    """The inner (look-ahead) step of Algorithm 1.

    Attributes:
        inner_lr_fusion: beta_F of Eq. 7 (plain SGD step on theta_F).
        inner_lr_reconstruction: beta_R of Eq. 8 (plain SGD step on theta_R).
        first_order: replace the second-order meta-gradient by a first-order approximation
            (finite-difference Hessian-vector product; see docs/training.md).
        fd_epsilon: relative step of that finite difference (``eps = fd_epsilon / |u|``).
    """

    inner_lr_fusion: float = 1e-3
    inner_lr_reconstruction: float = 1e-3
    first_order: bool = False
    fd_epsilon: float = 1e-2


@dataclass
class ScheduleConfig:
    """Algorithm 1's loop sizes (paper: L = 50, M = 600, N = 1622, batch 4, 128x128 patches).

    ``warmup_steps`` (not in the paper; default 0) are steps that train F alone with the
    fixed loss (W = V = 1/2) before the first epoch, P and R left at their initialisation (as
    the first meta block of Algorithm 1 sees R), validated as an epoch of their own (epoch 0,
    the paper's epochs then count from 1): meta steps on an untrained F carry almost no
    signal for V (docs/training.md, Known limitations).
    """

    epochs: int = 50
    meta_steps: int = 600
    fusion_steps: int = 1622
    batch: int = 4
    patch: int = 128
    max_steps: int = 0  # stop after this many steps in total (0 = the whole schedule)
    warmup_steps: int = 0


@dataclass
class LogConfig:
    """What is written to the run folder and how often (``every`` counts training steps)."""

    every: int = 50
    panel_every: int = 500
    checkpoint_every: int = 1000
    keep: int = 2
    tensorboard: bool = True
    progress: bool = True


@dataclass
class ValConfig:
    """Validation after every epoch (needs ``data.val``)."""

    metrics: tuple[str, ...] = ("EN", "SD", "SF", "AG", "SSIM", "Qabf")
    best: str = "Qabf"
    max_pairs: int = 20
    max_side: int = 512  # larger images are centre-cropped to this side


@dataclass
class AblationConfig:
    """Table 4 switches. ``loss``: ``learned`` (Algorithm 1) or ``fixed`` (W = V = 1/2, no P,
    no meta steps). ``fusion``: ``direct`` (F outputs I_f) or ``decision`` (F's output is W_a
    and I_f = W_a I_a + (1 - W_a) I_b)."""

    loss: Literal["learned", "fixed"] = "learned"
    fusion: Literal["direct", "decision"] = "direct"


@dataclass
class TrainConfig:
    """Everything one training run needs; saved as ``config.yaml`` in the run folder."""

    task: str = "ivif"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # CPU threads of torch (0 = torch's default)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    proposal: ProposalConfig = field(default_factory=ProposalConfig)
    reconstruction: ReconstructionConfig = field(default_factory=ReconstructionConfig)
    log: LogConfig = field(default_factory=LogConfig)
    val: ValConfig = field(default_factory=ValConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)


def preset_text(task: str) -> str:
    """The YAML preset shipped for ``task`` (package data)."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r} (choose from {', '.join(TASKS)})")
    res = importlib.resources.files("refusion.configs").joinpath("train", f"{task}.yaml")
    return res.read_text(encoding="utf-8")


def recipe_file(task: str, name: str, option: str = "--config") -> str:
    """A settings file: an existing path, or a recipe shipped in ``refusion/configs/recipes``
    by name (``cpu``, ``paper``: that task's; ``tiny``; ``mfif-cpu``, ``mfif-cpu.yaml``, or a
    source-tree path such as ``refusion/configs/recipes/mfif-cpu.yaml``, which then works from
    an installed package too).

    Raises:
        UserError: neither (one line naming ``option`` and the shipped names).
    """
    from pathlib import Path

    path = Path(name)
    if path.is_file():
        return str(name)
    if path.is_dir():
        raise UserError(f"{option} {name} is a folder, not a YAML file")
    folder = importlib.resources.files("refusion.configs").joinpath("recipes")
    # a bare name, or the source-tree path of a shipped recipe; any other missing path is an
    # error (a mistyped path of the user's own file must not fall back to a shipped one)
    shipped_path = (path.parent.as_posix() in (".", "refusion/configs/recipes")
                    and not name.startswith(("./", ".\\")))  # ./cpu means a file of the user's
    stem = path.name.removesuffix(".yaml")
    for cand in (f"{task}-{stem}.yaml", f"{stem}.yaml") if shipped_path else ():
        res = folder.joinpath(cand)
        if res.is_file():
            return str(res)
    shipped = sorted(p.name.removesuffix(".yaml") for p in folder.iterdir()
                     if p.name.endswith(".yaml"))
    if not shipped_path:
        raise UserError(f"{option} {name}: no such file (shipped recipes are given by bare "
                        f"name: cpu, paper (per task), {', '.join(shipped)})")
    raise UserError(f"{option} {name}: no such file and no shipped recipe of that name "
                    f"(shipped: cpu, paper (per task), {', '.join(shipped)})")


def build_config(
    task: str, config_file: str | None = None, overrides: list[str] | tuple[str, ...] = (),
    literal: dict | None = None,
) -> TrainConfig:
    """Defaults < task preset < ``config_file`` < overrides (``key.sub=value``) < ``literal``
    (``{"key.sub": value}``, taken as given: the command line's folder options)."""
    data = to_dict(TrainConfig())
    data = _merge(data, yaml.safe_load(preset_text(task)) or {})
    given = []  # a task written in a --config file or an override must agree with --task
    if config_file:
        mapping = read_yaml_mapping(config_file)
        given += [mapping["task"]] if "task" in mapping else []
        data = _merge(data, mapping)
    given += [v for k, v in apply_overrides({}, overrides).items() if k == "task"]
    for value in given:
        if str(value) != task:
            raise UserError(f"config key 'task' is {value!r} but --task is {task!r} (the task "
                            "comes from --task)")
    data = apply_overrides(data, overrides, literal)
    data["task"] = task
    cfg = from_dict(TrainConfig, data)
    validate(cfg)
    return cfg


def config_from_dict(data: dict) -> TrainConfig:
    """Rebuild a saved configuration (``config.yaml`` of a run folder)."""
    cfg = from_dict(TrainConfig, data)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Reject settings that would fail later, or silently do something else, before any
    work: one line naming the key (a run must not train for an epoch and then stop on a
    validation setting)."""
    import math
    import re

    def bad(key: str, rule: str, value) -> UserError:
        return UserError(f"config key '{key}' must be {rule}, got {value!r}")

    if cfg.task not in TASKS:  # a hand-edited config.yaml of a run
        raise bad("task", "one of " + ", ".join(TASKS), cfg.task)
    s = cfg.schedule
    at_least_one = (
        ("schedule.batch", s.batch), ("schedule.patch", s.patch),
        ("schedule.epochs", s.epochs), ("schedule.fusion_steps", s.fusion_steps),
        ("log.every", cfg.log.every), ("log.panel_every", cfg.log.panel_every),
        ("log.checkpoint_every", cfg.log.checkpoint_every), ("log.keep", cfg.log.keep),
        ("fusion.dim", cfg.fusion.dim), ("fusion.blocks", cfg.fusion.blocks),
        ("fusion.heads", cfg.fusion.heads), ("fusion.afm_expansion", cfg.fusion.afm_expansion),
        ("proposal.width", cfg.proposal.width), ("reconstruction.width", cfg.reconstruction.width),
        ("val.max_pairs", cfg.val.max_pairs),
    )
    for key, value in at_least_one:
        if value < 1:
            raise bad(key, ">= 1", value)
    at_least_zero = (
        ("schedule.meta_steps", s.meta_steps), ("schedule.warmup_steps", s.warmup_steps),
        ("schedule.max_steps", s.max_steps), ("data.workers", cfg.data.workers),
        ("threads", cfg.threads),
    )
    for key, value in at_least_zero:
        if value < 0:
            raise bad(key, ">= 0", value)

    if cfg.threads > max_threads():  # as the other commands' --threads
        raise bad("threads", f"at most 4x the {os.cpu_count()} CPUs here ({max_threads()})",
                  cfg.threads)
    for key, value in (("seed", cfg.seed), ("data.split_seed", cfg.data.split_seed)):
        if not 0 <= value < 2**63:
            raise bad(key, "an integer from 0 to 2**63 - 1", value)
    if cfg.val.max_side < 16:
        raise bad("val.max_side", ">= 16 (the metrics' windows need that much)", cfg.val.max_side)
    d = cfg.data
    if d.root and (d.a or d.b):
        # the pair folders would win without a word over the folder given as data.root
        raise UserError("the training data is given twice: data.root (--data) and data.a/"
                        f"data.b (--a/--b); keep one (data.root={d.root!r}, data.a={d.a!r}, "
                        f"data.b={d.b!r})")
    if d.a and d.b and os.path.realpath(d.a) == os.path.realpath(d.b):
        raise UserError(f"data.a and data.b (--a, --b) are the same folder: {d.a}")
    if not 0.0 < cfg.data.meta_test_fraction < 1.0:
        raise bad("data.meta_test_fraction", "strictly between 0 and 1",
                  cfg.data.meta_test_fraction)
    o, m = cfg.optim, cfg.meta
    finite_non_negative = (
        ("optim.lr_fusion", o.lr_fusion), ("optim.lr_reconstruction", o.lr_reconstruction),
        ("optim.lr_proposal", o.lr_proposal), ("optim.weight_decay", o.weight_decay),
        ("meta.inner_lr_fusion", m.inner_lr_fusion),
        ("meta.inner_lr_reconstruction", m.inner_lr_reconstruction),
        ("loss.alpha1", cfg.loss.alpha1), ("loss.alpha2", cfg.loss.alpha2),
    )
    for key, value in finite_non_negative:
        if not (math.isfinite(value) and value >= 0.0):
            raise bad(key, "a finite number >= 0", value)
    if not (math.isfinite(m.fd_epsilon) and m.fd_epsilon > 0.0):
        raise bad("meta.fd_epsilon", "a finite number > 0", m.fd_epsilon)
    for i, beta in enumerate(o.betas):
        if not 0.0 <= beta < 1.0:
            raise bad(f"optim.betas[{i}]", "in [0, 1)", beta)
    if not (math.isfinite(cfg.fusion.ffn_expansion)
            and int(cfg.fusion.dim * cfg.fusion.ffn_expansion) >= 1):
        raise bad("fusion.ffn_expansion", "a number > 0 (dim x expansion >= 1 channel)",
                  cfg.fusion.ffn_expansion)
    if cfg.fusion.dim % cfg.fusion.heads:
        raise UserError(f"config key 'fusion.heads' ({cfg.fusion.heads}) must divide "
                        f"fusion.dim ({cfg.fusion.dim})")
    for key, dil in (("proposal.dilations", cfg.proposal.dilations),
                     ("reconstruction.dilations", cfg.reconstruction.dilations)):
        if not dil or min(dil) < 1:
            raise bad(key, "a non-empty list of integers >= 1", list(dil))
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device):
        raise bad("device", "auto, cpu, cuda or cuda:N", cfg.device)
    _validate_val(cfg.val)


def _validate_val(v: ValConfig) -> None:
    """Metric names now, not after the first epoch of training."""
    from refusion.metrics.conventions import canonical_metric

    if not v.metrics:
        raise UserError("config key 'val.metrics' must name at least one metric")
    names = []
    for m in v.metrics:
        try:
            names.append(canonical_metric(m))
        except KeyError as exc:
            raise UserError(f"config key 'val.metrics': {exc.args[0]}") from None
    try:
        best = canonical_metric(v.best)
    except KeyError as exc:
        raise UserError(f"config key 'val.best': {exc.args[0]}") from None
    if best not in names:
        raise UserError(f"config key 'val.best' ({v.best}) must be one of val.metrics "
                        f"({', '.join(v.metrics)}): no best checkpoint could be kept otherwise")


def steps_per_epoch(cfg: TrainConfig) -> int:
    """Meta steps (none for the fixed-loss ablation) plus fusion steps."""
    return meta_steps_per_epoch(cfg) + cfg.schedule.fusion_steps


def meta_steps_per_epoch(cfg: TrainConfig) -> int:
    return 0 if cfg.ablation.loss == "fixed" else cfg.schedule.meta_steps


def total_steps(cfg: TrainConfig) -> int:
    full = cfg.schedule.warmup_steps + cfg.schedule.epochs * steps_per_epoch(cfg)
    return min(full, cfg.schedule.max_steps) if cfg.schedule.max_steps > 0 else full


@dataclass(frozen=True)
class StepSchedule:
    """Where a global step falls in Algorithm 1: after ``warmup`` fusion steps (epoch 0 when
    there are any), each epoch is ``meta`` meta steps, then ``per_epoch - meta`` fusion steps.
    Epochs count from 1, as the paper's, with or without a warm-up.
    Picklable (DataLoader workers call it)."""

    meta: int
    per_epoch: int
    warmup: int = 0

    @classmethod
    def of(cls, cfg: TrainConfig) -> StepSchedule:
        return cls(meta_steps_per_epoch(cfg), steps_per_epoch(cfg), cfg.schedule.warmup_steps)

    def epoch(self, step: int) -> int:
        """The epoch of the 0-based ``step``: 0 in the warm-up, then 1, 2, ..."""
        if step < self.warmup:
            return 0
        return (step - self.warmup) // self.per_epoch + 1

    def __call__(self, step: int) -> bool:
        """True when ``step`` is a meta step."""
        return step >= self.warmup and (step - self.warmup) % self.per_epoch < self.meta

    def epoch_ends(self, step: int) -> bool:
        """True when ``step`` is the last step of its epoch (or of the warm-up)."""
        if step < self.warmup:
            return step + 1 == self.warmup
        return (step + 1 - self.warmup) % self.per_epoch == 0
