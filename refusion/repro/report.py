"""Score a task's test split and write its result page (``docs/results/TASK.md``).

Rows: the trained variants (learned, fixed, decision), the authors' published checkpoint where
``shared/reference`` has it, plain averaging, per-pixel maximum, and the paper's own numbers
(on the paper's test sets, which differ from ours: for scale only). Every model output uses the
fixed [0, 1] -> [0, 255] scale of our runtime (no per-image min-max), rounded to 8 bits as a
saved image would be, and is scored on the luma of the sources with the default conventions
of :mod:`refusion.metrics`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from refusion.metrics import compute_suite
from refusion.metrics._io import read_grey
from refusion.repro.splits import Split
from refusion.utils.atomic import atomic_path, atomic_write_text

TASK_METRICS = {
    "ivif": ("EN", "SD", "SF", "AG", "SCD", "SSIM"),
    "mif": ("EN", "SD", "SF", "AG", "SCD", "SSIM"),
    "mfif": ("EN", "SD", "SF", "VIF", "Q_CB", "Q_NCIE"),
    "meif": ("EN", "SD", "SF", "VIF", "Q_CB", "Q_NCIE"),
}
TASK_NAMES = {"ivif": "infrared-visible", "mif": "medical", "mfif": "multi-focus",
              "meif": "multi-exposure"}

# The paper's own numbers, for scale (their test sets and evaluation, not ours).
PAPER_ROWS: dict[str, dict] = {
    "ivif": {"label": "paper, MSRS (Table 4, learned loss)",
             "values": {"EN": 6.71, "SD": 42.89, "SSIM": 0.51}},
}
PAPER_FIXED = {"ivif": {"label": "paper, MSRS (Table 4, fixed W = V = 1/2)",
                        "values": {"EN": 6.26, "SD": 37.49, "SSIM": 0.37}}}

Fuser = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Scores:
    """Per-image metric values of every method: ``values[method][pair][metric]``."""

    task: str
    metrics: tuple[str, ...]
    values: dict[str, dict[str, dict[str, float]]]
    copies: dict[str, dict[str, int]] = field(default_factory=dict)  # method -> source -> pairs

    def summary(self) -> dict[str, dict[str, tuple[float, float]]]:
        """``{method: {metric: (mean, std)}}`` over the pairs (NaNs left out)."""
        out = {}
        for method, per_pair in self.values.items():
            out[method] = {}
            for m in self.metrics:
                v = np.array([row[m] for row in per_pair.values()], dtype=np.float64)
                v = v[np.isfinite(v)]
                out[method][m] = ((float(v.mean()), float(v.std())) if v.size
                                  else (math.nan, math.nan))
        return out

    def defined(self, method: str, metric: str) -> frozenset[str]:
        """The pairs where ``metric`` of ``method`` is defined (finite)."""
        return frozenset(k for k, row in self.values[method].items()
                         if math.isfinite(row[metric]))


def backend_fuser(weights: str | Path) -> Fuser:
    """Fuse with a checkpoint through ONNX Runtime on the CPU (our fastest CPU backend)."""
    from refusion.engine.registry import create_backend

    backend = create_backend("onnxruntime", str(weights), device="cpu").activate()

    def fuse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return backend.infer(np.stack([a, b])[None].astype(np.float32))[0, 0]

    return fuse


BASELINES: dict[str, Fuser] = {
    "average": lambda a, b: 0.5 * (a + b),
    "maximum": np.maximum,
}


def score(split: Split, methods: dict[str, Fuser], progress: bool = True,
          keep: set[str] | None = None) -> tuple[Scores, dict[str, dict[str, np.ndarray]]]:
    """Fuse and score every test pair with every method.

    Returns the scores and, for the pairs named in ``keep``, the fused 8-bit images
    (``{pair: {method: (H, W) uint8}}``) for the pictures.
    """
    metrics = TASK_METRICS[split.task]
    values: dict[str, dict[str, dict[str, float]]] = {m: {} for m in methods}
    kept: dict[str, dict[str, np.ndarray]] = {}
    pairs = split.test
    if progress:
        from tqdm import tqdm

        pairs = tqdm(pairs, desc=f"scoring {split.task} test pairs", leave=False)
    copies: dict[str, dict[str, int]] = {m: {"I_a": 0, "I_b": 0} for m in methods}
    for pair in pairs:
        a255, b255 = read_grey(pair.a), read_grey(pair.b)
        a, b = (a255 / 255.0).astype(np.float32), (b255 / 255.0).astype(np.float32)
        for name, fuse in methods.items():
            f = np.round(np.clip(fuse(a, b), 0.0, 1.0) * 255.0).astype(np.float64)
            values[name][pair.name] = compute_suite(a255, b255, f, metrics=metrics)
            # a collapsed model (e.g. a saturated decision map) returns a source unchanged
            copies[name]["I_a"] += int(np.array_equal(f, a255))
            copies[name]["I_b"] += int(np.array_equal(f, b255))
            if keep and pair.name in keep:
                kept.setdefault(pair.name, {})[name] = f.astype(np.uint8)
    return Scores(split.task, metrics, values, copies), kept


def collapse_notes(scores: Scores) -> list[str]:
    """One sentence per trained method whose output was a source, unchanged, on some test pairs
    (baselines are exempt: the per-pixel maximum of an under- and an over-exposed image is the
    over-exposed one)."""
    n = len(next(iter(scores.values.values()), {}))
    return [f"'{m}' returned {src} unchanged on {k} of {n} test pairs (a collapsed model; "
            "metrics that compare F with a source, such as SCD, are then undefined)"
            + (f": its row scores {src} itself, so a high mark there is the metrics' "
               "verdict on a copy of one source, not on a fusion." if k == n else ".")
            for m, per_src in scores.copies.items() if m not in BASELINES
            for src, k in per_src.items() if k]


def markdown_table(scores: Scores, extra_rows: list[dict] = ()) -> str:
    """Mean ± std per method and metric; the best mean of each column in bold (all of these
    metrics are higher-is-better), unless the methods' means are over different pairs (a
    metric undefined for one method only): those cells say ``(n=k)`` and the column has no
    bold. ``extra_rows``: ``{"label", "values"}`` rows (no std)."""
    summ = scores.summary()
    same = {m: len({scores.defined(k, m) for k in summ}) == 1 for m in scores.metrics}
    best = {m: max((s[m][0] for s in summ.values() if math.isfinite(s[m][0])), default=None)
            if same[m] else None for m in scores.metrics}
    lines = ["| method | " + " | ".join(scores.metrics) + " |",
             "|---|" + "---:|" * len(scores.metrics)]
    for method, s in summ.items():
        cells = []
        for m in scores.metrics:
            mean, std = s[m]
            text = f"{mean:.4g} ± {std:.2g}" if math.isfinite(mean) else "n/a"
            n = len(scores.defined(method, m))
            if 0 < n < len(scores.values[method]):
                text += f" (n={n})"
            cells.append(f"**{text}**" if best[m] is not None and mean == best[m] else text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    for row in extra_rows:
        cells = [f"{row['values'][m]:g}" if m in row["values"] else "" for m in scores.metrics]
        lines.append(f"| *{row['label']}* | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def read_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Training scalars of a run: ``{column: [(step, value), ...]}`` (empty cells skipped)."""
    out: dict[str, list[tuple[int, float]]] = {}
    path = run_dir / "metrics.csv"
    if not path.exists():
        return out
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            for k, v in row.items():
                if k not in ("step", "epoch", "phase") and v not in ("", None):
                    out.setdefault(k, []).append((int(row["step"]), float(v)))
    return out


