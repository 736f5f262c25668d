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

Runs resume (:mod:`.manifest`): a CSV is written as ``NAME.csv.part`` and renamed when its video
has been tracked to its end, and the run's manifest records it; the same command again skips the
videos complete with the same source and options and tracks the others from their first frame.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence, Sized

import cv2
import numpy as np

from ..landmark_model import FitResult, LandmarkModel
from ..output import VideoCSV, draw_landmarks, openface_columns
from .assembly import AssemblySummary, SegmentRows, VideoAssembly, drawing_path, rows_path
from .frames import Frame, FrameReader
from .manifest import PART_END, RunManifest, manifest_folder, part_path, run_options
from .outputs import output_stems
from .segments import MIN_WARMUPS_PER_SEGMENT, WARMUP, Segment, segment_counts, split, warmups_per_segment
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
        complete: tracked to its end (its CSV renamed from ``.csv.part``); False where the run
            stopped or its process died first (``csv`` is then the ``.csv.part`` with its rows so far).
        skipped: complete in an earlier run with the same source and options (:mod:`.manifest`):
            not tracked again; the counts are that run's.
        tries: the times it was started (above 1: its Ray actor died and it was tracked again).
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
    complete: bool = False
    skipped: bool = False
    tries: int = 1

    @staticmethod
    def assembled(source: Path, done: AssemblySummary) -> "VideoSummary":
        """The summary of a video written by the assembly of its segments."""
        counts = done.counts
        return VideoSummary(source, done.csv, counts["frames"], counts["tracked"], counts["detections"],
                            counts["broken"], done.problems, done.seconds, max(0, counts["fitted"] - counts["frames"]),
                            done.segments, done.complete)

    @staticmethod
    def recorded(source: Path, csv: Path, record: dict[str, Any]) -> "VideoSummary":
        """The summary of a video skipped as complete, from its manifest record."""
        return VideoSummary(source, csv if record.get("written") else None, record.get("frames", 0),
                            record.get("tracked", 0), record.get("detections", 0), record.get("broken", 0),
                            list(record.get("problems", [])), record.get("seconds", 0.0), complete=True, skipped=True)

    def record_in(self, manifest: RunManifest, output: Path) -> None:
        """Append this video's record to ``manifest`` (``output``: its output path without the end)."""
        manifest.record(self.source, output.with_name(output.name + CSV_END), self.complete,
                        self.complete and self.csv is not None, frames=self.frames, tracked=self.tracked,
                        detections=self.detections, broken=self.broken, problems=self.problems,
                        seconds=round(self.seconds, 3), tries=self.tries)

    def line(self) -> str:
        """One line for a run's report."""
        state = "; ".join(self.problems) if self.problems else "ok"
        if self.skipped:
            return (f"{self.source}: {self.frames} frames, {self.tracked} with a face — done in an earlier run, "
                    f"skipped ({state})")
        rate = self.frames / self.seconds if self.seconds > 0 else 0.0
        segments = f", {self.refitted} fitted twice by its {self.segments} segments" if self.segments > 1 else ""
        tries = f", tracked again after its Ray actor died ({self.tries} tries)" if self.tries > 1 else ""
        return (f"{self.source}: {self.frames} frames, {self.tracked} with a face ({self.detections} detections, "
                f"{self.broken} undecodable{segments}{tries}), {rate:.1f} frames/s — {state}")


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
            final = job.output.with_name(job.output.name + CSV_END)
            final.unlink(missing_ok=True)                   # tracked again: an earlier CSV is not this run's
            self.csv = VideoCSV(part_path(final), pdm.num_points, pdm.num_modes)
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

    def close(self, complete: bool) -> VideoSummary:
        """The stream's summary; ``complete``: it was tracked to its end, and its CSV is renamed
        from ``.csv.part`` (else the ``.csv.part`` keeps the rows so far)."""
        self._flush({})
        self.reader.close()
        for output in (self.csv, self.rows):
            if output is not None:
                output.close()
        if self.writer is not None:
            self.writer.release()
        self.summary.problems[:0] = self.reader.problems
        self.summary.seconds = time.perf_counter() - self.started
        self.summary.complete = complete
        if complete and self.csv is not None:
            final = self.csv.path.with_name(self.csv.path.name.removesuffix(PART_END))
            os.replace(self.csv.path, final)
            self.summary.csv = final
        if self.summary.broken and not self.job.segmented:      # an assembly counts its video's own
            self.summary.problems.append(f"{self.summary.broken} frame(s) could not be decoded")
        return self.summary


