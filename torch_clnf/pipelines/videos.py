"""Many videos in, one OpenFace-style CSV per video out: ``track_videos``.

Up to ``streams`` jobs advance in lockstep, one frame each per step, their faces fitted as one
batch (see :class:`Tracker`); when a job ends the next one takes its stream. A job is a whole
video, or a segment of a long one (:mod:`.segments`): the segments of a video are tracked side by
side and their rows assembled into one CSV in frame order (:mod:`.assembly`), so that one long
video fills the batch as a folder of videos does. Every frame gets a CSV row as soon as its step
(and, for a segment, the segments before it) finishes. Damage stays local: an unreadable file, an
undecodable frame or a frame without a face is a row with ``success = 0`` (or, for a file that
cannot be opened, no CSV) and a line in that video's summary; an error while fitting one video's
frame is retried for that video alone and, if it persists, ends that video only.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import cv2
import numpy as np

from ..landmark_model import FitResult, LandmarkModel
from ..output import VideoCSV, draw_landmarks, openface_columns
from .assembly import AssemblySummary, SegmentRows, VideoAssembly, drawing_path, rows_path
from .frames import Frame, FrameReader
from .outputs import output_stems
from .segments import WARMUP, Segment, segment_counts, split
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
        refitted: frames fitted twice, by the segments of a video cut into several (their
            warm-ups, and the frames tracked by two while they came to agree).
        segments: the segments the video was cut into (1: tracked from start to end).
    """

    source: Path
    csv: Path | None = None
    frames: int = 0
    tracked: int = 0
    detections: int = 0
    broken: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    refitted: int = 0
    segments: int = 1

    @staticmethod
    def assembled(source: Path, done: AssemblySummary) -> "VideoSummary":
        """The summary of a video written by the assembly of its segments."""
        counts = done.counts
        return VideoSummary(source, done.csv, counts["frames"], counts["tracked"], counts["detections"],
                            counts["broken"], done.problems, done.seconds, max(0, counts["fitted"] - counts["frames"]),
                            done.segments)

    def line(self) -> str:
        """One line for a run's report."""
        state = "; ".join(self.problems) if self.problems else "ok"
        rate = self.frames / self.seconds if self.seconds > 0 else 0.0
        segments = f", {self.refitted} fitted twice by its {self.segments} segments" if self.segments > 1 else ""
        return (f"{self.source}: {self.frames} frames, {self.tracked} with a face ({self.detections} detections, "
                f"{self.broken} undecodable{segments}), {rate:.1f} frames/s — {state}")


@dataclass(frozen=True)
class Job:
    """What one stream of a lockstep tracks: a whole video, or one segment of it.

    Attributes:
        segment: the frames to read and write (for a whole video, one segment of count 1).
        output: the video's output path without its end.
        segmented: the rows go to the segment's rows file for the video's assembly, not to the CSV.
    """

    segment: Segment
    output: Path
    segmented: bool
    number: int = 0              # the job's number in its run (where its release is flagged)

    @property
    def frames(self) -> int:
        return self.segment.frames


