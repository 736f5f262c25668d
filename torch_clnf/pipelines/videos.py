"""Many videos in, one OpenFace-style CSV per video out: ``track_videos``.

Up to ``streams`` videos advance in lockstep, one frame each per step, their faces fitted as one
batch (see :class:`Tracker`); when a video ends the next one takes its stream. Every frame gets
a CSV row as soon as its step finishes. Damage stays local: an unreadable file, an undecodable
frame or a frame without a face is a row with ``success = 0`` (or, for a file that cannot be
opened, no CSV) and a line in that video's summary; an error while fitting one video's frame
is retried for that video alone and, if it persists, ends that video only.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import cv2

from ..landmark_model import FitResult, LandmarkModel
from ..output import VideoCSV, draw_landmarks
from .frames import Frame, FrameReader
from .outputs import output_stems
from .tracker import FrameFit, Tracker, TrackingConfig, blend

class Event(Protocol):
    """What :func:`track_videos` needs of a stop signal (``threading.Event`` or ``multiprocessing.Event``)."""

    def is_set(self) -> bool: ...


MAX_ERRORS = 10          # frames in a row that fail to fit before a video is given up
CSV_END, DRAWING_END = ".csv", "_landmarks.avi"     # a video's outputs: its output stem + these


@dataclass
class VideoSummary:
    """What happened to one video.

    Attributes:
        source: the video file or image folder.
        csv: the CSV written (None when the source could not be read at all).
        frames: rows written; tracked: frames with a successful fit; detections: frames that
            ran the face detector.
        broken: frames that could not be decoded.
        problems: what went wrong, in words (empty when nothing did).
        seconds: wall-clock time from the first to the last frame of this video.
    """

    source: Path
    csv: Path | None = None
    frames: int = 0
    tracked: int = 0
    detections: int = 0
    broken: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        """One line for a run's report."""
        state = "; ".join(self.problems) if self.problems else "ok"
        rate = self.frames / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.source}: {self.frames} frames, {self.tracked} with a face ({self.detections} detections, "
                f"{self.broken} undecodable), {rate:.1f} frames/s — {state}")


class _Stream:
    """One video being tracked: its reader, its CSV, its summary."""

    def __init__(self, source: Path, output: Path, draw: bool, model: LandmarkModel) -> None:
        self.summary = VideoSummary(source)
        self.reader = FrameReader(source)
        self.frames = iter(self.reader)
        self.csv: VideoCSV | None = None
        self.writer: cv2.VideoWriter | None = None
        self.started = time.perf_counter()
        self.failed = False
        self.errors = 0                                     # frames in a row that could not be fitted
        self.pending: list[tuple[Frame, list[FrameFit]]] = []
        self.last_fit: dict[int, FitResult] = {}
        self.draw_path: Path | None = None
        if not self.reader.readable:
            return
        pdm = model.fitter.pdm
        self.csv = VideoCSV(output.with_name(output.name + CSV_END), pdm.num_points, pdm.num_modes)
        self.summary.csv = self.csv.path
        self.draw_path = output.with_name(output.name + DRAWING_END) if draw else None

    def next(self) -> Frame | None:
        if self.failed:
            return None
        return next(self.frames, None)

    def record(self, frame: Frame, faces: list[FrameFit] | None) -> None:
        """Write this frame's rows, or hold them until the next fit when a face's fit was skipped."""
        if faces and any(face.skipped for face in faces):
            self.pending.append((frame, faces))
            return
        fitted = {face.face_id: face.result for face in faces or [] if face.result is not None}
        current = fitted if frame.image is not None else {}
        self._flush(current)
        self._write(frame, faces, [face.result for face in faces or []])
        self.last_fit.update(current)

    def _flush(self, current: dict[int, FitResult]) -> None:
        """Write the held frames; a skipped face blended between its last fit and its fit in
        ``current`` (held where it has none)."""
        count = len(self.pending)
        for j, (frame, faces) in enumerate(self.pending):
            results = []
            for face in faces:
                ends = face.skipped and face.face_id in self.last_fit and face.face_id in current
                results.append(blend(self.last_fit[face.face_id], current[face.face_id], (j + 1) / (count + 1))
                               if ends else face.result)
            self._write(frame, faces, results)
        self.pending.clear()

    def _write(self, frame: Frame, faces: list[FrameFit] | None, results: list[FitResult | None]) -> None:
        """One row per face (one row with success 0 when the frame has none or is broken)."""
        summary = self.summary
        rows = [(face.face_id, result) for face, result in zip(faces or [], results) if result is not None]
        if frame.image is None:
            summary.broken += 1
            rows = []
        if any(face.detected for face in faces or []):
            summary.detections += 1
        if any(bool(result.success[0]) for _, result in rows):
            summary.tracked += 1
        if self.csv is not None:
            for face_id, result in rows or [(0, None)]:
                self.csv.write(frame.index, frame.timestamp, face_id, result)
        summary.frames += 1
        if self.draw_path is not None and frame.image is not None:
            if self.writer is None:
                height, width = frame.image.shape[:2]
                self.writer = cv2.VideoWriter(str(self.draw_path), cv2.VideoWriter_fourcc(*"MJPG"), self.reader.fps,
                                              (width, height))
            drawn = draw_landmarks(frame.image, FitResult.cat([r for _, r in rows]), 0) if rows else frame.image
            self.writer.write(drawn)

    def close(self) -> VideoSummary:
        self._flush({})
        self.reader.close()
        if self.csv is not None:
            self.csv.close()
        if self.writer is not None:
            self.writer.release()
        self.summary.problems[:0] = self.reader.problems
        self.summary.seconds = time.perf_counter() - self.started
        if self.summary.broken:
            self.summary.problems.append(f"{self.summary.broken} frame(s) could not be decoded")
        return self.summary


