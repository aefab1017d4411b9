"""Create backends by name; ``auto`` picks the fastest one this machine can run.

``auto`` tries, in order: TensorRT (with a plan, or one ``refusion.export`` can build),
ONNX Runtime on CUDA, PyTorch on CUDA, ONNX Runtime on CPU, PyTorch on CPU. The CPU order
comes from ``bench/`` (ONNX Runtime with all graph optimisations beats eager PyTorch on CPU).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from refusion.engine.base import Backend

from refusion.errors import UserError

if TYPE_CHECKING:  # torch is imported by the backend that needs it
    import torch

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
_EXPORTED = (".onnx",)
_PLANS = (".plan", ".engine", ".trt")


def weights_kind(weights: Any) -> str:
    """``module``, ``onnx``, ``plan`` or ``checkpoint``."""
    if hasattr(weights, "state_dict"):  # an nn.Module (torch stays unimported until needed)
        return "module"
    s = str(weights).lower()
    if s.endswith(_EXPORTED):
        return "onnx"
    if s.endswith(_PLANS):
        return "plan"
    return "checkpoint"


def check_exists(weights: Any) -> None:
    """One-line :class:`UserError` when ``weights`` (not a module) is no file."""
    if weights_kind(weights) != "module" and not Path(weights).is_file():
        raise UserError(f"--weights not found: {weights}")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _onnx_for(weights: Any, cache: str | os.PathLike | None) -> Path:
    """An ONNX file for ``weights``: itself, or a cached export of the checkpoint/module."""
    if weights_kind(weights) == "onnx":
        return Path(weights)
    if weights_kind(weights) == "plan":
        raise UserError(f"--weights {weights}: a TensorRT plan only runs with --backend tensorrt")
    from refusion.engine.backends.torch_backend import load_module
    from refusion.engine.onnx_cache import cached_onnx

    return cached_onnx(load_module(weights), cache)


def _plan_for(weights: Any, device: str) -> Path:
    if weights_kind(weights) == "plan":
        return Path(weights)
    try:
        from refusion.export import build_engine  # type: ignore[attr-defined]
    except ImportError:
        raise UserError(
            f"--backend tensorrt needs a plan: build one with `refusion-export {weights}` "
            "(then pass the .plan as --weights)"
        ) from None
    import tensorrt as trt
    import torch

    src = _onnx_for(weights, None) if weights_kind(weights) != "onnx" else Path(weights)
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    plan = plan_cache_path(src, trt.__version__, f"{major}.{minor}")
    if not plan.is_file():
        plan.parent.mkdir(parents=True, exist_ok=True)
        build_engine(src, plan)
    return plan


def plan_cache_path(onnx: Path, trt_version: str, capability: str) -> Path:
    """Where an engine built on the fly from ``onnx`` is cached: keyed by the ONNX file's
    contents (re-exported weights of the same name get their own plan), the TensorRT version
    and the GPU's compute capability (a plan runs only where it was built)."""
    import hashlib

    from refusion.engine.onnx_cache import cache_dir

    digest = hashlib.sha256(Path(onnx).read_bytes()).hexdigest()[:16]
    name = f"{Path(onnx).stem}-{digest}-trt{trt_version}-sm{capability.replace('.', '')}.plan"
    return cache_dir().parent / "tensorrt" / name


def create_backend(
    name: str,
    weights: str | os.PathLike | Any,
    *,
    device: str | torch.device = "auto",
    onnx_cache: str | os.PathLike | None = None,
    **options: Any,
) -> Backend:
    """Build (not yet activate) a backend.

    Args:
        name: ``auto``, ``torch``, ``onnxruntime`` or ``tensorrt``.
        weights: a checkpoint (``.safetensors``/``.pth``), an ``.onnx`` export, a TensorRT
            ``.plan``, or an ``nn.Module``. ONNX Runtime exports a checkpoint on the fly into
            ``onnx_cache`` (default :func:`refusion.engine.onnx_cache.cache_dir`).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:N]``, or a ``torch.device``.
        **options: passed to the backend class (e.g. ``compile=True`` for torch,
            ``threads=2`` for onnxruntime); options of another backend than the one built are
            dropped (so ``auto`` takes the options of every backend it may pick), except
            ``half``, ``bf16`` and ``compile``, which make ``auto`` pick torch and are an error
            for the other backends; an option no backend takes is a ``TypeError``.

    Returns:
        An inactive :class:`Backend`; use it as a context manager or call ``activate()``.
    """
    if name not in BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    check_exists(weights)
    device = str(device)  # a torch.device ("cuda:1") is accepted as its text
    if device == "auto":
        device = "cuda" if _cuda_available() else "cpu"
    elif device.startswith("cuda") and not _cuda_available():
        raise UserError("--device cuda was requested but no CUDA device is available")
    elif device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"--device must be cpu, cuda or auto, got {device!r}")
    unknown = set(options) - set().union(*_OPTIONS.values())
    if unknown:  # a typo would otherwise be dropped silently by auto
        raise TypeError(f"create_backend() got options no backend takes: {sorted(unknown)}")
    # precision and compilation change what runs: they select the torch backend under auto
    # and are refused by the others (never dropped), as refusion-fuse's --fp16/--bf16/--compile
    modes = [k for k in ("half", "bf16", "compile") if options.get(k)]
    if modes and name != "torch":
        if name != "auto":
            raise UserError(f"{', '.join(modes)} {'needs' if len(modes) == 1 else 'need'} the "
                            f"torch backend, not {name!r} (an FP16 ONNX Runtime or TensorRT run "
                            "takes an FP16 export: refusion-export --fp16)")
        name = "torch"
    if name == "auto":
        return _auto(weights, device, onnx_cache, options)
    return _make(name, weights, device, onnx_cache, options)


