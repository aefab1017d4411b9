"""The interface every backend implements (after Polygraphy's runners).

A backend turns a batch of network inputs into fused lumas; everything around it (reading,
colour, scaling, video) is shared, so the backends differ only in how they run the network.

Lifecycle: ``activate()`` loads the model and allocates what it needs, ``infer()`` runs as often
as wanted, ``deactivate()`` frees it. A backend is also a context manager::

    with create_backend("onnxruntime", "model.safetensors") as be:
        fused = be.infer(batch)  # (N, 2, H, W) float32 -> (N, 1, H, W) float32
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from refusion.errors import UserError


class Backend:
    """Base class of the runtime backends.

    Subclasses set :attr:`name` and implement :meth:`_activate`, :meth:`_infer` and
    :meth:`_deactivate`; the public methods add the checks they share.

    Attributes:
        name: backend name as used by ``--backend`` (``torch``, ``onnxruntime``, ``tensorrt``).
        device: ``cpu`` or ``cuda`` (``cuda:N`` for a given GPU).
    """

    name: str = "backend"

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.is_active = False

    # --- lifecycle --------------------------------------------------------------------------
    def activate(self) -> Backend:
        """Load the model and allocate resources (idempotent); returns ``self``."""
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        """Free what :meth:`activate` allocated (idempotent)."""
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def __enter__(self) -> Backend:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    # --- inference --------------------------------------------------------------------------
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Fuse a batch.

        Args:
            batch: float32 array ``(N, 2, H, W)``; channel 0 is source a (infrared), channel 1
                source b (visible), both lumas in [0, 1]. Any ``H x W`` the model accepts.

        Returns:
            float32 array ``(N, 1, H, W)``, fused luma in [0, 1]. The array is owned by the
            caller (never a view of a buffer the backend reuses).
        """
        if not self.is_active:
            self.activate()
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[1] != 2:
            raise UserError(f"{self.name}: expected an (N, 2, H, W) batch, got {batch.shape}")
        if batch.dtype != np.float32 or not batch.flags.c_contiguous:
            batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self._infer(batch)

    def warmup(self, shape: tuple[int, int, int, int], runs: int = 1) -> None:
        """Run ``runs`` inferences on zeros of ``shape`` (compilation, autotuning, graphs)."""
        x = np.zeros(shape, np.float32)
        for _ in range(runs):
            self.infer(x)

    @property
    def compiles_per_shape(self) -> bool:
        """True when the first call at a new input shape is slow (compilation, graph capture):
        a video pipeline then warms up before it starts timing frames."""
        return False

    def describe(self) -> dict[str, Any]:
        """What the backend runs with (for logs and benchmark reports)."""
        return {"backend": self.name, "device": self.device}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.describe().items() if k != "backend")
        return f"{type(self).__name__}({opts})"

    # --- to implement -----------------------------------------------------------------------
    def _activate(self) -> None:
        raise NotImplementedError

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _deactivate(self) -> None:
        pass


def default_threads() -> int:
    """Threads of a CPU backend given none: ``$OMP_NUM_THREADS`` when set to a positive
    integer (the usual way to share a machine), else :func:`physical_cores`."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return physical_cores()


def physical_cores() -> int:
    """Physical cores available to this process (hyper-threads share one core's units, and
    oversubscribing them slows convolution kernels down)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores: set[tuple[str, str]] = set()
    try:
        for cpu in allowed:
            base = f"/sys/devices/system/cpu/cpu{cpu}/topology"
            with open(f"{base}/core_id") as f1, open(f"{base}/physical_package_id") as f2:
                cores.add((f2.read().strip(), f1.read().strip()))
    except OSError:
        return max(1, len(allowed))
    return max(1, min(len(cores), len(allowed))) if cores else max(1, len(allowed))
