"""``refusion``: the umbrella command (``refusion info``, ``refusion demo``)."""

from __future__ import annotations

import argparse
import json
import platform
import sys

from refusion.cli import demo
from refusion.cli._common import cli_entry


def _info() -> int:
    import torch

    from refusion import __version__
    from refusion._native import build_info

    info = {
        "refusion": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "native": build_info(),
    }
    print(json.dumps(info, indent=2))
    return 0


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="refusion", description="ReFusion image fusion engine")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions and how the native module was built")
    demo.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "info":
        return _info()
    if args.command == "demo":
        return demo.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
