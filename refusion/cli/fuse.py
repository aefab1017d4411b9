"""``refusion-fuse A B -o OUT --weights CKPT``: fuse one pair of image files."""

from __future__ import annotations

import argparse
import sys

from refusion.checkpoint import load_fusion_model
from refusion.cli._common import TASKS, cli_entry
from refusion.errors import UserError
from refusion.imaging import compose, prepare_pair, read_image, write_image
from refusion.inference import fuse_lumas, resolve_device


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="refusion-fuse",
        description="Fuse a pair of images with a ReFusion fusion module. The first input is "
        "source a (infrared, CT/PET/SPECT, near focus, under-exposed), the second source b.",
    )
    p.add_argument("a", help="first source image (infrared / functional / near / under)")
    p.add_argument("b", help="second source image (visible / MRI / far / over)")
    p.add_argument("-o", "--output", required=True, help="output image file (.png, .jpg, ...)")
    p.add_argument("--weights", required=True, help="our .safetensors or the authors' .pth")
    p.add_argument("--task", choices=TASKS, help="fusion task (checked against the checkpoint)")
    p.add_argument(
        "--normalize",
        choices=("fixed", "minmax"),
        default="fixed",
        help="output scaling: fixed [0,1]->[0,255] (default) or per-image min-max (authors')",
    )
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    model, ckpt = load_fusion_model(args.weights, device)
    if args.task and ckpt.task and args.task != ckpt.task:
        raise UserError(
            f"--weights {args.weights} was trained for '{ckpt.task}', not '{args.task}'"
        )
    img_a, img_b = read_image(args.a), read_image(args.b)
    pair = prepare_pair(img_a, img_b, args.a, args.b)
    fused = fuse_lumas(model, pair.a, pair.b)
    out = write_image(args.output, compose(fused, pair.chroma, args.normalize))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
