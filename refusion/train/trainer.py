"""The training loop of Algorithm 1: schedule, checkpoints and resume, signals, NaN guard.

Run folder::

    RUN_DIR/config.yaml                  the full configuration (resume reads it back)
    RUN_DIR/metrics.csv                  training scalars; validation.csv per epoch
    RUN_DIR/panels/step_XXXXXXXX.png     sources, fused, reconstructions, W_a, V_a
    RUN_DIR/checkpoints/step_XXXXXXXX.safetensors   weights (refusion checkpoint format)
    RUN_DIR/checkpoints/step_XXXXXXXX.state.pt      optimizer and RNG states (tensors only)
    RUN_DIR/checkpoints/latest           the step of the newest complete pair of the two
    RUN_DIR/best.safetensors, final.safetensors

Steps: a ``metrics.csv`` row is numbered by the 0-based step it logs; checkpoints, panels and
``validation.csv`` rows by the number of steps finished (the state after them), so the panel
``step_00000010.png`` shows the networks after the step of row 9, as checkpoint step 10 holds
them. Epochs count from 1; epoch 0 is the warm-up (``schedule.warmup_steps``), if any.

Both files of a checkpoint are written atomically, then ``latest`` is replaced atomically: a
crash at any moment leaves the previous checkpoint usable. The state file holds only tensors
and plain containers and is read with ``torch.load(weights_only=True)``.

Determinism: batches are functions of (seed, step) (see :mod:`refusion.train.data`) and the
networks have no dropout, so on the CPU a run resumed from step k ends with the same weights
as the uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from refusion.checkpoint import (
    load_state_checked,
    read_checkpoint,
    refusal_reason,
    save_checkpoint,
)
from refusion.config import to_dict
from refusion.errors import UserError
from refusion.metrics.conventions import METRICS, canonical_metric
from refusion.models import FusionNet, ProposalNet, ReconstructionNet, fixed_weights
from refusion.train import distributed as D
from refusion.train import meta
from refusion.train.ablation import DecisionFusionNet
from refusion.train.config import StepSchedule, TrainConfig, config_from_dict, total_steps
from refusion.train.data import (
    StepBatches,
    centre_crop,
    check_and_load,
    collate_single,
    discover_pairs,
    split_meta,
)
from refusion.train.logging import ScalarLog, write_panel
from refusion.utils.atomic import atomic_path, atomic_write_text, ensure_writable


class TrainingDiverged(UserError):
    """A loss became NaN or infinite; the run stopped without saving the bad weights."""


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns."""

    run_dir: Path
    step: int
    checkpoint: Path | None
    best: dict | None


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but CUDA is not available")
    return dev


def save_run_config(run_dir: Path, cfg: TrainConfig) -> None:
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))


#: Keys a resumed run cannot change: they define what its checkpoints already hold (the task,
#: the networks, the ablation), which a later checkpoint would otherwise misstate. (The
#: schedule may change: for F and P, a fusion-only run with R frozen, resumed with meta steps,
#: is a warm-up, docs/training.md.)
FIXED_ON_RESUME = ("task", "ablation.", "fusion.", "proposal.", "reconstruction.")

#: Above this much memory for the decoded training pairs, the trainer says how to hold less.
CACHE_NOTE_BYTES = 4 * 2**30

#: Written into a run folder when a new run starts there: a folder holding it and no
#: checkpoint is an earlier attempt of a run that failed before its first checkpoint, which a
#: new run may start over in; any other folder holding run files is never written over.
RUN_MARKER = ".refusion-run"
#: What a run writes at the top of its folder.
RUN_FILES = ("config.yaml", "metrics.csv", "validation.csv", "best.safetensors",
             "final.safetensors", "checkpoints", "panels")


def mark_run_folder(run_dir: Path) -> None:
    """Mark ``run_dir`` as a run folder of ours (see :data:`RUN_MARKER`)."""
    atomic_write_text(Path(run_dir) / RUN_MARKER, "a refusion-train run folder\n")


