"""``refusion-export [CKPT|NAME] -o model.onnx [--fp16] [--engine model.plan]``: deploy F.

``CKPT`` is a checkpoint file or the name of shipped weights (:mod:`refusion.zoo`); without it
the shipped learnt weights of ``--task`` (default ``ivif``) are exported. Argument handling
only; the work is in :mod:`refusion.export`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from refusion.cli._common import TASKS, cli_entry
from refusion.engine.fuser import check_task
from refusion.errors import UserError
from refusion.utils.atomic import ensure_writable
from refusion.zoo import resolve_weights, shipped_name


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="refusion-export",
        description="Export the fusion module of a checkpoint (ours or the authors' .pth) to ONNX "
        "(FP32, or FP16 with FP32 islands) and optionally build a TensorRT FP16 engine. Input "
        "'sources' float32 (N, 2, H, W), channel 0 = source a; output 'fused' (N, 1, H, W) in "
        "[0, 1]; N, H and W are dynamic. Every output is checked before it is written.",
    )
    p.add_argument("checkpoint", nargs="?",
                   help="shipped weights by name (ivif, mfif-fixed...; `refusion weights` lists "
                   "them), our .safetensors checkpoint or the authors' .pth (default: the shipped "
                   "learnt weights of --task)")
    p.add_argument("--weights", metavar="CKPT",
                   help="the same as the positional CKPT (as in refusion-fuse)")
    p.add_argument("--task", choices=TASKS,
                   help="task whose shipped learnt weights are exported without CKPT (default "
                   "ivif); checked against the task the weights record (a refusion "
                   "checkpoint's card; the authors' file by its name, ReFusion_IVIF.pth), "
                   "and recorded in the export when they record none")
    p.add_argument("-o", "--output", required=True, help="destination .onnx file")
    p.add_argument("--fp16", action="store_true", help="write the FP16 graph (FP32 islands)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 17 or newer (default 17)")
    p.add_argument("--engine", metavar="PLAN", help="also build a TensorRT engine into PLAN")
    p.add_argument("--min", metavar="HxW", help="smallest input size of the engine (32x32)")
    p.add_argument("--opt", metavar="HxW", help="size the engine is tuned for (1080x1920)")
    p.add_argument("--max", metavar="HxW", help="largest input size of the engine (2160x3840)")
    p.add_argument("--batch", type=int, default=1, help="largest batch of the engine (default 1)")
    p.add_argument("--workspace-gb", type=float, default=4.0, help="TensorRT workspace limit")
    p.add_argument(
        "--timing-cache",
        metavar="FILE",
        help="TensorRT timing cache, reused across builds (default: tensorrt.timing.cache "
        "next to the plan)",
    )
    p.add_argument(
        "--check-size",
        metavar="HxW",
        default=None,
        help="input size of the FP16 accuracy check, with --fp16 (default 1080x1920)",
    )
    p.add_argument("--no-check", action="store_true", help="skip the accuracy checks")
    p.add_argument("-q", "--quiet", action="store_true", help="only print errors")
    return p


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at each record (not the stream of the first call)."""

    @property
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