def plot_curves(runs: dict[str, Path], path: Path, title: str) -> Path:
    """Both losses and mean W_a, V_a per step of each run, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    panels = (("fusion", "L_f (fusion loss)"), ("reconstruction", "L_r (reconstruction loss)"),
              ("w_a", "mean W_a (solid), V_a (dashed)"))
    for (key, label), ax in zip(panels, axes):
        for name, run in runs.items():
            curves = read_curves(run)
            if key in curves:
                s, v = zip(*curves[key])
                line, = ax.plot(s, _smooth(v), label=name, lw=1.2)
                if key == "w_a" and "v_a" in curves:
                    s2, v2 = zip(*curves["v_a"])
                    ax.plot(s2, _smooth(v2), ls="--", color=line.get_color(), lw=1.2)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, path, title, fontsize=11, dpi=90)


def _save(fig, path: Path, title: str, fontsize: int, dpi: int) -> Path:
    """Title, tight layout, an atomic PNG write, and the figure closed."""
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=fontsize)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


def _smooth(v, k: int = 9) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    if v.size < k:
        return v
    pad = np.pad(v, (k // 2, k // 2), mode="edge")
    return np.convolve(pad, np.ones(k) / k, mode="valid")


def plot_example(a: np.ndarray, b: np.ndarray, fused: dict[str, np.ndarray],
                 maps: dict[str, np.ndarray], path: Path, title: str) -> Path:
    """Sources, fused images and the learnt W_a, V_a maps of one test pair, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tiles = [("I_a", a, "gray"), ("I_b", b, "gray")]
    tiles += [(name, img, "gray") for name, img in fused.items()]
    tiles += [(name, m, "viridis") for name, m in maps.items()]
    h, w = a.shape
    fig, axes = plt.subplots(1, len(tiles), figsize=(2.2 * len(tiles) * w / max(h, w) + 0.5,
                                                     2.2 * h / max(h, w) + 0.6))
    for ax, (label, img, cmap) in zip(np.atleast_1d(axes), tiles):
        vmax = 1.0 if cmap == "viridis" else 255
        ax.imshow(img, cmap=cmap, vmin=0, vmax=vmax)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    return _save(fig, path, title, fontsize=10, dpi=100)


def write_json(scores: Scores, path: Path) -> None:
    """Every per-image value (atomic)."""
    atomic_write_text(path, json.dumps({"task": scores.task, "metrics": list(scores.metrics),
                                        "values": scores.values,
                                        "source_copies": scores.copies}, indent=1) + "\n")