def fresh_run_problem(run_dir: Path) -> str | None:
    """Why a new run cannot start in ``run_dir`` without losing what is there, or None.

    Refused: a folder holding a run with a checkpoint (resume it instead); a folder holding
    run files (``config.yaml``, ``metrics.csv``, a ``final``/``best`` checkpoint, ...) that no
    run of ours started, or the ``final`` result of one; a file. Allowed: a missing or empty
    folder, one without run files, and an earlier attempt that failed before its first
    checkpoint (its logs and its ``best`` are replaced).
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        return f"cannot write into {run_dir} (--out): it is a file, not a folder"
    if not run_dir.is_dir():
        parent = next((p for p in run_dir.absolute().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            return f"cannot make {run_dir} (--out): {parent} is a file, not a folder"
        if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
            return f"cannot make {run_dir} (--out): {parent} is not writable"
        return None
    if latest_checkpoint(run_dir) is not None:
        return f"{run_dir} already holds a run; use --resume {run_dir} or choose another --out"
    found = [n for n in RUN_FILES if (run_dir / n).exists()]
    ours = (run_dir / RUN_MARKER).is_file()
    if not found or (ours and "final.safetensors" not in found):
        return None
    what = "the final result of an earlier run" if ours else "files that a run would overwrite"
    return (f"{run_dir} (--out) holds {what} ({', '.join(found)}); choose another --out, or "
            "move them away")


def load_run_config(run_dir: Path, overrides: list[str] | tuple[str, ...] = (),
                    literal: dict | None = None) -> TrainConfig:
    """The configuration saved in a run folder, with ``key.sub=value`` overrides on top, then
    ``literal`` ``{"key.sub": value}`` items taken as given (the command line's folders).

    Overrides of the keys in :data:`FIXED_ON_RESUME` are refused (one line naming them).
    """
    from refusion.config import apply_overrides, override_key, read_yaml_mapping

    fixed = [key for key, _ in map(override_key, overrides) if key.startswith(FIXED_ON_RESUME)]
    if fixed:
        raise UserError(f"{', '.join(fixed)} cannot change when a run is resumed: its "
                        f"checkpoints hold networks made with the values in {run_dir}/"
                        "config.yaml (start a new run to change them)")
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a refusion-train run folder (no config.yaml)")
    data = read_yaml_mapping(path)
    if not data:  # a truncated or emptied file: say so, not "no training data"
        raise UserError(f"{path} is empty: the run's settings are lost (start a new run, or "
                        "restore config.yaml)")
    return config_from_dict(apply_overrides(data, overrides, literal))


def latest_checkpoint(run_dir: Path) -> tuple[int, Path, Path] | None:
    """``(step, weights, state)`` of the newest complete checkpoint, or None."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    try:
        step = int(pointer.read_text().strip())
    except ValueError:
        raise UserError(f"{pointer} is corrupt") from None
    w, s = _ckpt_paths(Path(run_dir), step)
    if not (w.is_file() and s.is_file()):
        raise UserError(f"{pointer} names step {step} but its files are missing")
    return step, w, s


def _check_adam_state(opt: torch.optim.Optimizer) -> None:
    """Moments shaped like their parameters (a loaded state is otherwise trusted until the
    first step fails with a shape error)."""
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            if "step" in st and torch.as_tensor(st["step"]).numel() != 1:
                shape = tuple(torch.as_tensor(st["step"]).shape)
                raise ValueError(f"a step count of shape {shape}")
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st and (not isinstance(st[key], torch.Tensor)
                                  or st[key].shape != p.shape):
                    got = tuple(st[key].shape) if isinstance(st[key], torch.Tensor) else st[key]
                    raise ValueError(f"{key} of shape {got} for a parameter of shape "
                                     f"{tuple(p.shape)}")


def _read_state(path: Path) -> dict:
    """The optimiser and generator state beside a checkpoint, loaded as untrusted input."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"cannot read training state {path}: {refusal_reason(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable state is one user-facing line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot read training state {path}: {first}") from None
    if not isinstance(blob, dict) or not {"step", "optim", "rng"} <= blob.keys():
        raise UserError(f"{path} is not a refusion-train training state "
                        "(expected step, optim and rng)")
    return blob


def _ckpt_paths(run_dir: Path, step: int) -> tuple[Path, Path]:
    base = run_dir / "checkpoints" / f"step_{step:08d}"
    return base.with_suffix(".safetensors"), base.with_suffix(".state.pt")


class Trainer:
    """Algorithm 1 on one process or as one rank of a torchrun group.

    Args:
        cfg: the configuration (``refusion.train.config.build_config``).
        run_dir: output folder (created); with ``resume=True`` it must hold a checkpoint.
        resume: continue from the newest checkpoint of ``run_dir``.
        quiet: no progress bar or notes (tests).
    """

    def __init__(self, cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False,
                 quiet: bool = False) -> None:
        # data paths as absolute ones: config.yaml must resume from any working directory
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **{
            k: os.path.abspath(v) for k in ("root", "a", "b", "val")
            if (v := getattr(cfg.data, k))}))
        self.cfg, self.run_dir, self.quiet = cfg, Path(run_dir), quiet
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        probe = resolve_device(cfg.device)
        self.dist = D.init_from_env(probe.type)
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        self.schedule = StepSchedule.of(cfg)
        self.total = total_steps(cfg)
        self.learned = cfg.ablation.loss == "learned"
        self._stop = False
        self.step = 0
        self.best: dict | None = None

        torch.manual_seed(cfg.seed)
        net_cls = DecisionFusionNet if cfg.ablation.fusion == "decision" else FusionNet
        self.fusion = net_cls(cfg.fusion).to(self.device)
        self.proposal = ProposalNet(cfg.proposal).to(self.device) if self.learned else None
        self.recon = ReconstructionNet(cfg.reconstruction).to(self.device)
        D.broadcast_modules(self.modules, self.dist)
        o, betas = cfg.optim, tuple(cfg.optim.betas)
        self.opt_f = torch.optim.Adam(self.fusion.parameters(), o.lr_fusion, betas,
                                      weight_decay=o.weight_decay)
        self.opt_r = torch.optim.Adam(self.recon.parameters(), o.lr_reconstruction, betas,
                                      weight_decay=o.weight_decay)
        self.opt_p = (torch.optim.Adam(self.proposal.parameters(), o.lr_proposal, betas,
                                       weight_decay=o.weight_decay) if self.learned else None)

        if not resume:
            # decided by the main process, said by every one (the others would otherwise wait
            # at the barrier below and fail with a collective's traceback)
            problem = None
            if self.dist.is_main:
                try:
                    problem = fresh_run_problem(self.run_dir)
                except UserError as exc:  # e.g. a damaged checkpoints/latest
                    problem = str(exc)
            if D.any_flag(problem is not None, self.dist, self.device):
                raise UserError(problem or "process 0 refused the run folder (see its message)")
        # the data is read before the run folder is made, so that a data error leaves no
        # empty run folder behind; reading it draws nothing from the seeded generators
        self._load_data()
        if resume:
            self._resume()
            if self.dist.is_main and self.step < self.total:
                # a later --resume continues with this sitting's overrides (a complete run
                # trains nothing more, so its file keeps describing it)
                save_run_config(self.run_dir, cfg)
        elif self.dist.is_main:
            ensure_writable(self.run_dir, folder=True)  # one line naming --out otherwise
            mark_run_folder(self.run_dir)
            stale = self.run_dir / "best.safetensors"
            if stale.exists():  # an earlier attempt's, which failed before its first checkpoint
                stale.unlink()
                self._note(f"started over in {self.run_dir}: the failed attempt's logs and "
                           "best.safetensors are replaced")
            save_run_config(self.run_dir, cfg)
        D.barrier(self.dist)

    # ------------------------------------------------------------------ setup
    @property
    def modules(self) -> list[nn.Module]:
        return [m for m in (self.fusion, self.proposal, self.recon) if m is not None]

    @property
    def networks(self) -> dict[str, nn.Module]:
        nets = {"fusion": self.fusion, "reconstruction": self.recon}
        if self.proposal is not None:
            nets["proposal"] = self.proposal
        return nets

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts = {"fusion": self.opt_f, "reconstruction": self.opt_r}
        if self.opt_p is not None:
            opts["proposal"] = self.opt_p
        return opts

    def _note(self, msg: str) -> None:
        if not self.quiet and self.dist.is_main:
            print(f"refusion-train: {msg}", file=sys.stderr)

    def _load_data(self) -> None:
        d = self.cfg.data
        show = not self.quiet and self.dist.is_main and self.cfg.log.progress
        scan = discover_pairs(d.root, d.a or None, d.b or None)
        vscan = None
        if d.val:  # listed before any decoding: a mistyped --val fails at once
            try:
                vscan = discover_pairs(d.val)
            except UserError as exc:
                raise UserError(f"validation data (--val, data.val): {exc}") from None
        self.pairs = check_and_load(scan, d.on_error, "training", progress=show,
                                    report=self.dist.is_main, keep=d.cache)
        held = sum(p.a.nbytes + p.b.nbytes for p in self.pairs) if d.cache else 0
        if held > CACHE_NOTE_BYTES:
            self._note(f"the decoded training pairs take {held / 2**30:.1f} GiB of memory (in "
                       "each process); data.cache=false keeps only their file names")
        self.meta_train, self.meta_test = split_meta(len(self.pairs), d.meta_test_fraction,
                                                     d.split_seed)
        self._note(f"{len(self.pairs)} training pairs ({len(self.meta_train)} meta-training, "
                   f"{len(self.meta_test)} meta-testing)")
        self.val_pairs = []
        self.val_left_out: dict[str, int] = {}
        if vscan is not None:
            n, keep = len(vscan.pairs), self.cfg.val.max_pairs
            if n > keep:
                # spread over the name order, so that every dataset of a folder holding
                # several is in the subset (the first pairs would all be the first dataset's)
                picks = sorted({round(i * (n - 1) / max(keep - 1, 1)) for i in range(keep)})
                vscan.pairs = [vscan.pairs[i] for i in picks]
                self._note(f"validating on {len(picks)} of the {n} validation pairs, spread "
                           "over their names (val.max_pairs)")
            self.val_pairs = check_and_load(vscan, d.on_error, "validation", progress=show,
                                            report=self.dist.is_main)

    # ------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        """Write the checkpoint of the current step (main process only; atomic)."""
        weights, state = _ckpt_paths(self.run_dir, self.step)
        if self.dist.is_main:
            save_checkpoint(weights, self.networks, task=self.cfg.task, step=self.step,
                            extra=self._extra())
            blob = {
                "step": self.step,
                "optim": {k: o.state_dict() for k, o in self.optimizers.items()},
                "rng": {"torch": torch.get_rng_state()},
                "best": self.best or {},
            }
            if torch.cuda.is_available():
                blob["rng"]["cuda"] = torch.cuda.get_rng_state_all()
            with atomic_path(state) as tmp:
                torch.save(blob, tmp)
            atomic_write_text(self.run_dir / "checkpoints" / "latest", f"{self.step}\n")
            self._prune()
        D.barrier(self.dist)
        return weights

    def _write_final(self) -> None:
        """``final.safetensors`` once the schedule is done: after its last step, and on a
        resume of a run that was stopped after its last step but before this file."""
        final = self.run_dir / "final.safetensors"
        if self.dist.is_main and self.step == self.total and not (
                final.is_file() and read_checkpoint(final).step == self.step):
            save_checkpoint(final, self.networks, task=self.cfg.task, step=self.step,
                            extra=self._extra())

    def _extra(self) -> dict:
        # the epoch of the last finished step (0 before any, or in the warm-up)
        epoch = self.schedule.epoch(self.step - 1) if self.step else 0
        return {"ablation": to_dict(self.cfg.ablation), "epoch": epoch, "seed": self.cfg.seed}

    def _prune(self) -> None:
        """Keep the newest ``log.keep`` checkpoints up to this step (the one ``latest`` names
        among them). Checkpoints of later steps, left by an attempt that stopped before its
        ``latest`` moved, are left alone: this run writes those steps again."""
        steps = []
        for path in (self.run_dir / "checkpoints").glob("step_*.safetensors"):
            try:
                steps.append(int(path.name[len("step_"):-len(".safetensors")]))
            except ValueError:
                continue  # not ours
        older = sorted(s for s in steps if s <= self.step)
        for step in older[: max(0, len(older) - self.cfg.log.keep)]:
            for path in _ckpt_paths(self.run_dir, step):
                path.unlink(missing_ok=True)

    def _resume(self) -> None:
        found = latest_checkpoint(self.run_dir)
        if found is None:
            raise UserError(f"{self.run_dir} holds no checkpoint to resume from")
        step, weights, state = found
        ckpt = read_checkpoint(weights)
        if ckpt.task != self.cfg.task or ckpt.step != step:
            # a checkpoint copied in from another run (same architecture) would load silently
            raise UserError(f"{weights} is a {ckpt.task} checkpoint of step {ckpt.step}, but "
                            f"{self.run_dir} is a {self.cfg.task} run at step {step} "
                            "(checkpoints/latest)")
        for name, module in self.networks.items():
            if name not in ckpt.tensors:
                raise UserError(f"{weights} holds no {name} network")
            load_state_checked(module, ckpt.tensors[name], f"checkpoint {weights}")
        blob = _read_state(state)
        if int(blob.get("step", -1)) != step:
            raise UserError(f"{state} is for step {blob.get('step')}, expected {step}")
        o = self.cfg.optim
        lrs = {"fusion": o.lr_fusion, "reconstruction": o.lr_reconstruction,
               "proposal": o.lr_proposal}
        for name, opt in self.optimizers.items():
            try:
                opt.load_state_dict(blob["optim"][name])
                _check_adam_state(opt)
            except (KeyError, ValueError, TypeError, RuntimeError) as exc:
                raise UserError(f"{state} holds no usable {name} optimiser state "
                                f"({type(exc).__name__}: {exc})") from None
            # load_state_dict restores the saved hyper-parameters too; the configuration of
            # this sitting (which may carry new key=value overrides) decides them
            for group in opt.param_groups:
                group.update(lr=lrs[name], betas=tuple(o.betas), weight_decay=o.weight_decay)
        try:
            torch.set_rng_state(blob["rng"]["torch"])
            if "cuda" in blob["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(blob["rng"]["cuda"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise UserError(f"{state} holds no usable random generator state "
                            f"({type(exc).__name__}: {exc})") from None
        self.best = blob.get("best") or None
        if self.best and self.best.get("metric") != canonical_metric(self.cfg.val.best):
            # a best kept for another metric cannot be compared with this one's values
            self._note(f"val.best is now {self.cfg.val.best} (was {self.best.get('metric')}): "
                       "best.safetensors is replaced at the next validation")
            self.best = None
        self.step = step
        if step > self.total:
            raise UserError(f"{self.run_dir} is at step {step}, past the {self.total} steps "
                            "this configuration asks for (schedule.max_steps, schedule.epochs)")
        if step == self.total:
            self._note(f"{self.run_dir} is already complete at step {step}; nothing to do "
                       "(give a larger schedule.epochs or schedule.max_steps to go on)")
        else:
            self._note(f"resuming {self.run_dir} at step {step}")

    # -------------------------------------------------------------- one step
    def _meta_step(self, batch: dict) -> dict:
        c = self.cfg
        train, test = batch["train"].to(self.device), batch["test"].to(self.device)
        out = meta.meta_step(
            self.fusion, self.proposal, self.recon, train, test,
            inner_lr_fusion=c.meta.inner_lr_fusion,
            inner_lr_reconstruction=c.meta.inner_lr_reconstruction,
            alpha1=c.loss.alpha1, alpha2=c.loss.alpha2, first_order=c.meta.first_order,
            fd_epsilon=c.meta.fd_epsilon,
            reduce=lambda g: D.mean_grads(g, self.dist),
            reduce_differentiable=lambda g: D.mean_grads_differentiable(g, self.dist),
        )
        row = {"phase": "meta", "outer": float(out.outer), "inner_fusion": float(out.inner_fusion),
               "inner_reconstruction": float(out.inner_reconstruction),
               "w_a": float(out.w_a), "v_a": float(out.v_a)}
        finite = math.isfinite(row["outer"]) and all(
            bool(torch.isfinite(g).all()) for g in out.grads.values())
        self._guard(finite, "meta")
        for name, p in self.proposal.named_parameters():
            p.grad = out.grads[name]
        self.opt_p.step()
        self.opt_p.zero_grad(set_to_none=True)
        return row

    def _fusion_step(self, batch: dict) -> dict:
        c = self.cfg
        b = batch["fusion"].to(self.device)
        # The warm-up trains F alone: R keeps its initialisation, as it has in the first meta
        # block of Algorithm 1 (no fusion step precedes it), so the warm-up changes only F
        # for that block (docs/training.md, Warm-up). L_r is still computed, for the log.
        warmup = self.schedule.epoch(self.step) == 0
        out = meta.fusion_step_losses(self.fusion, self.proposal, self.recon, b,
                                      alpha1=c.loss.alpha1, alpha2=c.loss.alpha2,
                                      train_reconstruction=not warmup)
        self.opt_f.zero_grad(set_to_none=True)
        self.opt_r.zero_grad(set_to_none=True)
        # F's parameters appear only in L_f and R's only in L_r (fused is detached), so one
        # backward of the sum gives Eq. 11's and Eq. 12's gradients separately.
        if warmup:
            out.fusion.total.backward()
        else:
            (out.fusion.total + out.reconstruction.total).backward()
        D.sync_module_grads([self.fusion] if warmup else [self.fusion, self.recon], self.dist)
        row = {"phase": "fusion", "fusion": float(out.fusion.total.detach()),
               "fusion_int": float(out.fusion.intensity.detach()),
               "fusion_grad": float(out.fusion.gradient.detach()),
               "reconstruction": float(out.reconstruction.total.detach()),
               "w_a": float(out.weights.w_a.mean()), "v_a": float(out.weights.v_a.mean())}
        finite = math.isfinite(row["fusion"]) and math.isfinite(row["reconstruction"])
        self._guard(finite, "fusion")
        self.opt_f.step()
        if not warmup:
            self.opt_r.step()
        return row

    def _guard(self, finite: bool, phase: str) -> None:
        if D.any_flag(not finite, self.dist, self.device):
            found = latest_checkpoint(self.run_dir)
            where = (f"the last good checkpoint is {found[1]} (step {found[0]}; resume with "
                     f"--resume {self.run_dir}, e.g. with a lower learning rate)" if found
                     else "no checkpoint was written yet (start again with the same --out, "
                     "e.g. with a lower learning rate)")
            raise TrainingDiverged(
                f"loss became NaN/inf at step {self.step} ({phase} step, epoch "
                f"{self.schedule.epoch(self.step)}); stopped without saving; {where}"
            )

    @torch.no_grad()
    def _panel(self, batch: dict) -> None:
        b = (batch.get("fusion") or batch["train"]).to(self.device)
        fused = meta.fuse(self.fusion, None, b.a[:1], b.b[:1])
        rec_a, rec_b = self.recon(fused)
        w = (self.proposal(b.a[:1], b.b[:1]) if self.proposal is not None
             else fixed_weights(b.a[:1]))
        write_panel(self.run_dir / "panels" / f"step_{self.step:08d}.png", b.a, b.b, fused,
                    rec_a, rec_b, w.w_a, w.v_a)

    # ------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean metrics of F on the validation pairs (centre crops of ``val.max_side``).

        A metric undefined on a pair (NaN: an image too small or flat for it) is left out of
        that metric's mean, so one such pair does not make the metric NaN for the whole run;
        :attr:`val_left_out` counts, per metric, the pairs left out (NaN when none scored).
        """
        import warnings

        from refusion.metrics import compute_suite
        from refusion.metrics._common import DegenerateInputWarning

        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        self.fusion.eval()
        with warnings.catch_warnings():  # summarised in val_left_out instead, once per epoch
            warnings.simplefilter("ignore", DegenerateInputWarning)
            for pair in self.val_pairs:
                a = centre_crop(pair.a, self.cfg.val.max_side)
                b = centre_crop(pair.b, self.cfg.val.max_side)
                ta = torch.from_numpy(np.ascontiguousarray(a))[None, None].to(self.device)
                tb = torch.from_numpy(np.ascontiguousarray(b))[None, None].to(self.device)
                f = meta.fuse(self.fusion, None, ta, tb)[0, 0].float().cpu().numpy()
                vals = compute_suite(a.astype(np.float64) * 255.0,
                                     b.astype(np.float64) * 255.0,
                                     np.clip(f.astype(np.float64), 0, 1) * 255.0,
                                     metrics=self.cfg.val.metrics)
                for k, v in vals.items():
                    ok = math.isfinite(v)
                    sums[k] = sums.get(k, 0.0) + (v if ok else 0.0)
                    counts[k] = counts.get(k, 0) + ok
        self.fusion.train()
        n = len(self.val_pairs)
        self.val_left_out = {k: n - c for k, c in counts.items() if c < n}
        return {k: sums[k] / counts[k] if counts[k] else float("nan") for k in sums}

    def _end_of_epoch(self, log: ScalarLog | None) -> None:
        if not self.val_pairs or not self.dist.is_main:
            D.barrier(self.dist)
            return
        vals = self.validate()
        epoch = self.schedule.epoch(self.step - 1)
        if log is not None:
            log.validation(self.step, epoch, vals)
        key = canonical_metric(self.cfg.val.best)  # ``qabf`` names the ``Qabf`` column
        if key in vals and math.isfinite(vals[key]):
            sign = 1.0 if METRICS[key].higher_is_better else -1.0
            if self.best is None or sign * vals[key] > sign * self.best["value"]:
                self.best = {"metric": key, "value": vals[key], "step": self.step}
                save_checkpoint(self.run_dir / "best.safetensors", self.networks,
                                task=self.cfg.task, step=self.step,
                                extra={**self._extra(), "validation": vals})
        note = "validation " + ", ".join(f"{k} {v:.4g}" for k, v in vals.items())
        if self.val_left_out:
            n = len(self.val_pairs)
            note += " (undefined, so left out: " + ", ".join(
                f"{k} on {m} of {n} pairs" for k, m in self.val_left_out.items()) + ")"
        if key in vals and not math.isfinite(vals[key]):
            note += (f"; no best checkpoint: val.best {key} is undefined on every validation "
                     "pair")
        self._note(note)
        D.barrier(self.dist)

    # ------------------------------------------------------------------- loop
    def request_stop(self) -> None:
        """Finish the current step, save a checkpoint, then raise KeyboardInterrupt."""
        self._stop = True

    def _on_sigint(self, signum, frame) -> None:  # noqa: ARG002
        if self._stop:  # a second Ctrl-C: leave at once
            raise KeyboardInterrupt
        self._note("interrupt: finishing this step and saving a checkpoint "
                   "(Ctrl-C again to quit without saving)")
        self._stop = True

    def fit(self, on_step=None) -> TrainResult:
        """Run until the schedule (or ``schedule.max_steps``) ends.

        Args:
            on_step: optional ``on_step(trainer, row)`` called after each step (tests, demo).

        Raises:
            KeyboardInterrupt: after Ctrl-C (a checkpoint of the last finished step is saved).
            TrainingDiverged: on a NaN/inf loss (nothing saved after the last good checkpoint).
        """
        c = self.cfg
        world, rank = self.dist.world, self.dist.rank
        data = StepBatches(self.pairs, self.meta_train, self.meta_test, self.schedule,
                           batch=c.schedule.batch, patch=c.schedule.patch, flips=c.data.flips,
                           seed=c.seed, total=self.total, world=world, rank=rank)
        loader = torch.utils.data.DataLoader(
            data, batch_size=None, sampler=range(self.step, self.total),
            num_workers=c.data.workers, collate_fn=collate_single,
            worker_init_fn=_ignore_sigint if c.data.workers else None,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        # step 0: a new run (a folder without a checkpoint: what an earlier, failed attempt
        # logged there is dropped); else the rows after this step are dropped
        log = (ScalarLog(self.run_dir, c.log.tensorboard and not self.quiet,
                         resume_step=self.step or None) if self.dist.is_main else None)
        old_handler = None
        if threading.current_thread() is threading.main_thread():
            old_handler = signal.signal(signal.SIGINT, self._on_sigint)
        bar = None
        if self.dist.is_main and c.log.progress and not self.quiet:
            from tqdm import tqdm

            bar = tqdm(total=self.total, initial=self.step, desc="train", dynamic_ncols=True,
                       file=sys.stderr)
        last_saved: Path | None = None
        try:
            for batch in _unwrapped_worker_errors(loader):
                is_meta = self.schedule(self.step)
                row = self._meta_step(batch) if is_meta else self._fusion_step(batch)
                row["epoch"] = self.schedule.epoch(self.step)
                done = self.step
                self.step += 1
                if log is not None and (done % c.log.every == 0 or self.step == self.total):
                    log.scalars(done, row)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(_postfix(row), refresh=False)
                if self.dist.is_main and (self.step % c.log.panel_every == 0
                                          or self.step == self.total):
                    self._panel(batch)  # on the checkpoints' grid, and the final state
                if on_step is not None:
                    on_step(self, row)
                if self.schedule.epoch_ends(done) or self.step == self.total:
                    self._end_of_epoch(log)
                stop = D.any_flag(self._stop, self.dist, self.device)
                if self.step % c.log.checkpoint_every == 0 or self.step == self.total or stop:
                    last_saved = self.save()
                if stop:
                    self._write_final()  # stopped during the last step: the run is complete
                    self._note(f"stopped at step {self.step}; checkpoint {last_saved}")
                    raise KeyboardInterrupt
            self._write_final()
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
            if bar is not None:
                bar.close()
            if log is not None:
                log.close()
        return TrainResult(self.run_dir, self.step, last_saved, self.best)


def _unwrapped_worker_errors(loader):
    """Iterate ``loader``; a :class:`UserError` raised in a DataLoader worker (a file gone with
    ``data.cache=false``) comes out as its own one line, not as torch's re-raise that carries
    the worker's traceback in its message."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except UserError as exc:
            text = str(exc)
            if "DataLoader worker" in text and "UserError: " in text:
                raise UserError(text.rsplit("UserError: ", 1)[1].strip()) from None
            raise
        yield batch


def _ignore_sigint(worker_id: int) -> None:  # noqa: ARG001 - DataLoader's signature
    """DataLoader workers leave Ctrl-C to the training process, which saves a checkpoint
    (otherwise every worker would print the interrupt note, or die mid-batch)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _postfix(row: dict) -> dict[str, str]:
    keys = (("outer", "L_out"), ("fusion", "L_f"), ("reconstruction", "L_r"), ("w_a", "W_a"),
            ("v_a", "V_a"))
    return {short: f"{row[k]:.4f}" for k, short in keys if k in row}