class _Stream:
    """One job being tracked: its reader, where its rows go, its summary."""

    def __init__(self, job: Job, draw: bool, model: LandmarkModel, released: Callable[[int], bool]) -> None:
        segment = job.segment
        self.job = job
        self.released = released
        self.summary = VideoSummary(segment.source)
        self.extends = job.segmented and segment.read_to is not None     # reads on until handed over from
        self.reader = FrameReader(segment.source, start=segment.read_from,
                                  stop=None if self.extends else segment.read_to, digests=job.segmented)
        self.frames = iter(self.reader)
        self.csv: VideoCSV | None = None
        self.rows: SegmentRows | None = None
        self.writer: cv2.VideoWriter | None = None
        self.started = time.perf_counter()
        self.failed = False
        self.errors = 0                                     # frames in a row that could not be fitted
        self.pending: list[tuple[Frame, list[FrameFit]]] = []
        self.last_fit: dict[int, FitResult] = {}
        self.draw_path: Path | None = None
        self.undrawn = 0                                    # a segment's broken frames before its first drawn one
        if not self.reader.readable:
            return
        pdm = model.fitter.pdm
        if job.segmented:
            self.rows = SegmentRows(rows_path(job.output, segment.number), len(openface_columns(pdm.num_points, pdm.num_modes)))
            self.draw_path = drawing_path(job.output, segment.number) if draw else None
        else:
            self.csv = VideoCSV(job.output.with_name(job.output.name + CSV_END), pdm.num_points, pdm.num_modes)
            self.summary.csv = self.csv.path
            self.draw_path = job.output.with_name(job.output.name + DRAWING_END) if draw else None

    def next(self) -> Frame | None:
        if self.failed:
            return None
        frame = next(self.frames, None)
        if frame is not None and self.extends and frame.index >= self.job.segment.read_to \
                and self.released(self.job.number):
            return None
        return frame

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
        broken = frame.image is None
        if broken:
            summary.broken += 1
            rows = []
        detected = any(face.detected for face in faces or [])
        summary.detections += detected
        if any(bool(result.success[0]) for _, result in rows):
            summary.tracked += 1
        if self.csv is not None:
            for face_id, result in rows or [(0, None)]:
                self.csv.write(frame.index, frame.timestamp, face_id, result)
        if self.rows is not None:
            for face_id, result in rows or [(-1, None)]:
                self.rows.write(frame.index, face_id, result, detected, broken, frame.digest)
        summary.frames += 1
        if self.draw_path is not None:
            self._draw(frame, rows)

    def _draw(self, frame: Frame, rows: list) -> None:
        """The frame with its landmarks into the drawing (a segment draws every frame it reads, a
        broken one black, so that the assembly finds frame n at position n - its first)."""
        if frame.image is None:
            if self.writer is not None and self.rows is not None:
                self.writer.write(np.zeros((self.size[1], self.size[0], 3), np.uint8))
            elif self.rows is not None:
                self.undrawn += 1
            return
        if self.writer is None:
            height, width = frame.image.shape[:2]
            self.size = (width, height)
            self.writer = cv2.VideoWriter(str(self.draw_path), cv2.VideoWriter_fourcc(*"MJPG"), self.reader.fps,
                                          (width, height))
            for _ in range(self.undrawn):
                self.writer.write(np.zeros((height, width, 3), np.uint8))
        drawn = draw_landmarks(frame.image, FitResult.cat([r for _, r in rows]), 0) if rows else frame.image
        self.writer.write(drawn)

    def close(self) -> VideoSummary:
        self._flush({})
        self.reader.close()
        for output in (self.csv, self.rows):
            if output is not None:
                output.close()
        if self.writer is not None:
            self.writer.release()
        self.summary.problems[:0] = self.reader.problems
        self.summary.seconds = time.perf_counter() - self.started
        if self.summary.broken and not self.job.segmented:      # an assembly counts its video's own
            self.summary.problems.append(f"{self.summary.broken} frame(s) could not be decoded")
        return self.summary


def plan_jobs(sources: Sequence[Path], outputs: Sequence[Path], slots: int, segments: int | None = None,
              warmup: int = WARMUP) -> tuple[list[Job], dict[int, tuple[list[Segment], float, int]]]:
    """The jobs of a run: each source whole, or cut into segments (:func:`.segments.segment_counts`
    over ``slots`` lockstep streams in all); and, per segmented source, its segments, frame rate and
    frames."""
    described = [FrameReader.describe(source) for source in sources]
    counts = segment_counts([d[0] for d in described], [d[2] for d in described], slots, segments, warmup)
    jobs, segmented = [], {}
    for video, (source, output, (frames, fps, _), count) in enumerate(zip(sources, outputs, described, counts)):
        parts = split(source, video, frames, count, warmup) if count > 1 else [
            Segment(source, video, 0, 1, 0, None, 0, None, frames)]
        if len(parts) > 1:
            segmented[video] = (parts, fps, frames)
        jobs += [Job(part, output, len(parts) > 1, len(jobs) + k) for k, part in enumerate(parts)]
    return jobs, segmented


