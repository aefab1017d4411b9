"""Run the benchmarks (or read their JSON); write ``docs/benchmarks.md`` and ``.png``.

Usage::

    python bench/report.py                      # run bench/ with pytest-benchmark, then report
    python bench/report.py --json a.json b.json # report from earlier --benchmark-json files

Speed-ups are relative to the eager baseline (``eager-baseline``) at the same size, computed on
the minimum over rounds (the least disturbed run on a shared machine); means are listed too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = ["256x256", "480x640", "1280x720", "1920x1080"]
BASELINE = "eager-baseline"


def run_benchmarks(json_dir: Path, extra: list[str]) -> list[Path]:
    """Run bench/ with pytest-benchmark; returns the JSON files written into ``json_dir``.

    The latency cases share one process. Each video configuration gets a process of its own,
    as ``refusion-video`` runs one backend per process: after ONNX Runtime had run in the same
    process, the compiled torch pipeline measured 79-82 % of model-only against 91-93 % alone.
    """
    from bench_video import CONFIGS as VIDEO_CONFIGS

    runs = [("latency", [str(ROOT / "bench" / "bench_backends.py")])]
    runs += [(f"video-{cfg}", [f"{ROOT / 'bench' / 'bench_video.py'}::"
                               f"test_video_end_to_end_vs_model_only[{cfg}]"])
             for cfg in VIDEO_CONFIGS]
    paths = []
    for name, targets in runs:
        path = json_dir / f"{name}.json"
        cmd = [sys.executable, "-m", "pytest", *targets, "--benchmark-only",
               f"--benchmark-json={path}", "-q", "-p", "no:cacheprovider", *extra]
        print("running:", " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, cwd=ROOT, check=False)
        if path.is_file():
            paths.append(path)
    return paths


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> dict[str, str]:
    """Machine and library versions, as ``bench/conftest.py`` records them into each
    pytest-benchmark JSON (``machine_info["refusion"]``) for the report's header."""
    import numpy
    import torch

    info = {"cpu": _cpu_name(), "cores available": str(len(os.sched_getaffinity(0))),
            "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "platform": platform.platform()}
    try:
        import onnxruntime

        eps = ", ".join(onnxruntime.get_available_providers())
        info["onnxruntime"] = f"{onnxruntime.__version__} ({eps})"
    except ImportError:
        info["onnxruntime"] = "not installed"
    try:
        import cv2

        info["opencv"] = cv2.__version__
    except ImportError:
        pass
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except ImportError:
        info["tensorrt"] = "not installed"
    with contextlib.suppress(OSError):
        info["load average (1/5/15 min) at the end of the run"] = " ".join(
            Path("/proc/loadavg").read_text().split()[:3])
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    try:
        from refusion._native import build_info

        info["native kernels"] = str(build_info())
    except Exception:  # noqa: BLE001 - informative only
        pass
    return info


def collect(data: dict) -> tuple[dict[str, dict[str, dict]], list[dict]]:
    """``latency[config][size] = stats`` and the video entries of a pytest-benchmark JSON.

    A reduced-precision row's PSNR against FP32 (``psnr_vs_fp32``) and the backend's own
    description (``describe``: device, threads, kernels...) are kept in its stats. The
    baseline comes first, the other configurations in the order met."""
    latency: dict[str, dict[str, dict]] = {}
    video = []
    for b in data.get("benchmarks", []):
        ex = b.get("extra_info", {})
        if "end_to_end_fps" in ex:
            key = ex.get("config", ex.get("backend"))
            video = [v for v in video if v.get("config", v.get("backend")) != key] + [ex]
        elif "config" in ex:
            stats = dict(b["stats"])
            if "psnr_vs_fp32" in ex:
                stats["psnr_vs_fp32"] = ex["psnr_vs_fp32"]
            if "describe" in ex:
                stats["describe"] = ex["describe"]
            latency.setdefault(ex["config"], {})[ex["size"]] = stats
    if BASELINE in latency:
        latency = {BASELINE: latency[BASELINE]} | latency
    return latency, video


def _recorded_machine(doc: dict) -> dict[str, str]:
    """The machine a pytest-benchmark JSON was measured on, as the report lists it: what
    ``bench/conftest.py`` recorded then (``machine_info["refusion"]``), else what
    pytest-benchmark itself records (CPU, cores, Python), plus when and at which commit."""
    mi = doc.get("machine_info", {}) or {}
    info = dict(mi.get("refusion", {}) or {})
    if not info:
        cpu = mi.get("cpu", {}) or {}
        info = {"cpu": str(cpu.get("brand_raw", "unknown CPU")),
                "cores": str(cpu.get("count", "?")),
                "python": str(mi.get("python_version", "?")),
                "libraries": "not recorded in this JSON (benchmarks run before "
                             "bench/conftest.py recorded them)"}
    info["host"] = str(mi.get("node", "?"))
    if doc.get("datetime"):
        info["measured"] = str(doc["datetime"])
    commit = doc.get("commit_info", {}) or {}
    if commit.get("id"):
        info["commit"] = str(commit["id"])[:12] + (" (uncommitted changes)" if commit.get(
            "dirty") else "")
    return info


def _same_machine_key(doc: dict) -> tuple:
    mi = doc.get("machine_info", {}) or {}
    cpu = mi.get("cpu", {}) or {}
    return mi.get("node"), cpu.get("brand_raw"), cpu.get("count")


def read_results(paths: list[Path]) -> tuple[dict, dict[str, str], list[str]]:
    """Merge pytest-benchmark JSONs (later files win for the same configuration).

    Returns ``(data, machine info, warnings)``: the machine is the first file's; files from
    another machine are named in the warnings, since their figures do not compare.
    Raises SystemExit with one line for a missing or unreadable file."""
    docs = []
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text())
        except OSError as exc:
            raise SystemExit(f"report.py: error: cannot read {path}: "
                             f"{exc.strerror or exc}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SystemExit(f"report.py: error: {path} is not a pytest-benchmark JSON "
                             f"({exc})") from None
        if not isinstance(doc, dict):
            raise SystemExit(f"report.py: error: {path} is not a pytest-benchmark JSON")
        docs.append((path, doc))
    warnings = [f"{path} was measured on another machine ({_same_machine_key(doc)[0]}, "
                f"{_same_machine_key(doc)[1]}) than {docs[0][0]}: its rows do not compare "
                "with the others" for path, doc in docs[1:]
                if _same_machine_key(doc) != _same_machine_key(docs[0][1])]
    data = {"benchmarks": [b for _, doc in docs for b in doc.get("benchmarks", []) or []]}
    return data, (_recorded_machine(docs[0][1]) if docs else {}), warnings


