"""``refusion-video --ir IR --vis VIS -o OUT.mp4``: fuse infrared and visible video.

Inputs are video files, camera indices (``0``), folders of frames (16-bit thermal frames
welcome) or one side-by-side video (``--sbs``). See :mod:`refusion.engine.video` for pairing
and alignment, :mod:`refusion.engine.pipeline` for the threaded pipeline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from pathlib import Path

from refusion.cli._common import (
    TASKS,
    add_backend_options,
    backend_choice,
    cli_entry,
    mode_label,
)
from refusion.engine import BACKENDS, create_backend
from refusion.engine.fuser import check_task
from refusion.engine.pipeline import VideoPipeline
from refusion.engine.preprocess import FramePreprocessor
from refusion.engine.registry import weights_kind
from refusion.engine.video import (
    HOMOGRAPHY_SUFFIXES,
    Aligner,
    FrameSource,
    PairReader,
    estimate_homography,
    homography_coverage,
    homography_warnings,
    load_homography,
    save_homography,
    stretch_warning,
)
from refusion.errors import UserError
from refusion.utils.atomic import atomic_write_text, check_outputs, ensure_writable
from refusion.zoo import resolve_weights, weights_label

PROG = "refusion-video"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Fuse infrared and visible video into an MP4 (threaded decode -> infer -> "
        "encode). Frames are paired by timestamp; the infrared frame is resized (or warped by "
        "--homography) onto the visible frame. Ctrl-C stops and leaves a playable file.",
    )
    src = p.add_argument_group("inputs")
    src.add_argument("--ir", help="infrared video file, camera index or folder of frames")
    src.add_argument("--vis", help="visible video file, camera index or folder of frames")
    src.add_argument("--sbs", help="one side-by-side video instead of --ir/--vis")
    src.add_argument("--sbs-order", choices=("ir-vis", "vis-ir"), default="ir-vis",
                     help="which half of --sbs is which (default: infrared on the left)")
    src.add_argument("--fps", type=float,
                     help="frame rate of frame folders, and of videos or cameras that report "
                          "none (default 30); a video file's own rate wins")
    src.add_argument("--ir-fps", type=float, metavar="FPS",
                     help="frame rate of the --ir input alone (a folder of frames recorded at "
                          "another rate than the visible one); overrides --fps for it (a "
                          "video file's own rate still wins)")
    src.add_argument("--vis-fps", type=float, metavar="FPS",
                     help="frame rate of the --vis input alone; overrides --fps for it")
    p.add_argument("-o", "--output", help="output .mp4")
    p.add_argument("--weights", default=None,
                   help="shipped weights by name (`refusion weights` lists them), a checkpoint, "
                   ".onnx or .plan (default: $REFUSION_WEIGHTS, else the shipped learnt "
                   "weights of --task)")
    p.add_argument("--task", choices=TASKS,
                   help="task whose shipped learnt weights are used without --weights "
                   "(default ivif)")
    add_backend_options(p, BACKENDS)
    p.add_argument("--max-frames", type=int,
                   help="stop after N fused frames (a camera run's file also holds the "
                   "repeats that re-timing adds)")
    p.add_argument("--no-retime", action="store_true",
                   help="with cameras: write every fused frame once at the nominal rate (the "
                   "file then plays faster than real time where frames were dropped); by "
                   "default each frame is held until the next one's timestamp")
    p.add_argument("--batch-size", type=int, default=1, help="frames per inference (default 1)")
    p.add_argument("--queue", type=int, default=4, help="capacity of each queue (default 4)")
    p.add_argument("--normalize", choices=("fixed", "minmax"), default="fixed",
                   help="output scaling: fixed (default, no flicker) or per-frame min-max")
    p.add_argument("--gray", action="store_true", help="grey output")
    p.add_argument("--preview", metavar="MP4", help="also write IR | VIS | fused tiles here")
    al = p.add_argument_group("alignment")
    al.add_argument("--homography", metavar="FILE",
                    help="3x3 infrared->visible homography (.json or .npy)")
    al.add_argument("--estimate-homography", metavar="FILE",
                    help="estimate a homography from --calib-frames pairs near the start, "
                    "write it here (.json with the fit's figures, or .npy) and exit (use it "
                    "next with --homography)")
    al.add_argument("--calib-frames", type=int, default=8,
                    help="frame pairs for --estimate-homography, one every third frame (so "
                    "that they differ) until N are taken or the input ends (default 8)")
    p.add_argument("--stats-json", metavar="FILE", help="write the run's statistics as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _reader(args: argparse.Namespace) -> PairReader:
    if args.sbs:
        if args.ir or args.vis:
            raise UserError("give either --sbs or --ir/--vis, not both")
        if args.ir_fps or args.vis_fps:
            raise UserError("--ir-fps/--vis-fps are for two inputs; --sbs takes --fps")
        return PairReader(sbs=FrameSource(args.sbs, "sbs", args.fps), sbs_order=args.sbs_order)
    if not args.ir or not args.vis:
        raise UserError("both --ir and --vis are required (or one side-by-side video: --sbs)")
    ir = FrameSource(args.ir, "ir", args.ir_fps or args.fps)
    try:
        vis = FrameSource(args.vis, "vis", args.vis_fps or args.fps)
    except BaseException:
        ir.release()
        raise
    return PairReader(ir, vis)


def _estimate(args: argparse.Namespace, reader: PairReader) -> int:
    irs, viss = [], []
    step = 0
    while len(irs) < max(1, args.calib_frames):
        got = reader.read()
        if got is None:
            break
        step += 1
        if step % 3 == 1:  # spread the calibration frames a little over time
            irs.append(got[0])
            viss.append(got[1])
    reader.release()
    if not irs:
        raise UserError("no frame pairs to estimate a homography from")
    h, info = estimate_homography(irs, viss)
    doubts = homography_warnings(info)
    save_homography(args.estimate_homography, h, frames=len(irs), **info, warnings=doubts)
    print(f"{PROG}: wrote {args.estimate_homography} ({info['method']}, {info['inliers']} "
          f"inliers of {info['matches']} matches, {len(irs)} frame pairs, the infrared frame "
          f"covering {100 * info['coverage']:.0f} % of the visible one)", file=sys.stderr)
    for w in doubts:
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    return 0


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (docker stop, systemctl stop) takes Ctrl-C's path: the MP4 is finalised and kept
    old = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, old)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace) -> int:
    backend_name, options = backend_choice(args)  # before any camera or file is opened
    for name in ("fps", "ir_fps", "vis_fps"):
        v = getattr(args, name)
        if v is not None and not (math.isfinite(v) and v > 0):
            raise UserError(f"--{name.replace('_', '-')} must be a positive number, got {v}")
    if args.calib_frames < 1:
        raise UserError(f"--calib-frames must be at least 1, got {args.calib_frames}")
    if args.estimate_homography:
        if Path(args.estimate_homography).suffix.lower() not in HOMOGRAPHY_SUFFIXES:
            raise UserError(f"--estimate-homography {args.estimate_homography}: write a .json "
                            "or .npy file (what --homography reads)")
        ignored = [o for o, v in (("-o", args.output), ("--preview", args.preview),
                                  ("--stats-json", args.stats_json)) if v]
        if ignored:
            raise UserError(f"--estimate-homography measures the alignment and exits, so "
                            f"{'/'.join(ignored)} would write nothing; fuse in a second run "
                            "with --homography")
    if args.weights is not None and not str(args.weights).strip():
        raise UserError("--weights is empty (leave it out for the shipped weights of --task)")
    # say $REFUSION_WEIGHTS, not --weights, when the environment chose the weights
    option = "--weights"
    if args.weights is None and os.environ.get("REFUSION_WEIGHTS"):
        args.weights, option = os.environ["REFUSION_WEIGHTS"], "$REFUSION_WEIGHTS"
    # resolved before any input is opened, and an input no output may overwrite; an estimate
    # of the alignment uses no weights, so a wrong one does not stop it
    weights = None if args.estimate_homography else resolve_weights(args.weights, args.task,
                                                                     option)
    reader = _reader(args)
    aligned = args.homography or args.estimate_homography  # given, or being measured now
    stretched = None if aligned else stretch_warning(reader.ir_size, reader.vis_size)
    if stretched:
        reader.stats.warnings.append(stretched)
    for w in reader.stats.warnings:
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    # no output may land on an input file (a camera index is not a file) or on another output
    inputs = [(f"--{k}", getattr(args, k)) for k in ("ir", "vis", "sbs", "homography")]
    inputs = [(k, v) for k, v in inputs if v is not None and not str(v).isdigit()]
    if weights is not None:
        inputs.append((option, weights))  # the user's checkpoint (or the shipped one)
    outputs = [("-o", args.output), ("--preview", args.preview),
               ("--stats-json", args.stats_json),
               ("--estimate-homography", args.estimate_homography)]
    try:
        check_outputs(outputs, inputs)
    except UserError:
        reader.release()
        raise
    if args.estimate_homography:
        return _estimate(args, reader)
    if not args.output:
        reader.release()
        raise UserError("-o/--output is required")
    out = Path(args.output)
    try:
        for flag, path in (("-o", out), ("--preview", args.preview)):
            if path and Path(path).suffix.lower() != ".mp4":
                raise UserError(f"{flag} {path}: the output must be an .mp4 file")
        for name in ("max_frames", "batch_size", "queue"):
            v = getattr(args, name)
            if v is not None and v < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
        for flag, path in (("-o", out), ("--preview", args.preview),
                           ("--stats-json", args.stats_json)):
            if path:  # all before the first frame: the stats are written after the last one
                try:
                    ensure_writable(path)
                except UserError as exc:
                    raise UserError(f"{flag}: {exc}") from None
        check_task(weights, args.task, f"{option} {weights_label(args.weights, weights)}")
        if weights_kind(weights) == "checkpoint":
            # a bad checkpoint fails here, before the run's banner (the backend loads it only
            # when the pipeline starts)
            from refusion.checkpoint import load_fusion_model

            load_fusion_model(weights)
    except UserError:
        reader.release()
        raise
    try:  # the inputs (cameras included) are released whatever fails before the pipeline runs
        h = load_homography(args.homography) if args.homography else None
        if h is not None:
            cover = homography_coverage(h, reader.ir_size, reader.vis_size)
            if cover == 0:
                raise UserError(f"--homography {args.homography} takes the infrared frame "
                                f"({reader.ir_size[0]}x{reader.ir_size[1]}) entirely off the "
                                f"visible one ({reader.vis_size[0]}x{reader.vis_size[1]}): the "
                                "fused video would hold no infrared")
            if cover < 0.5:
                print(f"{PROG}: warning: under --homography {args.homography} the infrared "
                      f"frame covers {100 * cover:.0f} % of the visible frame (its border is "
                      "repeated over the rest)", file=sys.stderr)
        backend = create_backend(backend_name, weights, device=args.device, **options,
                                 spin=False)  # idle ORT threads must not starve decode/encode
        pipe = VideoPipeline(
            reader, backend, out, aligner=Aligner(reader.vis_size, h),
            preprocessor=FramePreprocessor(args.normalize, args.gray), preview=args.preview,
            max_frames=args.max_frames, batch_size=args.batch_size, queue_size=args.queue,
            progress=not args.quiet, retime=False if args.no_retime else None,
        )
    except BaseException:
        reader.release()
        raise
    src = (args.sbs,) if args.sbs else (args.ir, args.vis)
    print(f"{PROG}: {' + '.join(map(str, src))} -> {out} "
          f"({backend.name}{mode_label(options)} on {backend.device}, "
          f"weights {weights_label(args.weights, weights)}, "
          f"{reader.vis_size[0]}x{reader.vis_size[1]} at {reader.fps:g} fps)", file=sys.stderr)
    completed = False
    try:
        stats = pipe.run()
        completed = True
    finally:
        s = pipe.stats
        for w in s.warnings[len(reader.stats.warnings):]:  # those the run itself found
            print(f"{PROG}: warning: {w}", file=sys.stderr)
        if s.salvaged:
            print(f"{PROG}: failed after {s.frames} frames; they are kept in {s.salvaged}",
                  file=sys.stderr)
        elif s.frames and (completed or s.interrupted):  # never "wrote" after a failure
            where = s.output or out
            print(f"{PROG}: {'kept' if s.interrupted else 'wrote'} {where}: {s.summary()}",
                  file=sys.stderr)
            if s.interrupted and str(where) != str(out):
                print(f"{PROG}: {out}, from an earlier run, was left as it was",
                      file=sys.stderr)
        preview_dest = pipe.preview.dest if pipe.preview is not None else None
        if preview_dest is not None and str(preview_dest) != str(args.preview):
            print(f"{PROG}: the preview is in {preview_dest} ({args.preview} was left as it "
                  "was)" if Path(args.preview).exists() else
                  f"{PROG}: the preview is in {preview_dest}", file=sys.stderr)
        backend.deactivate()
        if args.stats_json:
            try:
                atomic_write_text(args.stats_json, json.dumps(s.as_dict(), indent=2))
            except OSError as exc:
                why = f"cannot write --stats-json {args.stats_json} ({exc.strerror or exc})"
                if completed:  # the one error of the run
                    raise UserError(why) from None
                # a failure or Ctrl-C is on its way out: it is the news, this is a footnote
                print(f"{PROG}: warning: {why}", file=sys.stderr)
    if stats.ended.startswith("end of ir") and reader.frame_count < 0:
        print(f"{PROG}: warning: the infrared stream ended first", file=sys.stderr)
    return 0


if __name__ == "__main__":
    # re-import under the package name so that messages say refusion-video, not refusion
    from refusion.cli.video import main as _main

    sys.exit(_main())
