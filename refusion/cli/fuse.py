"""``refusion-fuse A B -o OUT [--weights CKPT|NAME]``: fuse image pairs (files, or folders by stem).

With two files ``OUT`` is the output image; with two folders ``OUT`` is a folder that receives
``<stem><ext>`` for every name the two folders share. Any backend of :mod:`refusion.engine`.
``--weights`` takes a file or the name of shipped weights (:mod:`refusion.zoo`); without it the
learnt checkpoint of ``--task`` (default ``ivif``) is used.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tqdm import tqdm

from refusion.cli._common import (
    TASKS,
    add_backend_options,
    backend_choice,
    cli_entry,
    mode_label,
)
from refusion.engine import BACKENDS, Fuser
from refusion.engine.files import PairPaths, match_pairs
from refusion.errors import UserError
from refusion.imaging import check_image_ext, panel, read_image, write_image
from refusion.utils.atomic import check_outputs, ensure_writable


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="refusion-fuse",
        description="Fuse image pairs with a ReFusion fusion module. The first input is source "
        "a (infrared, CT/PET/SPECT, near focus, under-exposed), the second source b. Give two "
        "files, or two folders whose images are paired by file name (stem).",
    )
    p.add_argument("a", help="first source: image or folder (infrared / functional / near / under)")
    p.add_argument("b", help="second source: image or folder (visible / MRI / far / over)")
    p.add_argument("-o", "--output", required=True,
                   help="output image (two files) or output folder (two folders)")
    p.add_argument("--weights",
                   help="shipped weights by name (ivif, mif-fixed...; `refusion weights` lists "
                   "them), our .safetensors, the authors' .pth, an .onnx export or a TensorRT "
                   ".plan (default: the shipped learnt weights of --task)")
    p.add_argument("--task", choices=TASKS,
                   help="fusion task: picks the default weights (ivif when absent) and is "
                   "checked against the task the weights record (a refusion checkpoint's "
                   "card, an .onnx export's metadata, the authors' ReFusion_IVIF.pth by its "
                   "name; a .plan records none)")
    add_backend_options(p, BACKENDS)
    p.add_argument(
        "--normalize", choices=("fixed", "minmax"), default="fixed",
        help="output scaling: fixed [0,1]->[0,255] (default) or per-image min-max (authors')",
    )
    p.add_argument("--gray", action="store_true", help="write grey output even for colour input")
    p.add_argument("--batch-size", type=int, default=4,
                   help="pairs per inference call (same-size pairs only; default 4)")
    p.add_argument("--ext", default=".png", help="output extension in folder mode (default .png)")
    p.add_argument("--panel", action="store_true",
                   help="also write a side-by-side panel a | b | fused as <name>_panel<ext>")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _outputs(pair: PairPaths, out: Path, folder: bool, ext: str) -> tuple[Path, Path]:
    dest = out / f"{pair.stem}{ext}" if folder else out
    return dest, dest.with_name(f"{dest.stem}_panel{dest.suffix}")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    name, options = backend_choice(args)
    pairs, unmatched = match_pairs(args.a, args.b)
    folder = Path(args.a).is_dir()
    out = Path(args.output)
    if folder and out.exists() and not out.is_dir():
        raise UserError(f"-o {out} must be a folder when the inputs are folders")
    if not folder and (out.is_dir() or args.output.endswith(("/", os.sep)) or not out.suffix):
        # it used to become a PNG file without an extension, under a folder's name
        raise UserError(f"-o {args.output}: with two image files, -o is the fused image; give "
                        "it a name with an image extension (e.g. fused.png)")
    # checked before any inference, so that a typo does not cost a folder's worth of work
    ext = check_image_ext(args.ext, "--ext") if folder else \
        check_image_ext(out.suffix or ".png", f"-o {out}")
    if unmatched:
        more = f" (and {len(unmatched) - 3} more)" if len(unmatched) > 3 else ""
        print(f"refusion-fuse: warning: {len(unmatched)} images without a partner skipped: "
              f"{', '.join(unmatched[:3])}{more}", file=sys.stderr)
    # every destination (panels too) must differ from every source and from each other
    # (labelled by pair, so that a collision says which two pairs meet in one file)
    dests = [(f"-o {out}: the {kind} of pair {pair.stem!r}," if folder else "-o", d)
             for pair in pairs
             for kind, d in zip(("image", "panel"),
                                _outputs(pair, out, folder, ext)[: 2 if args.panel else 1])]
    check_outputs(dests, [("source", p) for pair in pairs for p in (pair.a, pair.b)])
    fuser = Fuser(args.weights, task=args.task, backend=name, device=args.device,
                  normalize=args.normalize, gray=args.gray, **options)
    ensure_writable(out, folder=folder)
    bar = tqdm(total=len(pairs), desc="fuse", unit="pair", file=sys.stderr,
               disable=args.quiet or len(pairs) == 1)
    with fuser, bar:
        # files are read a chunk at a time, so a large folder never sits in memory whole
        for start in range(0, len(pairs), args.batch_size):
            chunk = pairs[start:start + args.batch_size]
            images = [(read_image(p.a), read_image(p.b)) for p in chunk]
            fused = fuser.many(images, args.batch_size, [(str(p.a), str(p.b)) for p in chunk])
            for p, (ia, ib), img in zip(chunk, images, fused):
                dest, panel_dest = _outputs(p, out, folder, ext)
                write_image(dest, img)
                if args.panel:
                    write_image(panel_dest, panel(ia, ib, img))
            bar.update(len(chunk))
    backend = fuser.backend
    where = out if folder else _outputs(pairs[0], out, False, ext)[0]
    print(f"wrote {len(pairs)} image{'s' * (len(pairs) > 1)} to {where} "
          f"({backend.name}{mode_label(options)}, {backend.device}, weights {fuser.label})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    # re-import under the package name so that messages say refusion-fuse, not refusion
    from refusion.cli.fuse import main as _main

    sys.exit(_main())
