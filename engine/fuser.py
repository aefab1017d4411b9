"""Fuse image pairs from Python the way ``refusion-fuse`` does (``refusion.engine.Fuser``).

One object holds a backend and the shared pre/post-processing of :mod:`refusion.imaging`:
16-bit sources mapped by robust percentiles, colour sources fused in luma with their chroma
kept (the authors' YCrCb rule), fixed output scaling, same-size pairs batched::

    from refusion.engine import Fuser

    with Fuser(task="ivif") as fuse:             # the shipped learnt ivif weights, backend auto
        fused = fuse(ir, visible)                # numpy in, 8-bit numpy out
        many = fuse.many(pairs, batch_size=4)    # a list of (a, b), any sizes

``refusion-fuse`` is this class plus reading and writing files.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from refusion.engine.base import Backend
from refusion.engine.preprocess import stack_inputs
from refusion.engine.registry import check_exists, create_backend

from refusion.errors import UserError
from refusion.imaging import Normalize, PreparedPair, compose, prepare_pair

if TYPE_CHECKING:  # torch is imported by the backend that needs it
    import torch

#: weight files whose task the engine cannot read (no model card inside)
_UNCARDED = (".onnx", ".plan", ".engine", ".trt")


def recorded_task(weights: str | os.PathLike) -> str | None:
    """The task ``weights`` were trained for, where the file says: a refusion checkpoint's
    model card, an ONNX export's metadata (``task``), the authors' file name (their IVIF file
    is ``ReFusion_IVIF.pth``, as the export records it); None for TensorRT plans and
    otherwise."""
    s = str(weights).lower()
    if s.endswith(".onnx"):
        from refusion.export.metadata import read_onnx_metadata

        return read_onnx_metadata(weights).get("task") or None
    if s.endswith(_UNCARDED):
        return None
    from refusion.export.onnx_export import inferred_task

    from refusion.checkpoint import read_checkpoint

    return inferred_task(read_checkpoint(weights))


def check_task(weights: str | os.PathLike, task: str | None, label: str | None = None) -> None:
    """Raise :class:`UserError` if ``weights`` were trained for a task other than ``task``
    (:func:`recorded_task`; nothing to check without a task, or when the file records none).

    ``label`` names the weights in the message (default ``--weights <path>``).
    """
    if not task:
        return
    trained = recorded_task(weights)
    if trained and trained != task:
        raise UserError(f"{label or f'--weights {weights}'} was trained for '{trained}', "
                        f"not '{task}'")


class Fuser:
    """A fusion module behind a backend, fed and read as images.

    Args:
        weights: shipped weights by name (``"ivif"``, ``"mfif-fixed"``...), a checkpoint
            (``.safetensors`` or the authors' ``.pth``), an ``.onnx`` export or a TensorRT
            ``.plan``; default: the shipped learnt weights of ``task`` (``ivif`` without one).
        task: ``ivif``, ``mif``, ``mfif`` or ``meif``: picks the default weights and is checked
            against a checkpoint's model card.
        backend: ``auto`` (the fastest available), ``torch``, ``onnxruntime`` or ``tensorrt``.
        device: ``auto``, ``cpu`` or ``cuda[:N]``, or a ``torch.device``.
        normalize: ``fixed`` (``[0, 1] -> [0, 255]``, the default) or ``minmax`` per image.
        gray: return grey images even for colour sources.
        **options: backend options (torch: ``half``, ``bf16``, ``compile``...), see
            :func:`refusion.engine.create_backend`.

    Shape:
        - ``a``, ``b``: ``(H, W)`` or ``(H, W, 3)`` BGR, uint8, uint16 or float (0..255;
          a float image file within 0..1 is scaled by 255 when read, a float array is not:
          it gets a warning), checked by :func:`refusion.imaging.check_source`;
          the two sources of a pair have the same ``H, W``.
        - output: ``(H, W)`` uint8, or ``(H, W, 3)`` BGR uint8 when a source has colour.

    Threads: the backend is built and activated once, whichever threads call first; calls
    from several threads are then safe on the CPU backends (torch, ONNX Runtime). A CUDA
    backend with CUDA graphs and the TensorRT backend reuse one set of device buffers: give
    each thread its own Fuser there. ``weights`` may also be an ``nn.Module`` (as
    :func:`refusion.engine.create_backend` takes).
    """

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        *,
        task: str | None = None,
        backend: str = "auto",
        device: str | torch.device = "auto",
        normalize: Normalize = "fixed",
        gray: bool = False,
        **options: Any,
    ) -> None:
        from refusion.zoo import resolve_weights, weights_label

        if normalize not in ("fixed", "minmax"):
            raise UserError(f"normalize must be 'fixed' or 'minmax', got {normalize!r}")
        if weights is not None and not isinstance(weights, (str, os.PathLike)):
            self.weights: Any = weights  # an nn.Module, as create_backend takes
            self.label = type(weights).__name__
        else:
            resolved = resolve_weights(None if weights is None else str(weights), task)
            check_exists(resolved)  # here, not at the first fusion, lazy as the backend is
            self.label = weights_label(None if weights is None else str(weights), resolved)
            check_task(resolved, task, f"--weights {self.label}")
            self.weights = resolved
        self.normalize: Normalize = normalize
        self.gray = gray
        self._spec = (backend, device, options)
        self._backend: Backend | None = None
        # one backend however many threads call first (each would otherwise build its own,
        # and close() would free only the last)
        self._lock = threading.Lock()

    @property
    def backend(self) -> Backend:
        """The backend, created on first use (with ONNX Runtime and a checkpoint, creating it
        exports the checkpoint, so a Fuser costs nothing until it fuses)."""
        with self._lock:
            if self._backend is None:
                name, device, options = self._spec
                self._backend = create_backend(name, self.weights, device=device, **options)
            return self._backend

    # --- lifecycle: the backend's, so that a Fuser can be used with or without ``with`` -------
    def __enter__(self) -> Fuser:
        self.backend.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the backend (a later call activates it again)."""
        with self._lock:
            if self._backend is not None:
                self._backend.deactivate()

    # --- fusion -----------------------------------------------------------------------------
    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The fused image of one pair (see the class docstring for shapes)."""
        return self.many([(a, b)])[0]

    def many(
        self,
        pairs: Iterable[tuple[np.ndarray, np.ndarray]],
        batch_size: int = 4,
        names: Sequence[tuple[str, str]] | None = None,
    ) -> list[np.ndarray]:
        """Fused images of ``pairs``, in order; pairs of one size share inference calls.

        Args:
            pairs: ``(a, b)`` image pairs; sizes may differ from pair to pair.
            batch_size: at most this many pairs per inference call.
            names: ``(name_a, name_b)`` per pair for error messages (file names, say).
        """
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}")
        pairs = list(pairs)
        labels = list(names) if names is not None else [
            (f"pair {i} a", f"pair {i} b") for i in range(len(pairs))]
        prepared = [prepare_pair(a, b, *n) for (a, b), n in zip(pairs, labels, strict=True)]
        return self.fuse_prepared(prepared, batch_size)

    def fuse_prepared(self, prepared: Sequence[PreparedPair],
                      batch_size: int = 4) -> list[np.ndarray]:
        """Fused images of pairs already through :func:`refusion.imaging.prepare_pair`."""
        backend = self.backend
        with self._lock:  # activation loads the model once, not once per calling thread
            backend.activate()
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, pp in enumerate(prepared):
            by_size.setdefault(pp.a.shape, []).append(i)
        fused: dict[int, np.ndarray] = {}
        for idx in by_size.values():
            for start in range(0, len(idx), batch_size):
                chunk = idx[start:start + batch_size]
                result = self.backend.infer(stack_inputs([prepared[i] for i in chunk]))
                fused.update({i: result[k, 0] for k, i in enumerate(chunk)})
        return [compose(fused[i], None if self.gray else pp.chroma, self.normalize)
                for i, pp in enumerate(prepared)]
