"""Checkpoints: our safetensors format, and the authors' published ``.pth`` files.

Our format is one ``.safetensors`` file. Tensors are stored as ``<network>.<parameter>`` with
``<network>`` one of ``fusion``, ``proposal``, ``reconstruction``; the string metadata holds
``format=refusion``, ``format_version``, ``refusion_version``, ``task``, ``step`` and a JSON
``configs`` entry with each network's architecture configuration (plus free-form JSON
``extra``, e.g. a model card). Nothing in it can execute code.

A checkpoint is untrusted input: the authors' ``.pth`` files are read with
``torch.load(weights_only=True)``, so a pickle that would run code is refused, and any file whose
keys or shapes do not fit the model ends in one :class:`~refusion.errors.CheckpointError` line
naming the first mismatches. Writes are atomic.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from refusion import __version__
from refusion.errors import CheckpointError, UserError
from refusion.models.authors import convert_authors_state_dict, looks_like_authors_state_dict
from refusion.models.fusion import FusionConfig, FusionNet
from refusion.utils.atomic import atomic_path

FORMAT = "refusion"
FORMAT_VERSION = "1"
NETWORKS = ("fusion", "proposal", "reconstruction")


@dataclass
class Checkpoint:
    """What a checkpoint file holds, network by network."""

    tensors: dict[str, dict[str, Tensor]]
    configs: dict[str, dict] = field(default_factory=dict)
    task: str | None = None
    step: int = 0
    version: str = ""
    extra: dict = field(default_factory=dict)
    source: str = "refusion"  # or "authors"
    path: str = ""


def save_checkpoint(
    path: str | os.PathLike,
    networks: dict[str, nn.Module],
    *,
    task: str | None = None,
    step: int = 0,
    extra: dict | None = None,
) -> Path:
    """Write the given networks (name -> module with a ``config`` attribute) atomically."""
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    configs: dict[str, dict] = {}
    for name, module in networks.items():
        if name not in NETWORKS:
            raise ValueError(f"unknown network name {name!r}; expected one of {NETWORKS}")
        for key, value in module.state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().to("cpu").contiguous()
        cfg = getattr(module, "config", None)
        configs[name] = cfg.to_dict() if cfg is not None else {}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "refusion_version": __version__,
        "task": task or "",
        "step": str(int(step)),
        "configs": json.dumps(configs, sort_keys=True),
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    dest = Path(path)
    with atomic_path(dest) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return dest


def _kind(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(16)
    # safetensors: u64 header length then JSON; torch: zip ("PK") or a legacy pickle (0x80).
    # The safetensors test comes first, since its length bytes may start with 0x80.
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "torch"
    return "unknown"


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read our ``.safetensors`` checkpoints or the authors' ``.pth`` state dicts safely.

    Raises:
        CheckpointError: missing/unreadable file, unsafe pickle, unknown format or layout.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        kind = _kind(p)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {p}: {exc.strerror}") from None
    if kind == "safetensors":
        return _read_ours(p)
    if kind == "torch":
        return _read_torch(p)
    raise CheckpointError(
        f"{p} is neither a refusion .safetensors checkpoint nor a torch .pth file"
    )


def _read_ours(p: Path) -> Checkpoint:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(p), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            flat = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{p} is not a readable safetensors file ({exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{p} is a safetensors file but not a refusion checkpoint")
    tensors: dict[str, dict[str, Tensor]] = {}
    for key, value in flat.items():
        net, _, rest = key.partition(".")
        if net not in NETWORKS or not rest:
            raise CheckpointError(f"{p}: unexpected tensor name {key!r}")
        tensors.setdefault(net, {})[rest] = value
    try:
        configs = json.loads(meta.get("configs", "{}"))
        extra = json.loads(meta.get("extra", "{}"))
        step = int(meta.get("step", "0"))
    except (ValueError, TypeError):
        raise CheckpointError(f"{p}: corrupt metadata") from None
    return Checkpoint(
        tensors=tensors,
        configs=configs,
        task=meta.get("task") or None,
        step=step,
        version=meta.get("refusion_version", ""),
        extra=extra,
        source="refusion",
        path=str(p),
    )


def refusal_reason(exc: pickle.UnpicklingError) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words.

    torch's own text runs to a page, with terminal escapes, and suggests
    ``weights_only=False``, which a checkpoint from elsewhere must never get.
    """
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it names the Python object {found.group(1)}, which only a full unpickle would run"
    found = re.search(r"Unsupported operand (\d+)", text)
    if found:
        return f"not a torch file, or damaged (unknown pickle operand {found.group(1)})"
    return "torch.load(weights_only=True) refused it"


