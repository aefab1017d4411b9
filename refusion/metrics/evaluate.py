"""Scoring folders of fused images: pairing by file stem, worker processes, paper-style tables.

Usable from Python::

    res = evaluate_folders("ir/", "vi/", ["out/ours", "out/cddfuse"], metrics=["EN", "Qabf"])
    print(res.to_markdown()); res.write_json("per_image.json")
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from refusion.errors import UserError
from refusion.imaging import ImageFolder, list_image_folder
from refusion.utils.atomic import atomic_write_text

from ._io import read_grey
from .conventions import METRICS, metric_names, parse_convention_spec


def list_images(folder: str | Path) -> dict[str, Path]:
    """Images in ``folder`` by file stem (any supported format; hidden files are not images).

    Raises:
        UserError: the folder does not exist, or two files share a stem.
    """
    return _listing(Path(folder)).images


def _listing(d: Path) -> ImageFolder:
    return list_image_folder(d).require_unique()


def _listings(a: Path, b: Path, fused: Sequence[Path]
              ) -> tuple[ImageFolder, ImageFolder, list[ImageFolder]]:
    """Images by stem for the two source folders and each fused folder.

    Three single files (or two sources and several fused files) form one triplet, keyed by the
    first source's stem, whatever the files are called.
    """
    paths = [a, b, *fused]
    for p in paths:
        if not p.exists():
            raise UserError(f"no such file or folder: {p}")
    files = [p for p in paths if p.is_file()]
    if not files:
        return _listing(a), _listing(b), [_listing(d) for d in fused]
    if len(files) != len(paths):
        raise UserError(f"{files[0]} is a file: give the sources and the fused images either "
                        "all as folders (paired by file stem) or all as single files")
    return tuple(ImageFolder(p.parent, {a.stem: p}, {}, []) for p in (a, b)) + (
        [ImageFolder(f.parent, {a.stem: f}, {}, []) for f in fused],)


def _method_names(dirs: Sequence[Path]) -> list[str]:
    names = [(d.stem if d.is_file() else d.name) or str(d) for d in dirs]
    if len(set(names)) != len(names):
        names = [str(d) for d in dirs]
    return names


def _score_one(job: tuple) -> tuple[str, str, dict[str, float], list[str]]:
    """Worker: read one triplet and compute the metrics; returns warnings as text."""
    from . import compute_suite

    method, stem, pa, pb, pf, metrics, spec = job
    with warnings.catch_warnings(record=True) as read_notes:
        warnings.simplefilter("always")  # e.g. clipped values, a narrow 16-bit source
        a, b, f = read_grey(pa), read_grey(pb), read_grey(pf)
    if not (a.shape == b.shape == f.shape):
        raise UserError(f"size mismatch for {stem!r}: {pa} {a.shape}, {pb} {b.shape}, "
                        f"{pf} {f.shape}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vals = compute_suite(a, b, f, metrics, spec)
    # metric notes (undefined values) get the method and the fused file; reading notes
    # (clipped values, a narrow 16-bit source) name their file and are kept apart
    return (method, stem, vals, [f"{method}: {pf.name}: {w.message}" for w in caught],
            [str(w.message) for w in read_notes])


@dataclass
class EvalResult:
    """Per-image values and their summary for several methods (fused folders).

    Attributes:
        metrics: metric names (columns), in order.
        conventions: {metric: convention used}.
        methods: {method name: fused folder}.
        values: {method: {stem: {metric: value}}} (NaN where undefined).
        missing: human-readable lines naming unpaired files.
        notes: degenerate-input warnings raised while scoring (undefined values, NaN).
        sources: {"a": source A folder or file, "b": source B} (what was scored against).
        read_notes: what reading the files found (values clipped to 0..255, a 16-bit file
            using a narrow range), once per file.
    """

    metrics: list[str]
    conventions: dict[str, str]
    methods: dict[str, str]
    values: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    read_notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """{method: {metric: {"mean", "std" (population), "n" (non-NaN images)}}}."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for meth in self.methods:
            rows = self.values.get(meth, {})
            out[meth] = {}
            for m in self.metrics:
                v = np.array([rows[s][m] for s in rows], dtype=np.float64)
                v = v[~np.isnan(v)]
                out[meth][m] = {
                    "mean": float(v.mean()) if v.size else math.nan,
                    "std": float(v.std()) if v.size else math.nan,
                    "n": int(v.size),
                }
        return out

    def _scored(self, meth: str, metric: str) -> frozenset[str]:
        """Stems where ``meth`` has a defined (non-NaN) ``metric``."""
        rows = self.values.get(meth, {})
        return frozenset(s for s in rows if not math.isnan(rows[s][metric]))

    def comparable(self, metric: str) -> bool:
        """Whether every method's mean of ``metric`` is over the same images (none missing or
        undefined for one method only): only then is one mean "best"."""
        sets = {self._scored(k, metric) for k in self.methods}
        return len(sets) == 1

    def _best(self, summ, digits: int = 4) -> dict[str, set[str] | None]:
        best: dict[str, set[str] | None] = {}
        for m in self.metrics:
            cands = [(summ[k][m]["mean"], k) for k in self.methods
                     if not math.isnan(summ[k][m]["mean"])]
            if not cands or len(self.methods) < 2 or not self.comparable(m):
                best[m] = None
                continue
            sign = 1 if METRICS[m].higher_is_better else -1
            top = max(cands, key=lambda t: sign * t[0])[0]
            # every method that ties with the best at the printed precision is best
            best[m] = {k for v, k in cands if f"{v:.{digits}f}" == f"{top:.{digits}f}"}
        return best

    def to_markdown(self, digits: int = 4) -> str:
        """A paper-style table: mean ± std per method and metric, best per column in bold.

        A mean over fewer images than the method has (a metric undefined on some, NaN) says
        ``(n=k)``; a column whose methods were scored on different images has no bold cell.
        """
        summ = self.summary()
        best = self._best(summ, digits)
        head = ["Method"] + [f"{m} {'↑' if METRICS[m].higher_is_better else '↓'}"
                             for m in self.metrics]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        partial = False
        for meth in self.methods:
            cells = [meth]
            total = len(self.values.get(meth, {}))
            for m in self.metrics:
                s = summ[meth][m]
                txt = ("n/a" if math.isnan(s["mean"])
                       else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}")
                if 0 < s["n"] < total:
                    txt += f" (n={s['n']})"
                    partial = True
                if best[m] and meth in best[m]:
                    txt = f"**{txt}**"
                cells.append(txt)
            lines.append("| " + " | ".join(cells) + " |")
        conv = ", ".join(f"{m}: {c}" for m, c in self.conventions.items())
        lines += [""]
        if self.sources:
            n = max((len(v) for v in self.values.values()), default=0)
            lines.append(f"Sources: A = {self.sources.get('a')}, B = {self.sources.get('b')}; "
                         f"{n} image pair{'s' if n != 1 else ''} scored.")
        lines.append(f"Conventions: {conv}. Std is the population std over images.")
        unbolded = [m for m in self.metrics if len(self.methods) > 1 and not self.comparable(m)]
        if self._uneven():
            counts = ", ".join(f"{k} {len(self.values.get(k, {}))}" for k in self.methods)
            lines.append(f"Fused images per method: {counts} (the missing ones are listed "
                         "on stderr).")
        if partial:
            lines.append("(n=k): the mean of k images; the metric is undefined (NaN) on the "
                         "others (see the notes on stderr or in the JSON).")
        if unbolded:
            lines.append(f"No best marked for {', '.join(unbolded)}: the methods were not "
                         "scored on the same images (a fused image missing, or the metric "
                         "undefined for one method only).")
        return "\n".join(lines) + "\n"

    def _uneven(self) -> bool:
        """Whether the methods have fused images for different numbers of pairs."""
        return len({len(self.values.get(k, {})) for k in self.methods}) > 1

    def to_csv(self) -> str:
        """One row per method: ``method, fused, a, b, n_images, <metric>_mean, <metric>_std,
        <metric>_n, ..., conventions`` (``n``: images where the metric is defined; an
        undefined mean or std is ``nan``; ``conventions``: ``EN=cddfuse;SF=vifb;...``)."""
        summ = self.summary()
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["method", "fused", "a", "b", "n_images"]
                   + [f"{m}_{k}" for m in self.metrics for k in ("mean", "std", "n")]
                   + ["conventions"])
        conv = ";".join(f"{m}={c}" for m, c in self.conventions.items())
        for meth in self.methods:
            row = [meth, self.methods[meth], self.sources.get("a", ""),
                   self.sources.get("b", ""), len(self.values.get(meth, {}))]
            for m in self.metrics:
                row += [repr(summ[meth][m]["mean"]), repr(summ[meth][m]["std"]),
                        summ[meth][m]["n"]]
            w.writerow(row + [conv])
        return buf.getvalue()

    def to_dict(self) -> dict:
        """Everything, JSON-ready (NaN becomes None)."""
        def clean(x):
            return None if isinstance(x, float) and math.isnan(x) else x

        summ = self.summary()
        return {
            "metrics": self.metrics,
            "conventions": self.conventions,
            "methods": {
                meth: {
                    "fused_dir": self.methods[meth],
                    "summary": {m: {k: clean(v) for k, v in s.items()}
                                for m, s in summ[meth].items()},
                    "per_image": {stem: {m: clean(v) for m, v in vals.items()}
                                  for stem, vals in sorted(self.values.get(meth, {}).items())},
                }
                for meth in self.methods
            },
            "missing": self.missing,
            "notes": self.notes,
            "sources": self.sources,
            "read_notes": self.read_notes,
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def write_json(self, path: str | Path) -> None:
        """Write :meth:`to_json` atomically to ``path``."""
        atomic_write_text(path, self.to_json())

    @classmethod
    def from_json(cls, text: str) -> EvalResult:
        """Rebuild a result from :meth:`to_json` output (round trip)."""
        d = json.loads(text)
        values = {
            meth: {stem: {m: (math.nan if v is None else float(v)) for m, v in vals.items()}
                   for stem, vals in md["per_image"].items()}
            for meth, md in d["methods"].items()
        }
        return cls(metrics=d["metrics"], conventions=d["conventions"],
                   methods={k: v["fused_dir"] for k, v in d["methods"].items()},
                   values=values, missing=d["missing"], notes=d.get("notes", []),
                   sources=d.get("sources", {}), read_notes=d.get("read_notes", []))


def evaluate_folders(a_dir: str | Path, b_dir: str | Path,
                     fused_dirs: str | Path | Sequence[str | Path],
                     metrics: str | Sequence[str] | None = None, convention: str | None = None,
                     workers: int | None = None, progress: bool = False) -> EvalResult:
    """Score every fused folder against the source folders, pairing files by stem.

    Args:
        a_dir, b_dir: source folders (A = infrared/CT/..., B = visible/MRI/...), or two image
            files, in which case ``fused_dirs`` are image files too (one triplet).
        fused_dirs: one or more folders of fused images (one method each), or files.
        metrics: metric names or one comma-separated string (default None: all).
        convention: toolbox tags and/or ``METRIC.name`` items, comma separated.
        workers: worker processes (default: min(4, CPU count); 0 or 1 = in this process).
        progress: show a tqdm progress bar.
    Returns:
        An :class:`EvalResult`; unpaired files are listed in ``.missing`` and skipped.
    Raises:
        UserError: missing folder, unknown metric/convention, unreadable image, size
            mismatch, or nothing to score.
    """
    if isinstance(fused_dirs, (str, Path)):
        fused_dirs = [fused_dirs]
    try:
        # one column per metric, whatever the spelling (EN,en / qabf,Qabf)
        names = metric_names(metrics)
        convs = parse_convention_spec(convention, names)
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(exc.args[0]) from None
    fdirs = [Path(d) for d in fused_dirs]
    seen: dict[Path, Path] = {}
    for d in fdirs:
        key = d.resolve()
        if key in seen:
            raise UserError(f"--fused {d} is given twice (as {seen[key]})")
        seen[key] = d
    fa, fb, ffs = _listings(Path(a_dir), Path(b_dir), fdirs)
    methods = _method_names(fdirs)
    # a broken link is named as such, and its partner is not also called unpaired
    missing = fa.unpaired(fb) + fb.unpaired(fa)
    missing += [lst.broken_text(s) for lst in (fa, fb) for s in sorted(lst.broken)]
    la, lb = fa.images, fb.images
    common = sorted(set(la) & set(lb))
    jobs = []
    for meth, d, ff in zip(methods, fdirs, ffs):
        lf = ff.images
        missing += [ff.broken_text(s) if s in ff.broken else f"{d}: no fused image for {s!r}"
                    for s in common if s not in lf]
        missing += [f"{lf[s]} has no source pair" for s in sorted(set(lf) - set(common))]
        jobs += [(meth, s, la[s], lb[s], lf[s], names, convention) for s in common if s in lf]
    if not jobs:
        raise UserError(f"no image triplets to score (no common file stems in {a_dir}, "
                        f"{b_dir} and the fused folders)")
    res = EvalResult(metrics=names, conventions=convs,
                     methods={m: str(d) for m, d in zip(methods, fdirs)},
                     values={m: {} for m in methods}, missing=missing,
                     sources={"a": str(a_dir), "b": str(b_dir)})
    nproc = min(4, os.cpu_count() or 1) if workers is None else workers
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="refusion-eval", unit="img", disable=not progress)
    try:
        if nproc <= 1 or len(jobs) == 1:
            for job in jobs:
                _collect(res, _score_one(job))
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=nproc) as pool:
                futs = [pool.submit(_score_one, j) for j in jobs]
                try:
                    for fut in as_completed(futs):
                        _collect(res, fut.result())
                        bar.update()
                except BaseException:
                    pool.shutdown(cancel_futures=True)
                    raise
    finally:
        bar.close()
    return res


def _collect(res: EvalResult, out: tuple) -> None:
    meth, stem, vals, notes, read_notes = out
    res.values[meth][stem] = vals
    res.notes.extend(notes)
    # a source is read once per method: say what it needs once
    res.read_notes[:] = list(dict.fromkeys([*res.read_notes, *read_notes]))