def markdown(latency: dict, video: list[dict], info: dict, chart: str | None,
             warnings: list[str] | None = None) -> str:
    sizes = [s for s in SIZES if any(s in v for v in latency.values())]
    base = latency.get(BASELINE, {})
    lines = ["# Runtime benchmarks", "",
             "Latency of one frame (batch 1) of the published network (`FusionNet()`, 59,856 "
             "parameters, with the shipped `ivif` weights; input: two photographs), by backend "
             "and frame size, named as the issue names them (480x640 is height x width, a "
             "640x480 VGA frame; 1280x720 and 1920x1080 are width x height, 720p and 1080p). "
             "Baseline: eager "
             "PyTorch, float32, NCHW, no compile, native kernels off, system allocator. Speed-up "
             "= baseline min / backend min at the same size. Generated by "
             "`python bench/report.py` (torch.compile rows with `REFUSION_BENCH_COMPILE=1`).",
             "",
             "Configurations: `eager-retained` is the baseline with freed memory kept "
             "(`refusion.engine.memory`); `torch` is the torch backend's defaults (on CPU: the "
             "inference form of F, native kernels, retained memory); `onnxruntime` runs the "
             "exported FP32 graph (inference form) with graph optimisation level ALL, "
             "`onnxruntime-extended` with EXTENDED (no NCHWc layout). `onnxruntime-fast` is a "
             "different, smaller network: the architecture of the shipped `ivif-fast` weights "
             "(one Restormer block per stage, 40,184 parameters; its quality is in "
             "`docs/results/ivif-fast.md`), so its speed-up is not the same model's. "
             "`torch-compile` is the torch backend with `torch.compile` (Inductor, freezing on "
             "CPU); `torch-bf16` runs F in BF16 (channels-last; on CPU fast only with "
             "AVX512-BF16/AMX) and `torch-bf16-compile` compiles that: reduced-precision rows "
             "give their PSNR against the FP32 output (the same photograph pair for every row), "
             "since their images are close to, not equal to, the FP32 ones.", ""]
    lines += [f"**Warning:** {w}" for w in warnings or []] + ([""] if warnings else [])
    if latency:
        lines += ["| backend | " + " | ".join(sizes) + " |", "|---|" + "---|" * len(sizes)]
    for cfg, per in latency.items():
        cells = []
        for s in sizes:
            st = per.get(s)
            if not st:
                cells.append("-")
                continue
            cell = f"{1e3 * st['min']:.0f} ms (mean {1e3 * st['mean']:.0f})"
            if s in base and cfg != BASELINE:
                cell += f", **{base[s]['min'] / st['min']:.2f}x**"
            if "psnr_vs_fp32" in st:
                cell += f", {st['psnr_vs_fp32']:.1f} dB vs FP32"
            cells.append(cell)
        lines.append(f"| {cfg} | " + " | ".join(cells) + " |")
    if latency:
        lines += ["", "On a shared machine other jobs inflate both the minimum and the mean; "
                  "compare backends within one run, and rerun on an idle machine for absolute "
                  "figures.", "", "Backends absent from the table were skipped (see the pytest "
                  "output for the reason: no TensorRT, no GPU, torch.compile off by default).",
                  ""]
        described = {cfg: next((st["describe"] for st in per.values() if "describe" in st), None)
                     for cfg, per in latency.items()}
        if any(described.values()):
            lines += ["How each configuration ran (its backend's `describe()`):", "",
                      "| backend | device | threads | settings |", "|---|---|---|---|"]
            for cfg, d in described.items():
                if d:
                    rest = ", ".join(f"{k} {v}" for k, v in d.items()
                                     if k not in ("device", "threads"))
                    lines.append(f"| {cfg} | {d.get('device', '?')} | {d.get('threads', '-')} "
                                 f"| {rest} |")
            lines.append("")
    if video:
        lines += ["## Video: end-to-end vs model-only", "",
                  "| source | backend | frames | end-to-end fps | model-only fps | ratio | "
                  "decode / infer / encode per frame |", "|---|---|---|---|---|---|---|"]
        for v in video:
            lines.append(
                f"| {v['source']} | {v.get('config', v['backend'])}: {v['backend']} "
                f"({v['device']}) | {v['frames']} | "
                f"{v['end_to_end_fps']:.3f} | {v['model_only_fps']:.3f} | "
                f"**{v['ratio']:.1%}** | {v['decode_ms']:.1f} / {v['infer_ms']:.0f} / "
                f"{v['encode_ms']:.1f} ms |")
        lines.append("")
    if chart:
        lines += [f"![latency by backend and size]({chart})", ""]
    lines += ["## Machine", ""] + [f"- {k}: {v}" for k, v in info.items()] + [""]
    return "\n".join(lines)