def plan_jobs(sources: Sequence[Path], outputs: Sequence[Path], slots: int, segments: int | None = None,
              warmup: int = WARMUP, warmups: int = MIN_WARMUPS_PER_SEGMENT
              ) -> tuple[list[Job], dict[int, tuple[list[Segment], float, int]]]:
    """The jobs of a run: each source whole, or cut into segments (:func:`.segments.segment_counts`
    over ``slots`` lockstep streams in all, each at least ``warmups`` warm-ups long); and, per
    segmented source, its segments, frame rate and frames."""
    described = [FrameReader.describe(source) for source in sources]
    counts = segment_counts([d[0] for d in described], [d[2] for d in described], slots, segments, warmup,
                            warmups=warmups)
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
                 warmup: int = WARMUP, force: bool = False) -> list[VideoSummary]:
    """Track the face in each video and write ``<out_dir>/<video name>.csv`` for each, skipping
    the videos that an earlier run completed with the same source and options (:mod:`.manifest`).

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
            current frames: every video's rows so far stay written (in its ``.csv.part``), and its
            summary says where it stopped.
        outputs: each source's output path without its ends (default :func:`output_stems`).
        segments: segments per video file or image folder (1: each tracked from start to end, in
            one stream); None: as many as keep the streams busy (:mod:`.segments`; compiled fits
            on a CPU in longer segments, so that a short video is tracked whole). A camera or a
            pipe is never cut.
        warmup: frames a segment tracks before its first (:data:`.segments.WARMUP`).
        force: track every video again, complete or not.
    Returns:
        one :class:`VideoSummary` per source, in the order given.
    Raises:
        ValueError: before any work, where outputs would overwrite each other or a source.
    """
    given = [Path(s) for s in sources]
    all_outputs = list(outputs) if outputs is not None else output_stems(given, out_dir, output_ends(draw))
    run = resume(given, all_outputs, out_dir, model_options(model, tracking, draw), force)
    pending, outputs = [given[k] for k in run.todo], [all_outputs[k] for k in run.todo]
    compiled_on_cpu = model.config.compile and model.device.type == "cpu"
    jobs, segmented = plan_jobs(pending, outputs, streams, segments, warmup, warmups_per_segment(compiled_on_cpu))
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
            ended = summary.complete or (stop is not None and stop.is_set())
            assemblies[job.segment.video].finished(job.segment.number, summary.problems, fitted=summary.frames,
                                                   failure=None if ended else "its tracking was cut short")
        else:
            summaries[job.segment.video] = summary
            summary.record_in(run.manifest, outputs[job.segment.video])

    try:
        run_jobs(jobs, model, streams, tracking, draw, progress, stop, finished, released.__getitem__,
                 pump=lambda: [assembly.pump() for assembly in assemblies.values()])
    finally:
        run.close_assemblies(assemblies, summaries, pending, outputs, stop is not None and stop.is_set())
    return run.every_summary(summaries, pending)


INTERRUPTED = "interrupted after {frames} frames (their rows are in its .csv.part; the next run tracks it again)"


def model_options(model: LandmarkModel, tracking: TrackingConfig | None, draw: bool) -> dict[str, Any]:
    """The options of a run with ``model`` that its manifest compares (:func:`.manifest.run_options`)."""
    return run_options(model.name, model.config, model.dtype, tracking or TrackingConfig(), draw)


