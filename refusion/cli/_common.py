"""What every command shares: one-line user errors and the task names."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from refusion.errors import UserError

TASKS = ("ivif", "mif", "mfif", "meif")


def add_backend_options(p, backends: tuple[str, ...]) -> None:
    """``--backend`` and ``--device``, as every inference command spells them."""
    p.add_argument("--backend", choices=backends, default="auto",
                   help="inference backend (default auto: the fastest available)")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")


def _prog_name(fn: Callable) -> str:
    """``refusion.cli.fuse`` -> ``refusion-fuse``; ``refusion.cli.main`` -> ``refusion``."""
    leaf = fn.__module__.rsplit(".", 1)[-1]
    if leaf in ("main", "__main__"):
        return "refusion"
    return f"refusion-{leaf}"


def cli_entry(fn: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a ``main(argv)``: a :class:`UserError` becomes ``prog: error: msg`` and exit 2,
    Ctrl-C becomes exit 130 (after the command's own clean-up ran)."""

    @functools.wraps(fn)
    def wrapper(argv: list[str] | None = None) -> int:
        prog = _prog_name(fn)
        try:
            rc = fn(argv)
        except UserError as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        return int(rc or 0)

    return wrapper