def _read_torch(p: Path) -> Checkpoint:
    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refusing to load {p}: it is not a plain tensor state dict ({refusal_reason(exc)})"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"cannot read {p} as a torch checkpoint ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{p} does not hold a state dict of tensors")
    if not looks_like_authors_state_dict(state):
        raise CheckpointError(
            f"{p} is a torch state dict but not the authors' ReFusion layout "
            f"(first keys: {', '.join(list(state)[:3])})"
        )
    return Checkpoint(
        tensors={"fusion": convert_authors_state_dict(state)},
        configs={"fusion": FusionConfig().to_dict()},
        source="authors",
        path=str(p),
    )


def load_state_checked(module: nn.Module, state: dict[str, Tensor], where: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the first mismatches."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else ""))
    if unexpected:
        problems.append(
            f"unexpected {', '.join(unexpected[:3])}" + (" ..." if len(unexpected) > 3 else "")
        )
    if shapes:
        problems.append(f"shape {'; '.join(shapes[:3])}" + (" ..." if len(shapes) > 3 else ""))
    if problems:
        raise CheckpointError(f"{where} does not fit the model: {'; '.join(problems)}")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def fusion_config_from(ckpt: Checkpoint) -> FusionConfig:
    """The fusion architecture recorded in a checkpoint (the paper's when absent)."""
    from refusion.config import from_dict

    try:
        return from_dict(FusionConfig, ckpt.configs.get("fusion", {}))
    except Exception as exc:  # noqa: BLE001 - any bad config is a checkpoint problem
        raise CheckpointError(f"{ckpt.path}: bad fusion configuration ({exc})") from None


def load_fusion_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[
    FusionNet, Checkpoint
]:
    """Build the fusion module F described by a checkpoint and load its weights (eval mode).

    A checkpoint of the decision-map ablation (``extra.ablation.fusion == "decision"``) gives
    a :class:`~refusion.train.ablation.DecisionFusionNet`, whose output is the fused image too.
    """
    ckpt = read_checkpoint(path)
    if "fusion" not in ckpt.tensors:
        raise CheckpointError(f"{path} holds no fusion network")
    ablation = ckpt.extra.get("ablation") if isinstance(ckpt.extra, dict) else None
    if isinstance(ablation, dict) and ablation.get("fusion") == "decision":
        from refusion.train.ablation import DecisionFusionNet as net_cls
    else:
        net_cls = FusionNet
    model = net_cls(fusion_config_from(ckpt))
    load_state_checked(model, ckpt.tensors["fusion"], f"checkpoint {path}")
    return model.to(device).eval(), ckpt


def build_networks(architecture: dict) -> dict[str, nn.Module]:
    """Untrained modules for each network of an architecture dict (a checkpoint's ``configs``;
    ``fusion``, ``proposal``, ``reconstruction``); raises UserError on a bad configuration."""
    from refusion.config import from_dict
    from refusion.models import (
        FusionConfig,
        FusionNet,
        ProposalConfig,
        ProposalNet,
        ReconstructionConfig,
        ReconstructionNet,
    )

    kinds = {"fusion": (FusionConfig, FusionNet), "proposal": (ProposalConfig, ProposalNet),
             "reconstruction": (ReconstructionConfig, ReconstructionNet)}
    nets = {}
    for net, cfg in architecture.items():
        if net not in kinds:
            raise UserError(f"unknown network {net!r} in the architecture")
        if not isinstance(cfg, dict):
            raise UserError(f"the {net} configuration is not a mapping")
        cfg_cls, net_cls = kinds[net]
        nets[net] = net_cls(from_dict(cfg_cls, cfg, prefix=f"{net}."))
    return nets
