"""Threaded video fusion: decode -> infer -> encode, joined by bounded queues.

Three threads overlap reading and colour conversion, the network, and composing and encoding,
so end-to-end throughput approaches the network's own. Queues are bounded (memory stays flat
and a slow stage pushes back on the reader); a live camera never waits: when the queue is
full its oldest frame is dropped and counted. A camera run is re-timed onto the output's
constant frame rate (:mod:`refusion.engine.retime`), so the file plays in real time.

Output: written to a hidden temp file next to ``output`` and renamed onto it at the end, so a
crash never leaves a half file under the final name. Ctrl-C stops reading, lets the frames in
flight finish (a second Ctrl-C skips them), releases the writer (the MP4 is then complete and
playable) and renames it (onto ``<name>.incomplete.mp4`` instead when ``output`` holds an
earlier run's video, which a stopped run never replaces), then re-raises
``KeyboardInterrupt``. When a stage fails (a backend
error, an unreadable frame), reading stops, the frames already read (decode failure) or fused
(inference failure) are still encoded and kept, playable, as ``<name>.incomplete.mp4`` beside
``output`` (:attr:`PipelineStats.salvaged`; ``.incomplete-2.mp4`` and on when that is taken),
and the error is raised; a stage that fails never leaves the others waiting on a queue.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from refusion.engine.base import Backend
from refusion.engine.preprocess import FramePreprocessor, stack_inputs
from refusion.engine.retime import ConstantRate
from refusion.engine.video import Aligner, PairReader

from refusion.errors import UserError
from refusion.imaging import panel

_END = object()
#: seconds a failed or twice-interrupted run waits for a reader stuck in a read
ABORT_GRACE_S = 5.0


@dataclass
class PipelineStats:
    """Counts and time per stage (seconds, summed over frames)."""

    frames: int = 0  # fused frames written (a frame repeated by re-timing counts once)
    read: int = 0  # pairs read
    dropped: int = 0  # infrared frames skipped by pairing + live frames dropped when busy
    live_dropped: int = 0  # of which: camera frames dropped because the pipeline was busy
    retimed: bool = False  # held on the output's constant-rate timeline (a camera run)
    repeated: int = 0  # output frames repeating the one before (re-timing a camera run)
    merged: int = 0  # fused frames overtaken by a newer one in the same output slot
    decode_s: float = 0.0  # reading, pairing, alignment, colour conversion
    infer_s: float = 0.0
    encode_s: float = 0.0  # composing the output frame(s) and encoding
    wall_s: float = 0.0
    interrupted: bool = False
    ended: str = ""
    salvaged: str = ""  # where the frames of a failed run went (empty when none)
    output: str = ""  # where the fused video went (empty when no frame was written)
    warnings: list[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items()}
        d["fps"] = self.fps
        return d

    def summary(self) -> str:
        per = (lambda s: f"{1e3 * s / self.frames:.1f} ms") if self.frames else (lambda s: "-")
        return (f"{self.frames} frames in {self.wall_s:.2f} s ({self.fps:.2f} fps), "
                f"{self.dropped} dropped"
                + (f" ({self.live_dropped} while busy)" if self.live_dropped else "")
                + (f", {self.repeated} repeated and {self.merged} merged to play in real time"
                   if self.repeated or self.merged else "")
                + f"; per frame: decode {per(self.decode_s)}, "
                f"infer {per(self.infer_s)}, encode {per(self.encode_s)}"
                + (" [interrupted]" if self.interrupted else ""))


class _Writer:
    """MP4 writer into a temp file that becomes ``path`` on :meth:`finish`."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps = path, fps
        self.tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix or '.mp4'}")
        self._vw: cv2.VideoWriter | None = None
        self.padded = False
        self.written = 0
        self.unreadable = False  # the encoder's file could not be read back (disk full?)
        self.dest: Path | None = None  # where finish() put the file

    def write(self, frame: np.ndarray) -> None:
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        h, w = frame.shape[:2]
        if h % 2 or w % 2:
            # the encoder drops an odd last row or column; repeat it instead, so that no
            # fused pixel is lost (the file is then one pixel larger there)
            frame = cv2.copyMakeBorder(frame, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)
            self.padded = True
        if self._vw is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            h, w = frame.shape[:2]
            self._vw = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"),
                                       self.fps, (w, h))
            if not self._vw.isOpened():
                raise UserError(f"cannot write a video to {self.path} (mp4v codec, {w}x{h})")
        self._vw.write(frame)
        self.written += 1

    @property
    def salvage_path(self) -> Path:
        """Where :meth:`finish` would put frames that must not take the final name now:
        ``<name>.incomplete.mp4``, or ``<name>.incomplete-2.mp4`` and so on when taken (an
        earlier run's salvage is the user's too)."""
        suffix = self.path.suffix or ".mp4"
        path, n = self.path.with_name(f"{self.path.stem}.incomplete{suffix}"), 2
        while path.exists():
            path, n = self.path.with_name(f"{self.path.stem}.incomplete-{n}{suffix}"), n + 1
        return path

    def finish(self, keep: bool, partial: bool = False) -> Path | None:
        """Release, then move the temp file onto the final name when ``keep``, else onto
        :attr:`salvage_path` (a failed run's frames are the user's too); the path or None.

        ``partial`` (an interrupted run): the file takes the final name only where that name
        is free, so a stopped run never replaces a finished video of an earlier run.
        """
        if self._vw is None:
            return None
        self._vw.release()
        self._vw = None
        if keep and not _readable_video(self.tmp):
            # OpenCV's writer fails silently (a full disk leaves an MP4 without its index):
            # such a file must not take the final name as if it were the video
            keep, self.unreadable = False, True
        if keep and partial and self.path.exists():
            keep = False
        dest = self.path if keep else self.salvage_path
        os.replace(self.tmp, dest)
        self.dest = dest
        return dest


