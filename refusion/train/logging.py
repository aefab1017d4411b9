"""Run-folder outputs: scalars to CSV (always) and TensorBoard (when installed), PNG panels.

``metrics.csv`` has one row per logged step with a fixed header (empty cells where a phase has
no such value), so it opens directly in a spreadsheet or pandas. On resume the rows after the
resumed step are dropped first, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import cv2
import numpy as np
from torch import Tensor

from refusion.utils.atomic import atomic_path, atomic_write_text

COLUMNS = (
    "step", "epoch", "phase", "outer", "inner_fusion", "inner_reconstruction", "fusion",
    "fusion_int", "fusion_grad", "reconstruction", "w_a", "v_a",
)


class ScalarLog:
    """CSV (and optionally TensorBoard) scalar writer for the main process."""

    def __init__(self, run_dir: Path, tensorboard: bool, resume_step: int | None = None) -> None:
        self.path = run_dir / "metrics.csv"
        self.val_path = run_dir / "validation.csv"
        if resume_step is None:  # a new run: nothing of an earlier attempt in this folder
            for p in (self.path, self.val_path):
                p.unlink(missing_ok=True)
        else:
            # a row of metrics.csv is numbered by the step it logs (0-based), so the rows a
            # checkpoint at step S covers are those below S; validation.csv rows are
            # numbered by the step count when they were taken, S included
            _truncate_after(self.path, resume_step - 1)
            _truncate_after(self.val_path, resume_step)
        self._fh = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        self._w = csv.DictWriter(self._fh, fieldnames=COLUMNS, extrasaction="ignore",
                                 lineterminator="\n")  # as validation.csv, and as kept on resume
        if self._fh.tell() == 0:
            self._w.writeheader()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                print("refusion-train: note: tensorboard is not installed, scalars go to "
                      "metrics.csv only (pip install tensorboard)", file=sys.stderr)

    def scalars(self, step: int, row: dict) -> None:
        self._w.writerow({"step": step, **{k: _fmt(v) for k, v in row.items()}})
        self._fh.flush()
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, float | int) and k not in ("epoch",):
                    self.tb.add_scalar(f"train/{k}", v, step)

    def validation(self, step: int, epoch: int, values: dict[str, float]) -> None:
        row = {"step": step, "epoch": epoch, **{k: _fmt(v) for k, v in values.items()}}
        header = list(row)
        old: list[dict] | None = None  # rows to rewrite under a merged header
        if self.val_path.exists() and self.val_path.stat().st_size:
            with open(self.val_path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                before = list(reader.fieldnames or [])
                rows = list(reader)
            if before != header:
                # val.metrics changed on resume: one header for all rows, blanks elsewhere
                # (rewritten even when no row is left, so that the header always fits)
                header = before + [k for k in header if k not in before]
                old = rows
        if old is not None:
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
            w.writeheader()
            w.writerows([*old, row])
            atomic_write_text(self.val_path, buf.getvalue())
        else:
            new = not self.val_path.exists() or self.val_path.stat().st_size == 0
            with open(self.val_path, "a", newline="", encoding="utf-8") as fh:
                w = csv.DictWriter(fh, fieldnames=header, lineterminator="\n")
                if new:
                    w.writeheader()
                w.writerow(row)
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"val/{k}", v, step)

    def close(self) -> None:
        self._fh.close()
        if self.tb is not None:
            self.tb.close()


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def _truncate_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if not lines:
        return
    keep = [lines[0]]
    for line in lines[1:]:
        head = line.split(",", 1)[0]
        if head.isdigit() and int(head) <= step:
            keep.append(line)
    atomic_write_text(path, "".join(keep))


def _tile(img: Tensor, label: str, scale: int) -> np.ndarray:
    x = (img.detach().float().clamp(0, 1).cpu().numpy()[0] * 255.0).round().astype(np.uint8)
    x = cv2.resize(x, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    x = cv2.cvtColor(x, cv2.COLOR_GRAY2BGR)
    bar = np.zeros((18, x.shape[1], 3), np.uint8)
    cv2.putText(bar, label, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                cv2.LINE_AA)
    return np.vstack([bar, x])


def write_panel(path: Path, a: Tensor, b: Tensor, fused: Tensor, rec_a: Tensor, rec_b: Tensor,
                w_a: Tensor, v_a: Tensor) -> Path:
    """One PNG row: I_a, I_b, I_f, R_a, R_b, W_a, V_a of the first sample, each ``(1, h, w)``
    or ``(B, 1, h, w)`` in [0, 1] (W_a, V_a shown on the same 0..1 scale, white = source a)."""
    first = [t[0] if t.dim() == 4 else t for t in (a, b, fused, rec_a, rec_b, w_a, v_a)]
    scale = max(1, 128 // max(1, first[0].shape[-1]))
    labels = ("I_a", "I_b", "fused", "R_a", "R_b", "W_a", "V_a")
    tiles = [_tile(t, lab, scale) for t, lab in zip(first, labels)]
    gap = np.full((tiles[0].shape[0], 4, 3), 64, np.uint8)
    row = tiles[0]
    for t in tiles[1:]:
        row = np.hstack([row, gap, t])
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), row):
            raise OSError(f"cannot write {path}")
    return path
