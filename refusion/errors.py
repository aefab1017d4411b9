"""Errors that reach the user as one line instead of a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user gave us (a path, an option, a checkpoint).

    The command-line tools print ``<prog>: error: <message>`` and exit with status 2.
    """


def require(module: str, pip_name: str, why: str) -> None:
    """Raise :class:`UserError` naming what to install when ``module`` cannot be imported.

    ``why`` says who needs it (``"--backend onnxruntime"``, ``"ONNX export"``).
    """
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None
        found = False
    if not found:
        raise UserError(f"{why} needs the {module} package, which is not installed: "
                        f"pip install {pip_name}")


class CheckpointError(UserError):
    """A checkpoint is unsafe, unreadable or does not fit the model."""