# The keyword options of each backend class (tests/test_engine.py checks them against the
# signatures, so that auto never drops an option silently).
_OPTIONS = {
    "torch": {"channels_last", "compile", "half", "bf16", "cuda_graphs", "native", "threads",
              "retain_memory", "inference_form"},
    "onnxruntime": {"provider", "threads", "optimization", "spin", "trt_cache"},
    "tensorrt": set(),
}


def _make(name: str, weights: Any, device: str, cache: Any, options: dict) -> Backend:
    kind = weights_kind(weights)
    # options meant for another backend (e.g. ORT's spin for a torch run) are dropped; unknown
    # ones still reach the class and fail there
    foreign = set().union(*_OPTIONS.values()) - _OPTIONS[name]
    options = {k: v for k, v in options.items() if k not in foreign}
    if name == "torch":
        from refusion.engine.backends.torch_backend import TorchBackend

        if kind in ("onnx", "plan"):
            raise UserError(
                f"--weights {weights}: the torch backend needs a checkpoint (.safetensors or "
                ".pth), not an exported model"
            )
        return TorchBackend(weights, device, **options)
    if name == "onnxruntime":
        from refusion.engine.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(_onnx_for(weights, cache), device, **options)
    from refusion.engine.backends.tensorrt_backend import TensorRTBackend, tensorrt_available

    ok, why = tensorrt_available()
    if not ok:
        raise UserError(f"--backend tensorrt: {why}")
    if not device.startswith("cuda"):
        raise UserError("--backend tensorrt runs on CUDA only (use --device cuda or auto)")
    return TensorRTBackend(_plan_for(weights, device), device, **options)




def auto_candidates(weights: Any, device: str) -> list[tuple[str, str, str]]:
    """``(backend, device, why-not)`` in ``auto``'s order; why-not is empty when usable."""
    from refusion.engine.backends.onnxruntime_backend import available_providers
    from refusion.engine.backends.tensorrt_backend import tensorrt_available

    kind = weights_kind(weights)
    providers = available_providers()
    cuda = device.startswith("cuda")
    out: list[tuple[str, str, str]] = []
    trt_ok, trt_why = tensorrt_available()
    if kind == "onnx":
        trt_why = trt_why or "needs a .plan"
        trt_ok = False
    out.append(("tensorrt", device, "" if cuda and trt_ok else (trt_why or "cpu requested")))
    ort_cuda = "CUDAExecutionProvider" in providers
    out.append(("onnxruntime", device, "" if cuda and ort_cuda and kind != "plan"
                else "no CUDAExecutionProvider"))
    out.append(("torch", device, "" if cuda and kind in ("module", "checkpoint")
                else "cpu or exported weights"))
    out.append(("onnxruntime", "cpu", "" if providers and kind != "plan"
                else "onnxruntime missing"))
    out.append(("torch", "cpu", "" if kind in ("module", "checkpoint") else "exported weights"))
    return out


def _auto(weights: Any, device: str, cache: Any, options: dict) -> Backend:
    errors, skipped = [], []
    for name, dev, why in auto_candidates(weights, device):
        if why:
            skipped.append(f"{name}/{dev}: {why}")
            continue
        opts = {k: v for k, v in options.items() if k in _OPTIONS[name]}
        try:
            return _make(name, weights, dev, cache, opts)
        except UserError as exc:  # e.g. no plan can be built: try the next one
            errors.append(f"{name}/{dev}: {exc}")
    if not errors and weights_kind(weights) == "plan":
        from refusion.engine.backends.tensorrt_backend import tensorrt_available

        why = tensorrt_available()[1] if device.startswith("cuda") else f"device {device}"
        raise UserError(f"no backend can run {weights}: a TensorRT plan runs only with the "
                        f"tensorrt backend on a CUDA device (here: {why}); give a checkpoint "
                        "or an .onnx file for the other backends")
    # the candidates tried say why they failed; with none tried, the skipped ones say why not
    raise UserError("no backend can run " + str(weights) + ": " + "; ".join(errors or skipped))


def available_backends() -> dict[str, str]:
    """Backend -> '' when it can run here, else the reason it cannot (for reports and skips)."""
    from refusion.engine.backends.onnxruntime_backend import available_providers
    from refusion.engine.backends.tensorrt_backend import tensorrt_available

    out = {"torch": ""}
    out["onnxruntime"] = "" if available_providers() else "the onnxruntime package is missing"
    ok, why = tensorrt_available()
    out["tensorrt"] = "" if ok else why
    return out
