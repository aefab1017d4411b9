"""Errors that reach the user as one line instead of a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user gave us (a path, an option, a checkpoint).

    The command-line tools print ``<prog>: error: <message>`` and exit with status 2.
    """


class CheckpointError(UserError):
    """A checkpoint is unsafe, unreadable or does not fit the model."""
