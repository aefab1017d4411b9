"""``refusion-eval``: score folders of fused images with the field's fusion metrics.

Example::

    refusion-eval --a ir/ --b vi/ --fused out/ours --fused out/cddfuse \\
        --metrics EN,SD,SF,MI,SCD,VIF,Qabf,SSIM --format md --per-image per_image.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from refusion.cli._common import cli_entry
from refusion.errors import UserError
from refusion.metrics import METRICS, evaluate_folders
from refusion.utils.atomic import atomic_write_text, check_outputs, ensure_writable


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (kept separate so the docs and tests can inspect it)."""
    p = argparse.ArgumentParser(
        prog="refusion-eval",
        description="Fusion metrics (EN, SD, SF, AG, MI, SCD, CC, PSNR, MSE, SSIM, MS-SSIM, "
                    "VIF, Qabf, Nabf, Q_CB, Q_NCIE, Q_Y, FMI) over folders paired by file stem, "
                    "or over one triplet of image files.",
    )
    p.add_argument("--a", required=True,
                   help="folder of source images A (IR / CT / ...), or one image file")
    p.add_argument("--b", required=True,
                   help="folder of source images B (visible / MRI / ...), or one image file")
    p.add_argument("--fused", required=True, action="append",
                   help="folder of fused images (one method), or one image file; repeat for "
                        "several methods")
    p.add_argument("--metrics", default=None,
                   help=f"comma-separated metric names (default: all: {','.join(METRICS)})")
    p.add_argument("--convention", default=None,
                   help="toolbox tag (cddfuse, tang, vifb, mefb, liu) and/or METRIC.name items, "
                        "comma separated, e.g. 'SF.vifb,SSIM.tang_matlab_ssim_emul'")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="format of the summary table (default: from the --output file's "
                        "extension, .md/.csv/.json; otherwise md)")
    p.add_argument("--output", default=None,
                   help="write the table to this file instead of stdout")
    p.add_argument("--per-image", default=None, metavar="FILE",
                   help="write every per-image value to this JSON file")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: min(4, CPUs); 1 = no pool)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


FORMATS = ("md", "csv", "json")
_EXTENSIONS = {".md": "md", ".markdown": "md", ".csv": "csv", ".json": "json"}


def table_format(fmt: str | None, output: str | None) -> str:
    """The table format: ``--format`` if given, else the ``--output`` file's extension.

    A file named ``table.csv`` written as Markdown would be read wrongly by every tool that
    trusts the extension, so an explicit ``--format`` that contradicts it is refused.
    """
    by_ext = _EXTENSIONS.get(Path(output).suffix.lower()) if output else None
    if fmt is None:
        return by_ext or "md"
    if by_ext is not None and by_ext != fmt:
        raise UserError(f"--format {fmt} contradicts --output {output} (a "
                        f"{Path(output).suffix} name); rename the file or drop --format")
    return fmt


def _input_files(args) -> list[tuple[str, Path]]:
    """Every file the command reads (the files of folders given), as ``(option, path)``."""
    out = []
    for option, values in (("--a", [args.a]), ("--b", [args.b]), ("--fused", args.fused)):
        for v in values or ():
            p = Path(v)
            files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
            out += [(option, f) for f in files]
    return out


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``refusion-eval``; returns the exit status."""
    args = build_parser().parse_args(argv)
    metrics = None
    if args.metrics is not None:
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        if not metrics:  # "--metrics ," must not mean "all of them"
            raise UserError(f"--metrics names no metric: {args.metrics!r}")
    fmt = table_format(args.format, args.output)
    if args.workers is not None and args.workers < 0:
        raise UserError("--workers must be >= 0")
    for path in (args.output, args.per_image):
        if path:
            ensure_writable(path)
    check_outputs([("--output", args.output), ("--per-image", args.per_image)],
                  _input_files(args))
    res = evaluate_folders(args.a, args.b, args.fused, metrics=metrics,
                           convention=args.convention, workers=args.workers,
                           progress=not args.no_progress and sys.stderr.isatty())
    for line in res.missing:
        print(f"refusion-eval: missing: {line}", file=sys.stderr)
    for line in res.read_notes:
        print(f"refusion-eval: note: {line}", file=sys.stderr)
    if res.notes:
        print(f"refusion-eval: {len(res.notes)} undefined value(s) reported as NaN "
              f"(first: {res.notes[0]})", file=sys.stderr)
    table = {"md": res.to_markdown, "csv": res.to_csv, "json": res.to_json}[fmt]()
    if args.output:
        atomic_write_text(args.output, table)
    else:
        sys.stdout.write(table)
    if args.per_image:
        res.write_json(args.per_image)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