def track_videos(sources: Sequence[str | Path], model: LandmarkModel, out_dir: str | Path | None = None,
                 streams: int = 8, tracking: TrackingConfig | None = None, draw: bool = False,
                 progress: bool | Callable[[int], None] = True, stop: Event | None = None,
                 outputs: Sequence[Path] | None = None, segments: int | None = None,
                 warmup: int = WARMUP) -> list[VideoSummary]:
    """Track the face in each video and write ``<out_dir>/<video name>.csv`` for each.

    Args:
        sources: video files or image folders.
        model: from :func:`torch_clnf.load_model` (with its detector and validator).
        out_dir: where CSVs (and drawings) go, the sources' relative paths mirrored under it so
            that two videos of the same name do not share a CSV (:func:`output_stems`); default
            beside each video.
        streams: jobs (videos, or segments of them) advanced in lockstep, one batch of faces per step.
        tracking: when to re-detect (OpenFace's defaults).
        draw: also write ``<name>_landmarks.avi`` with the landmarks drawn.
        progress: a tqdm bar on stderr (frames, frames/s), or a callable given the frames of each step.
        stop: an event (``threading.Event``, ``multiprocessing.Event``) that ends the run after the
            current frames: every video's rows so far stay written, and its summary says where it stopped.
        outputs: each source's output path without its ends (default :func:`output_stems`).
        segments: segments per video file or image folder (1: each tracked from start to end, in
            one stream); None: as many as keep the streams busy (:mod:`.segments`). A camera or a
            pipe is never cut.
        warmup: frames a segment tracks before its first (:data:`.segments.WARMUP`).
    Returns:
        one :class:`VideoSummary` per source, in the order given.
    Raises:
        ValueError: before any work, where outputs would overwrite each other or a source.
    """
    pending = [Path(s) for s in sources]
    outputs = list(outputs) if outputs is not None else output_stems(pending, out_dir, output_ends(draw))
    jobs, segmented = plan_jobs(pending, outputs, streams, segments, warmup)
    pdm = model.fitter.pdm
    released = [False] * len(jobs)
    first_job = {job.segment.video: job.number for job in reversed(jobs)}

    def release(video: int) -> Callable[[int], None]:
        return lambda number: released.__setitem__(first_job[video] + number, True)

    assemblies = {video: VideoAssembly(parts, outputs[video], fps, pdm.num_points, pdm.num_modes, draw, frames,
                                       release(video)) for video, (parts, fps, frames) in segmented.items()}
    summaries: dict[int, VideoSummary] = {}

    def finished(job: Job, summary: VideoSummary) -> None:
        if job.segmented:
            assemblies[job.segment.video].finished(job.segment.number, summary.problems, fitted=summary.frames)
        else:
            summaries[job.segment.video] = summary

    try:
        run_jobs(jobs, model, streams, tracking, draw, progress, stop, finished, released.__getitem__,
                 pump=lambda: [assembly.pump() for assembly in assemblies.values()])
    finally:
        stopped = stop is not None and stop.is_set()
        for video, assembly in assemblies.items():
            summary = summaries[video] = VideoSummary.assembled(pending[video], assembly.close(stopped))
            if stopped:
                summary.problems.append(f"interrupted after {summary.frames} frames (their rows are written)")
    return [summaries.get(k, VideoSummary(pending[k], problems=["interrupted before it started"]))
            for k in range(len(pending))]


def run_jobs(jobs: Sequence[Job], model: LandmarkModel, streams: int, tracking: TrackingConfig | None, draw: bool,
             progress: bool | Callable[[int], None], stop: Event | None, finished: Callable[[Job, VideoSummary], None],
             released: Callable[[int], bool], pump: Callable[[], object] = lambda: None) -> None:
    """Track ``jobs`` in ``streams`` lockstep streams; ``finished(job, summary)`` as each ends (a job
    that was not started when ``stop`` was set is not reported), ``pump()`` after every step; a
    segment reads on past its planned end until ``released(job.number)``."""
    tracker = Tracker(model, max(1, min(streams, len(jobs))), tracking)
    slots: list[tuple[Job, _Stream] | None] = [None] * len(tracker.tracks)
    order = iter(jobs)
    bar = progress_bar(progress, sum(job.frames for job in jobs) if progress is True else 0)

    def refill(slot: int) -> Frame | None:
        """The next frame of the job in ``slot``; when that job is done, the next job's first frame."""
        while True:
            current = slots[slot]
            if current is not None:
                frame = current[1].next()
                if frame is not None:
                    return frame
                finished(current[0], current[1].close())
                slots[slot] = None
            job = next(order, None)
            if job is None:
                return None
            slots[slot] = (job, _Stream(job, draw, model, released))
            tracker.reset(slot, job.segment.read_from)

    try:
        while True:
            if stop is not None and stop.is_set():
                for slot, current in enumerate(slots):
                    if current is not None:
                        slots[slot] = None
                        summary = current[1].close()
                        if not current[0].segmented:           # an assembly says where its video stopped
                            summary.problems.append(f"interrupted after {summary.frames} frames (their rows are "
                                                    "written)")
                        finished(current[0], summary)
                break
            frames = [refill(slot) for slot in range(len(slots))]
            if all(f is None for f in frames):
                break
            fits = _step(tracker, frames, slots)
            for slot, frame in enumerate(frames):
                if frame is not None and slots[slot] is not None:
                    slots[slot][1].record(frame, fits[slot])
            pump()
            done = sum(f is not None for f in frames)
            if callable(progress) and progress is not True:
                progress(done)
            elif bar is not None:
                bar.update(done)
    finally:
        for slot, current in enumerate(slots):
            if current is not None:
                slots[slot] = None
                finished(current[0], current[1].close())
        if bar is not None:
            bar.close()


def output_ends(draw: bool) -> tuple[str, ...]:
    """The ends of a video's output names (:data:`CSV_END`, and :data:`DRAWING_END` with ``draw``)."""
    return (CSV_END, DRAWING_END) if draw else (CSV_END,)


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