#: OpenCV's reader as imported (tests replace ``cv2.VideoCapture`` with fake cameras; the
#: written file is always checked with the real one)
_VideoCapture = cv2.VideoCapture


def _readable_video(path: Path) -> bool:
    """Whether an MP4 just written opens and reports frames (its index was written)."""
    from refusion.engine.video import _quiet_stderr

    with _quiet_stderr():  # FFmpeg's "moov atom not found" would precede our one line
        cap = _VideoCapture(str(path))
        try:
            return cap.isOpened() and cap.get(cv2.CAP_PROP_FRAME_COUNT) > 0
        finally:
            cap.release()


class VideoPipeline:
    """Fuse a stream of frame pairs into an MP4.

    Args:
        reader: frame pairs (:class:`refusion.engine.video.PairReader`).
        backend: an active or inactive :class:`Backend`.
        output: final ``.mp4`` path.
        aligner: brings infrared frames onto the visible grid (default: resize).
        preprocessor: shared pre/post-processing (default: fixed scaling, colour).
        preview: optional second ``.mp4`` with IR | VIS | fused tiles.
        max_frames: stop after this many output frames.
        batch_size: frames per inference call (latency grows with it).
        queue_size: capacity of each queue.
        progress: show a tqdm bar with the live frame rate.
        retime: hold each frame on the output's constant-rate timeline from its timestamp
            until the next frame's (:class:`refusion.engine.retime.ConstantRate`), so that a
            camera run that dropped frames plays in real time; default: for cameras only (a
            file's frames are evenly stamped already). False writes every fused frame once.
    """

    def __init__(self, reader: PairReader, backend: Backend, output: str | os.PathLike, *,
                 aligner: Aligner | None = None, preprocessor: FramePreprocessor | None = None,
                 preview: str | os.PathLike | None = None, max_frames: int | None = None,
                 batch_size: int = 1, queue_size: int = 4, progress: bool = True,
                 retime: bool | None = None) -> None:
        self.reader, self.backend = reader, backend
        self.aligner = aligner or Aligner(reader.vis_size)
        self.pre = preprocessor or FramePreprocessor()
        self.writer = _Writer(Path(output), reader.fps)
        self.preview = _Writer(Path(preview), reader.fps) if preview else None
        self.max_frames = max_frames
        live = reader.live if retime is None else retime
        self.retime = ConstantRate(reader.fps) if live else None
        self.batch_size = max(1, batch_size)
        self.q_in: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self.q_out: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self.stop_reading = threading.Event()
        self.abort = threading.Event()
        self.stats = PipelineStats(warnings=list(reader.stats.warnings),
                                   retimed=self.retime is not None)
        self._errors: list[BaseException] = []
        self.progress = progress

    # --- stages ---------------------------------------------------------------------------
    def _get(self, q: queue.Queue) -> Any:
        """Next item, or the end marker once aborted: a consumer must not wait forever on a
        producer that failed (a failed stage's end marker is not delivered after an abort)."""
        while True:
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                if self.abort.is_set():
                    return _END

    def _put(self, q: queue.Queue, item: Any, live: bool = False) -> bool:
        """Put unless aborted; a live source drops its oldest frame instead of waiting."""
        while not self.abort.is_set():
            if live and item is not _END:  # never block a camera: make room at once
                try:
                    q.put_nowait(item)
                    return True
                except queue.Full:
                    try:
                        q.get_nowait()
                        self.stats.dropped += 1
                        self.stats.live_dropped += 1
                    except queue.Empty:
                        pass
                    continue
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def _enough(self, n: int) -> bool:
        """Whether ``max_frames`` output frames are read: a file's pairs all reach the output,
        a camera's may be dropped when the pipeline is busy or merged by re-timing, so for a
        camera only what the encoder kept counts (it discards the surplus still in flight)."""
        assert self.max_frames is not None
        if not self.reader.live:
            return n >= self.max_frames
        return self.stats.frames >= self.max_frames

    def _decode(self) -> None:
        try:
            n = 0
            while not self.stop_reading.is_set():
                if self.max_frames is not None and self._enough(n):
                    break
                t0 = time.perf_counter()
                got = self.reader.read()
                if got is None:
                    break
                ir, vis, t = got
                ir = self.aligner(ir)
                pair = self.pre.pre(ir, vis)
                self.stats.decode_s += time.perf_counter() - t0
                n += 1
                if not self._put(self.q_in, (ir, vis, pair, t), live=self.reader.live):
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            # no abort: the frames already read still go through, as on Ctrl-C, and end up
            # in the kept .incomplete file; the end marker below stops the other stages
            self._errors.append(exc)
        finally:
            self._put(self.q_in, _END)

    def _infer(self) -> None:
        pending: Any = None  # a frame of another size (or the end), held for the next batch
        try:
            while not self.abort.is_set():
                item = pending if pending is not None else self._get(self.q_in)
                pending = None
                if item is _END:
                    break
                items = [item]
                # a file's frames wait for a full batch (throughput is what batching is for,
                # and a backend compiled for the batch would otherwise pad short ones with
                # copies; the queue's size no longer caps the batch); a camera's batch takes
                # what is waiting, so that batching never holds a frame back (a backend
                # compiled for the batch pads a short camera batch instead)
                wait = not self.reader.live
                while len(items) < self.batch_size:
                    if wait:
                        nxt = self._get(self.q_in)
                    else:
                        try:
                            nxt = self.q_in.get_nowait()
                        except queue.Empty:
                            break
                    if nxt is _END or nxt[2].a.shape != item[2].a.shape:
                        pending = nxt
                        break
                    items.append(nxt)
                t0 = time.perf_counter()
                batch = stack_inputs([it[2] for it in items])
                if self.backend.compiles_per_shape and len(items) < self.batch_size:
                    # a short batch would compile (or capture a CUDA graph) mid-stream: pad it
                    # to the warmed-up size with copies of its last frame and drop those
                    extra = np.repeat(batch[-1:], self.batch_size - len(items), axis=0)
                    batch = np.concatenate([batch, extra])
                fused = self.backend.infer(batch)[: len(items)]
                self.stats.infer_s += time.perf_counter() - t0
                for it, f in zip(items, fused):
                    if not self._put(self.q_out, (*it, f[0])):
                        return
        except BaseException as exc:  # noqa: BLE001
            # no abort: the frames already fused are still encoded (and kept); reading stops,
            # and what the decoder still sends is discarded so that it never blocks
            self._errors.append(exc)
            self.stop_reading.set()
            if pending is not _END:
                while not self.abort.is_set() and self._get(self.q_in) is not _END:
                    pass
        finally:
            self._put(self.q_out, _END)

    def _encode(self) -> None:
        try:
            while True:
                item = self._get(self.q_out)
                if item is _END or self.abort.is_set():
                    break
                if self.max_frames is not None and self.stats.frames >= self.max_frames:
                    continue  # a camera's surplus in flight: consumed, so no stage blocks
                ir, vis, pair, t, fused = item
                t0 = time.perf_counter()
                out = self.pre.post(fused, pair)
                # a 16-bit infrared tile shows the smoothed mapping the network saw, not
                # per-frame percentiles (which would flicker where the output does not)
                tile = None if self.preview is None else panel(
                    pair.a * 255.0 if ir.dtype == np.uint16 else ir, vis, out)
                if self.retime is None:
                    self._write(out, tile, 1)
                    self.stats.frames += 1
                else:
                    merged = self.retime.merged
                    for (o, p), n in self.retime.push((out, tile), t):
                        self._write(o, p, n)
                    self.stats.frames += self.retime.merged == merged  # else one replaced
                self.stats.encode_s += time.perf_counter() - t0
            if self.retime is not None:
                for (o, p), n in self.retime.flush():
                    self._write(o, p, n)
        except BaseException as exc:  # noqa: BLE001
            self._errors.append(exc)
            self.abort.set()
        finally:
            if self.retime is not None:
                self.stats.repeated, self.stats.merged = self.retime.repeated, self.retime.merged

    def _write(self, out: np.ndarray, tile: np.ndarray | None, repeats: int) -> None:
        for _ in range(repeats):
            self.writer.write(out)
            if tile is not None:
                self.preview.write(tile)  # type: ignore[union-attr]

    # --- driver ---------------------------------------------------------------------------
    def run(self) -> PipelineStats:
        """Run to the end of the input (or ``max_frames``); returns the statistics.

        Raises:
            KeyboardInterrupt: after the output was finalised, when interrupted.
        """
        from tqdm import tqdm

        self.backend.activate()
        if self.backend.compiles_per_shape:
            # compile / capture before the clock and the queues start, not on the first frame
            w, h = self.reader.vis_size
            if self.progress:
                print(f"compiling {self.backend.name} for {w}x{h} frames (batch "
                      f"{self.batch_size})...", file=sys.stderr)
            try:
                self.backend.warmup((self.batch_size, 2, h, w))
            except BaseException:  # Ctrl-C or a failure before any frame: nothing to keep
                self.reader.release()
                raise
        total = self.reader.frame_count
        if self.max_frames is not None:
            total = self.max_frames if total < 0 else min(total, self.max_frames)
        stages = (self._decode, self._infer, self._encode)
        # Own "finished" flags instead of Thread.is_alive()/join(): a KeyboardInterrupt that
        # lands inside join() can leave a running thread reported as stopped (CPython
        # gh-90882), and the writer must never be released while the encoder still writes.
        finished = [threading.Event() for _ in stages]

        def runner(stage: Any, flag: threading.Event) -> None:
            try:
                stage()
            finally:
                flag.set()

        threads = [threading.Thread(target=runner, args=(f, e), daemon=True,
                                    name=f"refusion-{f.__name__[1:]}")
                   for f, e in zip(stages, finished)]
        t_start = time.perf_counter()
        bar = tqdm(total=total if total > 0 else None, unit="frame", desc="fuse",
                   file=sys.stderr, disable=not self.progress, dynamic_ncols=True)
        interrupts = 0
        shown = 0
        try:
            for t in threads:
                t.start()
            aborted_at: float | None = None
            while True:
                try:
                    while not all(e.is_set() for e in finished):
                        time.sleep(0.1)
                        if self.stats.frames > shown:
                            bar.update(self.stats.frames - shown)
                            shown = self.stats.frames
                        if self.abort.is_set() and finished[2].is_set():
                            # the writers are the encoder's alone: once it is done they can be
                            # finalised; a reader stuck in a camera read gets a few seconds
                            aborted_at = aborted_at or time.perf_counter()
                            if time.perf_counter() - aborted_at > ABORT_GRACE_S:
                                break
                    break
                except KeyboardInterrupt:
                    interrupts += 1
                    self.stats.interrupted = True
                    self.stop_reading.set()
                    if interrupts > 1:  # second Ctrl-C: skip the frames still in flight
                        self.abort.set()
        finally:
            encoding = not finished[2].is_set()
            failed = bool(self._errors) or not all(e.is_set() for e in finished)
            bar.update(self.stats.frames - shown)
            bar.close()
            self.stats.wall_s = time.perf_counter() - t_start
            self.stats.read = self.reader.stats.pairs
            self.stats.dropped += self.reader.stats.dropped
            self.stats.ended = self.reader.stats.ended
            if self.writer.padded:
                self.stats.warnings.append(
                    f"{self.writer.path}: odd frame size, padded by one pixel to an even size "
                    "(video encoders need even sizes)")
            if not encoding:  # never release a writer the encoder may still be writing to
                for w in (self.writer, self.preview):
                    if w is not None:
                        done = w.finish(keep=not failed, partial=self.stats.interrupted)
                        if done is not None and w is self.writer:
                            self.stats.output = str(done)
                            if failed:
                                self.stats.salvaged = str(done)
            if finished[0].is_set():  # a decoder still inside a read keeps its capture
                self.reader.release()
        if self._errors:
            raise self._errors[0]
        if self.preview is not None and self.preview.unreadable:
            # the fused video is what the run is for; a lost preview is worth a warning
            self.stats.warnings.append(
                f"{self.preview.path}: the preview cannot be read back (is the disk full?); "
                f"its bytes are in {self.preview.dest}")
        if self.writer.unreadable:
            self.stats.salvaged = str(self.writer.dest)
            raise UserError(f"{self.writer.path}: the video written cannot be read back (is "
                            f"the disk full?); its bytes are in {self.writer.dest}")
        if self.stats.interrupted:
            raise KeyboardInterrupt
        return self.stats
