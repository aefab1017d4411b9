"""``refusion-train``: meta-learn a fusion network with the paper's Algorithm 1.

Examples::

    refusion-train --task ivif --data data/MSRS_train --val data/MSRS_test --out runs/ivif
    refusion-train --task mfif --data pairs/ schedule.epochs=2 fusion.dim=8
    refusion-train --resume runs/ivif
    torchrun --nproc_per_node 4 -m refusion.train --task ivif --data ... --out runs/ivif4
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

from refusion.cli._common import TASKS, cli_entry


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="refusion-train",
        description="Meta-learning trainer of ReFusion (Algorithm 1). Settings not given as "
        "options are key=value overrides of the configuration (e.g. schedule.epochs=2 "
        "meta.first_order=true fusion.dim=8); see docs/training.md.",
    )
    p.add_argument("--task", choices=TASKS, help="task preset (required unless --resume)")
    p.add_argument("--data", help="training folder (ir/vi, CT|PET|SPECT/MRI, A/B, under/over)")
    p.add_argument("--a", help="folder of the first sources (instead of --data)")
    p.add_argument("--b", help="folder of the second sources")
    p.add_argument("--val", help="validation folder (metrics per epoch, best checkpoint)")
    p.add_argument("--config", help="YAML file of settings (over the task preset), or a "
                   "shipped recipe by name: cpu, paper (the task's), tiny")
    p.add_argument("--out", help="run folder (default runs/<task>-<date-time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int)
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved configuration as YAML and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def _options(args) -> dict:
    """The options as configuration settings, taken as given (a folder named ``0010``, ``yes``
    or ``a #1`` stays that name). The data given on the command line replaces the other form
    in a --config file or a resumed run: --data clears data.a/data.b, --a/--b clear
    data.root."""
    opts = {}
    for flag, key in (("data", "data.root"), ("a", "data.a"), ("b", "data.b"),
                      ("val", "data.val"), ("device", "device"), ("seed", "seed")):
        value = getattr(args, flag)
        if value is not None:
            opts[key] = value
    if args.data is not None:
        opts.update({"data.a": "", "data.b": ""})
    elif args.a is not None or args.b is not None:
        opts["data.root"] = ""
    return opts


def _new_run_folder(task: str) -> str:
    """``runs/<task>-<date-time>``, made here and now so that two runs started in the same
    second get two folders (``-2``, ``-3``, ... on a collision)."""
    from refusion.errors import UserError

    base = os.path.join("runs", f"{task}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        os.makedirs("runs", exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot make runs/ for the run folder: {exc.strerror or exc} (give "
                        "--out)") from None
    for n in range(1, 1000):
        path = base if n == 1 else f"{base}-{n}"
        try:
            os.mkdir(path)  # exclusive: the other run gets the next name
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise UserError(f"cannot make {path}: {exc.strerror or exc} (give --out)") from None
    raise UserError(f"too many run folders named {base}-N; give --out")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    # intermixed: key=value overrides may come before, between and after the options
    args = build_parser().parse_intermixed_args(argv)
    import yaml

    from refusion.config import to_dict
    from refusion.errors import UserError
    from refusion.train.config import build_config, recipe_file
    from refusion.train.trainer import Trainer, load_run_config

    options, overrides = _options(args), list(args.overrides)
    from refusion.config import override_key

    twice = sorted({key for key, _ in map(override_key, overrides)} & options.keys())
    if twice:  # which one should win is not the tool's guess to make
        flags = {"data.root": "--data", "data.a": "--a/--data", "data.b": "--b/--data",
                 "data.val": "--val", "device": "--device", "seed": "--seed"}
        raise UserError(f"{', '.join(twice)} given both as an option ("
                        f"{', '.join(flags[k] for k in twice)}) and as key=value; give it once")
    if args.data and (args.a or args.b):
        raise UserError("give the training data either as --data DIR or as --a DIR --b DIR, "
                        "not both")
    if args.resume:
        ignored = [f"--{k}" for k in ("config", "out", "task") if getattr(args, k)]
        if ignored:
            raise UserError(f"{', '.join(ignored)} cannot be given with --resume: the run "
                            f"continues in {args.resume} with its config.yaml (change settings "
                            "with key=value overrides)")
        cfg = load_run_config(args.resume, overrides, options)
        run_dir = args.resume
    else:
        if not args.task:
            raise UserError("give --task (one of " + ", ".join(TASKS) + ") or --resume RUN_DIR")
        config = recipe_file(args.task, args.config) if args.config else None
        cfg = build_config(args.task, config, overrides, options)
        if args.out:
            run_dir = args.out
        elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError("give --out RUN_DIR with torchrun (every process needs the same one)")
        elif not args.print_config:
            run_dir = _new_run_folder(cfg.task)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    from refusion.train.distributed import shutdown

    made = not (args.resume or args.out)  # the default folder, made above and still empty
    try:  # a rank failing while it sets up leaves the group too (its peers then stop)
        trainer = Trainer(cfg, run_dir, resume=bool(args.resume))
        made = False
        result = trainer.fit()
    finally:
        shutdown()
        if made:  # a data error leaves no empty run folder behind
            with contextlib.suppress(OSError):
                os.rmdir(run_dir)
    if trainer.dist.is_main:
        final = trainer.run_dir / "final.safetensors"
        if result.checkpoint is None and final.is_file():
            print(f"refusion-train: the run was already complete at step {result.step} "
                  f"({final})", file=sys.stderr)
        else:
            print(f"refusion-train: done, step {result.step}; checkpoint {result.checkpoint}"
                  + (f" (also {final.name})" if final.is_file() else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