def track_videos(sources: Sequence[str | Path], model: LandmarkModel, out_dir: str | Path | None = None,
                 streams: int = 8, tracking: TrackingConfig | None = None, draw: bool = False,
                 progress: bool | Callable[[int], None] = True, stop: Event | None = None,
                 outputs: Sequence[Path] | None = None) -> list[VideoSummary]:
    """Track the face in each video and write ``<out_dir>/<video name>.csv`` for each.

    Args:
        sources: video files or image folders.
        model: from :func:`torch_clnf.load_model` (with its detector and validator).
        out_dir: where CSVs (and drawings) go, the sources' relative paths mirrored under it so
            that two videos of the same name do not share a CSV (:func:`output_stems`); default
            beside each video.
        streams: videos advanced in lockstep (one batch of faces per step).
        tracking: when to re-detect (OpenFace's defaults).
        draw: also write ``<name>_landmarks.avi`` with the landmarks drawn.
        progress: a tqdm bar on stderr (frames, frames/s), or a callable given the frames of each step.
        stop: an event (``threading.Event``, ``multiprocessing.Event``) that ends the run after the
            current frames: every video's rows so far stay written, and its summary says where it stopped.
        outputs: each source's output path without its ends (default :func:`output_stems`).
    Returns:
        one :class:`VideoSummary` per source, in the order given.
    Raises:
        ValueError: before any work, where outputs would overwrite each other or a source.
    """
    pending = [Path(s) for s in sources]
    outputs = list(outputs) if outputs is not None else output_stems(pending, out_dir, output_ends(draw))
    summaries: dict[int, VideoSummary] = {}
    tracker = Tracker(model, max(1, min(streams, len(pending))), tracking)
    slots: list[tuple[int, _Stream] | None] = [None] * len(tracker.tracks)
    order = iter(range(len(pending)))
    bar = progress_bar(progress, sum(FrameReader.count(s) for s in pending) if progress is True else 0)

    def refill(slot: int) -> Frame | None:
        """The next frame of the video in ``slot``; when that video is done, the next video's first frame."""
        while True:
            current = slots[slot]
            if current is not None:
                frame = current[1].next()
                if frame is not None:
                    return frame
                summaries[current[0]] = current[1].close()
                slots[slot] = None
            number = next(order, None)
            if number is None:
                return None
            slots[slot] = (number, _Stream(pending[number], outputs[number], draw, model))
            tracker.reset(slot)

    try:
        while True:
            if stop is not None and stop.is_set():
                _interrupt(slots, summaries, order, pending)
                break
            frames = [refill(slot) for slot in range(len(slots))]
            if all(f is None for f in frames):
                break
            fits = _step(tracker, frames, slots)
            for slot, frame in enumerate(frames):
                if frame is not None and slots[slot] is not None:
                    slots[slot][1].record(frame, fits[slot])
            done = sum(f is not None for f in frames)
            if callable(progress) and progress is not True:
                progress(done)
            elif bar is not None:
                bar.update(done)
    finally:
        for slot in slots:
            if slot is not None:
                summaries[slot[0]] = slot[1].close()
        if bar is not None:
            bar.close()
    return [summaries[k] for k in range(len(pending))]


def output_ends(draw: bool) -> tuple[str, ...]:
    """The ends of a video's output names (:data:`CSV_END`, and :data:`DRAWING_END` with ``draw``)."""
    return (CSV_END, DRAWING_END) if draw else (CSV_END,)


def _interrupt(slots: list, summaries: dict[int, VideoSummary], order, pending: list[Path]) -> None:
    """End a run that was asked to stop: the videos under way keep their rows so far, the ones
    not started get a summary that says so."""
    for k, slot in enumerate(slots):
        if slot is not None:
            number, stream = slot
            summary = summaries[number] = stream.close()
            summary.problems.append(f"interrupted after {summary.frames} frames (their rows are written)")
            slots[k] = None
    for number in order:
        summaries[number] = VideoSummary(pending[number], problems=["interrupted before it started"])


def _step(tracker: Tracker, frames: list[Frame | None], slots: list) -> list[list[FrameFit] | None]:
    """One lockstep. If it raises, the streams are stepped again one by one from where they were:
    a frame that fails alone gets no fit (its row says success 0) and is reported; a video whose
    frames keep failing (``MAX_ERRORS`` in a row) is ended, and the others go on."""
    images = [f.image if f is not None else None for f in frames]
    before = tracker.snapshot()
    try:
        fits = tracker.step(images)
    except Exception:                                      # find the stream at fault; the others go on
        tracker.restore(before)
    else:
        for slot in slots:
            if slot is not None:
                slot[1].errors = 0
        return fits
    fits: list[list[FrameFit] | None] = [None] * len(frames)
    for slot, image in enumerate(images):
        if image is None:
            continue
        alone: list = [None] * len(images)
        alone[slot] = image
        stream = slots[slot][1]
        try:
            fits[slot] = tracker.step(alone)[slot]
            stream.errors = 0
        except Exception as err:
            tracker.restore(before, slot)
            stream.errors += 1
            message = f"{type(err).__name__}: {err}"
            stream.summary.problems.append(f"frame {frames[slot].index + 1} could not be fitted: {message}")
            if stream.errors >= MAX_ERRORS:
                stream.summary.problems.append(f"stopped at frame {frames[slot].index + 1} after {MAX_ERRORS} "
                                               "failed frames in a row")
                stream.failed = True
    return fits


def progress_bar(progress, total: int):
    """A tqdm bar of ``total`` frames on stderr when ``progress`` is True, else None."""
    if progress is not True:
        return None
    from tqdm import tqdm
    return tqdm(total=total or None, unit="frame", desc="tracking", dynamic_ncols=True)
