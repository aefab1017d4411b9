"""``refusion``: the umbrella command (``refusion info``, ``demo``, ``repro``, ``weights``)."""

from __future__ import annotations

import argparse
import json
import platform
import sys

from refusion.cli import demo, repro
from refusion.cli._common import cli_entry


def _info() -> int:
    import torch

    from refusion import __version__
    from refusion._native import build_info
    from refusion.engine.backends.torch_backend import has_bf16_hardware

    info = {
        "refusion": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        # whether --bf16 is fast here (AVX512-BF16 or AMX)
        "cpu_bf16": has_bf16_hardware("cpu"),
        "native": build_info(),
    }
    print(json.dumps(info, indent=2))
    return 0


def _add_weights_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "weights", help="list the shipped named weights and their model cards",
        description="List the named weights (--weights NAME of refusion-fuse, -video, -export): "
        "those shipped in the package and those in $REFUSION_WEIGHTS_DIR, which take precedence.",
    )
    p.add_argument("name", nargs="?", help="print this one's model card (JSON)")
    p.add_argument("--json", action="store_true", help="machine-readable list")
    p.add_argument("--check", action="store_true",
                   help="verify every card against its weights (architecture, tensors, sha256)")


def _weights(args: argparse.Namespace) -> int:
    from refusion.errors import UserError
    from refusion.zoo import check_card, list_weights, metric_summary

    known = list_weights()
    if args.name:
        known = [w for w in known if w.name == args.name]
        if not known:
            names = ", ".join(w.name for w in list_weights()) or "none"
            raise UserError(f"no shipped weights named {args.name!r} (available: {names})")
    if args.check:
        failures = [f"{w.name}: {problem}" for w in known for problem in check_card(w)]
        for line in failures:
            print(f"refusion weights: {line}", file=sys.stderr)
        if failures:
            return 1
        n = len(known)
        print("no named weights to check" if n == 0 else "1 model card matches its weights"
              if n == 1 else f"{n} model cards match their weights", file=sys.stderr)
        return 0
    if args.json:
        print(json.dumps([w.as_dict() for w in known], indent=2))
        return 0
    if args.name:
        print(json.dumps({"path": str(known[0].path), **known[0].card}, indent=2))
        return 0
    if not known:
        print("no named weights are installed (set $REFUSION_WEIGHTS_DIR to add a folder; "
              "see docs/weights.md)", file=sys.stderr)
        return 0
    rows = [("name", "task", "variant", "size KB", "steps", "test metrics")]
    rows += [(w.name, w.task, w.variant, f"{w.size_bytes / 1024:.0f}",
              "-" if w.steps is None else str(w.steps), metric_summary(w.card)) for w in known]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(n) for c, n in zip(r, widths)) + "  " + r[-1])
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the umbrella command line.

    ``key=value`` overrides of ``refusion repro`` may come after its options too
    (``refusion repro ivif --recipe cpu fusion.blocks=1``): argparse alone would bind the
    optional positional list right after ``TASK`` and reject the later ones.
    """
    parser = argparse.ArgumentParser(prog="refusion", description="ReFusion image fusion engine")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions and how the native module was built")
    demo.add_parser(sub)
    repro.add_parser(sub)
    _add_weights_parser(sub)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command == "repro" and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "info":
        return _info()
    if args.command == "demo":
        return demo.run(args)
    if args.command == "repro":
        return repro.run(args)
    if args.command == "weights":
        return _weights(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
