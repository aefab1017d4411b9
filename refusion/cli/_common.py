"""What every command shares: one-line user errors and the task names."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable

from refusion.errors import UserError

TASKS = ("ivif", "mif", "mfif", "meif")


def add_backend_options(p, backends: tuple[str, ...]) -> None:
    """``--backend`` and ``--device``, as every inference command spells them."""
    p.add_argument("--backend", choices=backends, default="auto",
                   help="inference backend (default auto: the fastest available)")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--bf16", action="store_true",
                   help="BF16 inference (torch backend; fast on CPUs with AVX512-BF16/AMX and on "
                        "CUDA): not the same images as FP32, about 56 dB PSNR against them")
    p.add_argument("--fp16", action="store_true",
                   help="FP16 inference on CUDA (torch backend, with CUDA graphs); for ONNX "
                        "Runtime or TensorRT give an FP16 export as --weights instead "
                        "(refusion-export --fp16)")
    p.add_argument("--threads", type=int,
                   help="CPU threads of the torch and ONNX Runtime backends (default: "
                        "$OMP_NUM_THREADS when set, else the physical cores)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network (torch backend): 15-25 s of compilation per "
                        "frame size and batch on a 2-core CPU, then the fastest CPU runs")


def max_threads() -> int:
    """The most CPU threads a command accepts: 4x the CPUs (more only adds switching, and a
    typo such as 100000 started tens of thousands of threads)."""
    return 4 * (os.cpu_count() or 1)


def backend_choice(args) -> tuple[str, dict]:
    """The backend name and options from ``--backend``, ``--fp16``, ``--bf16`` and ``--compile``.

    These are options of the torch backend: with ``--backend auto`` they select it, with another
    backend they are an error (not silently dropped). ``--fp16`` becomes the backend's ``half``.
    """
    flags = [k for k in ("fp16", "bf16", "compile") if getattr(args, k, False)]
    opts = {("half" if k == "fp16" else k): True for k in flags}
    name = args.backend
    if opts and name != "torch":
        if name != "auto":
            verb = "needs" if len(flags) == 1 else "need"
            hint = (" (for an FP16 ONNX Runtime or TensorRT run, give an FP16 export as "
                    "--weights: refusion-export --fp16)" if "fp16" in flags else "")
            raise UserError(f"{' and '.join(f'--{k}' for k in flags)} {verb} the torch backend "
                            f"(--backend torch or auto), not --backend {name}{hint}")
        name = "torch"
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads must be at least 1, got {threads}")
        limit = max_threads()
        if threads > limit:
            raise UserError(f"--threads {threads} is more than 4x the {os.cpu_count()} CPUs "
                            f"here (at most {limit})")
        if name == "tensorrt":
            raise UserError("--threads is for the CPU backends (torch, onnxruntime), not "
                            "--backend tensorrt")
        opts["threads"] = threads
    return name, opts


def mode_label(options: dict) -> str:
    """`` bf16 compiled`` for the messages of a run with those torch options, else ``""``."""
    return (" fp16" * bool(options.get("half")) + " bf16" * bool(options.get("bf16"))
            + " compiled" * bool(options.get("compile")))


def _prog_name(fn: Callable) -> str:
    """``refusion.cli.fuse`` -> ``refusion-fuse``; ``refusion.cli.main`` -> ``refusion``."""
    module = fn.__module__
    if module == "__main__":  # ``python -m refusion.cli.train``: name it after the module run
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else "main"
    leaf = module.rsplit(".", 1)[-1]
    if leaf == "main":
        return "refusion"
    return f"refusion-{leaf}"


def _quiet_opencv() -> None:
    """Silence OpenCV's own log lines ("[ WARN:0@1.5] global grfmt_png.cpp ..."): every
    failure they describe reaches the user as our one line naming the file. A user's
    ``OPENCV_LOG_LEVEL`` still wins (debugging a codec)."""
    if "OPENCV_LOG_LEVEL" in os.environ:
        return
    if "cv2" not in sys.modules:
        # not imported yet (a command that reads no images never imports it, and
        # refusion-train imports it only with its data): OpenCV reads this when it loads
        os.environ["OPENCV_LOG_LEVEL"] = "SILENT"
        return
    import cv2

    with contextlib.suppress(AttributeError, ImportError, cv2.error):
        from cv2.utils import logging as cv_logging

        cv_logging.setLogLevel(cv_logging.LOG_LEVEL_SILENT)


def cli_entry(fn: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a ``main(argv)``: a :class:`UserError` becomes ``prog: error: msg`` and exit 2,
    Ctrl-C becomes exit 130 (after the command's own clean-up ran)."""

    @functools.wraps(fn)
    def wrapper(argv: list[str] | None = None) -> int:
        prog = _prog_name(fn)
        _quiet_opencv()
        try:
            rc = fn(argv)
        except UserError as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        except BrokenPipeError:
            # the reader went away (`refusion weights | head -1`): not an error of ours. Point
            # stdout at devnull so that the interpreter's own flush at exit stays quiet too.
            with contextlib.suppress(OSError, ValueError, AttributeError):  # not an fd
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(0) from None
        return int(rc or 0)

    return wrapper