@contextlib.contextmanager
def _command_logging(quiet: bool):
    """The export's progress lines on stderr for the duration of the command only.

    Called in-process (a notebook, a test, another tool), the command must leave the
    ``refusion.export`` logger as it found it: a handler left behind would print every later
    export twice, and ``propagate = False`` left behind would hide its records from the
    caller's logging.
    """
    log = logging.getLogger("refusion.export")
    saved = log.level, log.propagate
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("refusion-export: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


def _newest_opset() -> int | None:
    """The newest opset the installed torch's TorchScript ONNX exporter writes (the one
    :func:`refusion.export.export_onnx` uses, ``dynamo=False``; None: unknown). Its limit is
    lower than the dynamo exporter's ``ONNX_MAX_OPSET``: asked for more, it writes a graph
    labelled with the newer opset after a warning."""
    try:
        from torch.onnx import _constants
    except ImportError:
        return None
    limit = getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", None)
    if limit is None:
        limit = getattr(_constants, "ONNX_MAX_OPSET", None)
    return None if limit is None else int(limit)


def _timing_cache(args) -> Path:
    return Path(args.timing_cache or Path(args.engine).parent / "tensorrt.timing.cache")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from refusion.export.tensorrt_build import import_tensorrt, make_profile, parse_hw

    # Everything that can be wrong with the options fails before minutes of work.
    if args.opset < 17:
        raise UserError(f"--opset must be 17 or newer (LayerNormalization), got {args.opset}")
    newest = _newest_opset()
    if newest is not None and args.opset > newest:
        raise UserError(f"--opset {args.opset} is newer than this torch can export "
                        f"(17 to {newest})")
    if args.check_size is not None and (not args.fp16 or args.no_check):
        raise UserError("--check-size sizes the FP16 graph's accuracy check: "
                        + ("it is skipped with --no-check" if args.fp16 else "add --fp16 (the "
                           "FP32 export is checked at its own sizes)"))
    check_hw = parse_hw(args.check_size or "1080x1920", "--check-size")
    if Path(args.output).suffix.lower() != ".onnx":
        raise UserError(f"-o/--output must end in .onnx, got {args.output}")
    profile = None
    if args.engine:
        sizes = [parse_hw(v, f"--{k}") if v else None for k, v in
                 (("min", args.min), ("opt", args.opt), ("max", args.max))]
        profile = make_profile(*sizes, batch=args.batch)
        import_tensorrt()  # one line naming the extra when it is missing
        if not args.no_check:
            from refusion.export.tensorrt_build import engine_check_problem

            if engine_check_problem():  # before the ONNX export and the build, not after
                raise UserError("--engine: the engine's accuracy check runs it on the GPU "
                                "through torch, and this torch has no CUDA: install a CUDA "
                                "build of torch, or skip the check with --no-check")
    elif args.min or args.opt or args.max or args.batch != 1:
        raise UserError("--min/--opt/--max/--batch shape the TensorRT engine: add --engine PLAN")
    if args.checkpoint and args.weights:
        raise UserError("give the checkpoint either as CKPT or as --weights, not both")
    spec = args.checkpoint or args.weights
    # messages name the weights as the user gave them: the positional CKPT or --weights
    checkpoint = resolve_weights(spec, args.task,
                                 option="checkpoint" if args.checkpoint else "--weights")
    name = shipped_name(checkpoint)
    check_task(checkpoint, args.task, name or str(checkpoint))
    ensure_writable(args.output)
    if args.engine:
        ensure_writable(args.engine)
        ensure_writable(_timing_cache(args))
    with _command_logging(args.quiet):
        _export(args, checkpoint, name, check_hw, profile)
    return 0


def _export(args, checkpoint, name, check_hw, profile) -> None:
    from refusion.export import build_engine, export_onnx

    onnx_path = export_onnx(
        checkpoint,
        args.output,
        fp16=args.fp16,
        opset=args.opset,
        check=not args.no_check,
        metadata={"weights_name": name} if name else None,
        task=args.task,
        fp16_check_shape=(1, 2, *check_hw),
    )
    if not args.quiet:
        print(f"wrote {onnx_path}" + (f" (weights {name})" if name else ""), file=sys.stderr)
    if args.engine:
        plan = Path(args.engine)
        cache = _timing_cache(args)
        build_engine(
            onnx_path,
            plan,
            min_shape=profile.min,
            opt_shape=profile.opt,
            max_shape=profile.max,
            workspace_gb=args.workspace_gb,
            timing_cache=cache,
            check=not args.no_check,
        )
        if not args.quiet:
            print(f"wrote {plan} and {plan.name}.json", file=sys.stderr)


if __name__ == "__main__":
    # re-import under the package name so that messages say refusion-export, not refusion
    from refusion.cli.export import main as _main

    sys.exit(_main())