@dataclass
class Resumed:
    """A run's sources split by its manifest: the ones to track, and the ones complete in an earlier run.

    Attributes:
        manifest: the run's manifest (records are appended to it as videos end).
        todo: the numbers of the sources to track, in order.
        skipped: per number, the summary of a source skipped as complete.
    """

    manifest: RunManifest
    todo: list[int]
    skipped: dict[int, VideoSummary]

    def close_assemblies(self, assemblies: dict[int, VideoAssembly], summaries: dict[int, VideoSummary],
                         pending: Sequence[Path], outputs: Sequence[Path], stopped: bool) -> None:
        """Close the segmented videos' assemblies (``stopped``: the run was asked to stop), put their
        summaries in ``summaries`` (by the number among ``pending``) and record them."""
        for video, assembly in assemblies.items():
            summary = summaries[video] = VideoSummary.assembled(pending[video], assembly.close(stopped))
            if stopped:
                summary.problems.append(INTERRUPTED.format(frames=summary.frames))
            summary.record_in(self.manifest, outputs[video])

    def every_summary(self, summaries: dict[int, VideoSummary], pending: Sequence[Path]) -> list[VideoSummary]:
        """:meth:`summaries` of the ``pending`` videos tracked (by number), a video never started
        said to be so."""
        return self.summaries([summaries.get(k, VideoSummary(pending[k], problems=["interrupted before it started"]))
                               for k in range(len(pending))])

    def summaries(self, tracked: Sequence[VideoSummary]) -> list[VideoSummary]:
        """Every source's summary in the order given, from those of the tracked ones (in ``todo``'s order)."""
        found = dict(self.skipped)
        found.update(zip(self.todo, tracked))
        return [found[k] for k in sorted(found)]


def resume(sources: Sequence[Path], outputs: Sequence[Path], out_dir: str | Path | None, options: dict[str, Any],
           force: bool = False) -> Resumed:
    """Which sources a run tracks: those not complete in its manifest with the same source and
    ``options`` (all with ``force``)."""
    manifest = RunManifest.open(manifest_folder(outputs, out_dir), options)
    todo, skipped = [], {}
    for k, (source, output) in enumerate(zip(sources, outputs)):
        csv = output.with_name(output.name + CSV_END)
        record = None if force else manifest.done(source, csv)
        if record is None:
            todo.append(k)
        else:
            skipped[k] = VideoSummary.recorded(source, csv, record)
    return Resumed(manifest, todo, skipped)


def run_jobs(jobs: Sequence[Job] | Iterable[Job], model: LandmarkModel, streams: int, tracking: TrackingConfig | None,
             draw: bool, progress: bool | Callable[[int], None], stop: Event | None,
             finished: Callable[[Job, VideoSummary], None], released: Callable[[int], bool],
             pump: Callable[[], object] = lambda: None) -> None:
    """Track ``jobs`` in ``streams`` lockstep streams; ``finished(job, summary)`` as each ends (a job
    that was not started when ``stop`` was set is not reported; a job tracked to its end has its
    summary's ``complete`` set), ``pump()`` after every step; a segment reads on past its planned
    end until ``released(job.number)``. ``jobs`` may be an iterator that runs dry for a while and
    later gives more (a Ray actor's dealer): an empty stream asks it again at every step, and the
    run ends when every stream is empty."""
    sized = isinstance(jobs, Sized)
    tracker = Tracker(model, max(1, min(streams, len(jobs)) if sized else streams), tracking)
    slots: list[tuple[Job, _Stream] | None] = [None] * len(tracker.tracks)
    order = iter(jobs)
    bar = progress_bar(progress, sum(job.frames for job in jobs) if progress is True and sized else 0)

    def refill(slot: int) -> Frame | None:
        """The next frame of the job in ``slot``; when that job is done, the next job's first frame."""
        while True:
            current = slots[slot]
            if current is not None:
                frame = current[1].next()
                if frame is not None:
                    return frame
                finished(current[0], current[1].close(complete=True))
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
                        summary = current[1].close(complete=False)
                        if not current[0].segmented:           # an assembly says where its video stopped
                            summary.problems.append(INTERRUPTED.format(frames=summary.frames))
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
                finished(current[0], current[1].close(complete=False))
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