def plot(latency: dict, path: Path) -> bool:
    """Grouped bar chart of latency (log scale); ``False`` when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart written", file=sys.stderr)
        return False
    import numpy as np

    sizes = [s for s in SIZES if any(s in v for v in latency.values())]
    cfgs = list(latency)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(1, len(cfgs))
    x = np.arange(len(sizes))
    for i, cfg in enumerate(cfgs):
        vals = [1e3 * latency[cfg][s]["min"] if s in latency[cfg] else np.nan for s in sizes]
        ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=cfg)
    ax.set_xticks(x, sizes)
    ax.set_yscale("log")
    ax.set_ylabel("latency per frame (ms, min over rounds, log)")
    ax.set_title("ReFusion F, batch 1, by backend")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    from refusion.utils.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    p = argparse.ArgumentParser(description="Run bench/ and write docs/benchmarks.md + .png")
    p.add_argument("--json", type=Path, nargs="+",
                   help="read these pytest-benchmark JSONs (merged in order) instead of running")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (after --)")
    args = p.parse_args(argv)
    if args.out.suffix.lower() != ".md":  # the chart goes beside it, as <name>.png
        raise SystemExit(f"report.py: error: --out {args.out}: the report is a .md file "
                         "(the chart is written beside it as .png)")
    with tempfile.TemporaryDirectory() as tmp:
        json_paths = args.json or run_benchmarks(Path(tmp), args.pytest_args)
        # later files win for the same configuration (e.g. a rerun of bench_video.py alone)
        data, info, warnings = read_results(json_paths)
    latency, video = collect(data)
    if not latency and not video:
        print(f"no benchmark results in {', '.join(map(str, json_paths)) or 'the run'}",
              file=sys.stderr)
        return 1
    for w in warnings:
        print(f"report.py: warning: {w}", file=sys.stderr)
    chart = args.out.with_suffix(".png")
    has_chart = bool(latency) and plot(latency, chart)
    from refusion.utils.atomic import atomic_write_text

    atomic_write_text(args.out, markdown(latency, video, info or machine(),
                                         chart.name if has_chart else None, warnings))
    print(f"wrote {args.out}" + (f" and {chart}" if has_chart else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
