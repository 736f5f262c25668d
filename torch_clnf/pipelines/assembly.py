"""One video's CSV, in frame order, from the segments that tracked it (:mod:`.segments`).

Each segment writes its rows to a file of its own as frames finish (its "rows file": the frame's
number as its reader counts it, the face's number in the segment, whether the detector ran and
whether the frame could be decoded, the frame's digest, then the CSV's values as text). The
assembly copies them into the video's CSV in order: the first segment's rows as they come, a later
segment's as soon as the segments before it are done — it never holds more than one frame's rows
in memory. Where segment k hands over to k + 1:

- **frame numbers are checked**: the digests of k + 1's first frames must equal those k decoded
  for the same frames (OpenCV's seek is exact for the containers tested; where it is not, the
  shift within the warm-up is found and corrected, else it is reported);
- **the hand-over frame** is the first frame from k + 1's first that both tracks agree on (each
  face within :data:`AGREE_PX` and the same success): segment k goes on tracking past its planned
  end until then (``release`` tells it to stop), for at most the length of segment k + 1, where
  the hand-over is made anyway and reported;
- **face numbers carry over**: k + 1's faces are matched to k's on the frame before the hand-over
  (landmarks within :data:`SAME_FACE_PX`), so a person keeps their ``face_id``; a face new in k + 1
  gets the next free number.

Frames that no segment tracked (a segment whose process died, a segment that ended early) get a
row with ``success = 0`` and the summary says so.

The CSV is written as ``NAME.csv.part`` and renamed to ``NAME.csv`` when every segment has been
tracked to its end (:mod:`.manifest`).
"""
from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from ..landmark_model import FitResult
from ..output import VideoCSV, row_values
from .manifest import part_path
from .segments import Segment

AGREE_PX = 0.05          # mean landmark distance at which two tracks of one face agree (hand-over)
SAME_FACE_PX = 10.0      # mean landmark distance under which two segments' faces are one person
ROWS_END, DRAWING_END = ".rows.tmp", ".drawn.tmp.avi"


def rows_path(output: Path, number: int) -> Path:
    """Where segment ``number`` of the video with output path ``output`` writes its rows."""
    return output.with_name(f"{output.name}.segment{number:03d}{ROWS_END}")


def drawing_path(output: Path, number: int) -> Path:
    """Where segment ``number`` writes its drawing (with ``--draw``)."""
    return output.with_name(f"{output.name}.segment{number:03d}{DRAWING_END}")


class SegmentRows:
    """A segment's rows file, written as its frames finish (each row flushed)."""

    def __init__(self, path: Path, columns: int) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._stream = open(path, "w", newline="")
        self._writer = csv.writer(self._stream)
        self._columns = columns

    def write(self, frame_index: int, face_id: int, result: FitResult | None, detected: bool, broken: bool,
              digest: str | None) -> None:
        """One face's row of one frame (``face_id`` -1 and ``result`` None: the frame's no-face row)."""
        self._writer.writerow([frame_index, face_id, int(detected), int(broken), digest or "",
                               *row_values(result, self._columns)])
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()


@dataclass
class _Row:
    frame: int                         # as the segment's reader numbered it
    face: int                          # the face's number in the segment, -1 for none
    detected: bool
    broken: bool
    digest: str
    values: list[str]                  # the CSV's values as text

    @property
    def success(self) -> bool:
        return self.values[1] == "1"

    def points(self, count: int) -> np.ndarray:
        """(count, 2) the face's landmarks (x_*, y_* follow the 8 values before them)."""
        return np.array([[float(self.values[8 + i]), float(self.values[8 + count + i])] for i in range(count)])


@dataclass
class _Part:
    """One segment's side of the assembly."""

    segment: Segment
    rows_path: Path
    drawing_path: Path | None
    done: bool = False
    failure: str | None = None         # why the segment did not finish (its process died)
    offset: int = 0                    # bytes of the rows file already read
    pending: list[_Row] = field(default_factory=list)     # rows read, not yet written or passed over
    shift: int | None = None           # true frame number = the segment's number + shift (None: not yet known)
    checked: int = -1                  # the last frame where the hand-over to it was tried
    ids: dict[int, int] = field(default_factory=dict)      # the segment's face numbers → the video's
    drawing: cv2.VideoCapture | None = None
    drawn: int = 0                     # frames read from its drawing so far


class VideoAssembly:
    """Writes one segmented video's CSV (and drawing) from its segments' rows files.

    Args:
        segments: the video's segments, in order (:func:`.segments.split`).
        output: the video's output path without its end (``output + ".csv"`` is the CSV).
        fps: the video's frame rate, for the timestamps.
        points, modes: the model's landmark and mode counts (the CSV's columns).
        draw: also assemble ``output + "_landmarks.avi"`` from the segments' drawings.
        frames: the video's frames (where the last segment did not finish, the rest get success-0 rows).
        release: ``release(number)`` tells segment ``number`` that it has been handed over from
            and may stop (it goes on tracking past its planned end until then).
    """

    def __init__(self, segments: list[Segment], output: Path, fps: float, points: int, modes: int,
                 draw: bool = False, frames: int = 0, release: Callable[[int], None] = lambda number: None) -> None:
        self.output, self.fps, self.points, self.frames, self.release = output, fps, points, frames, release
        self.final = output.with_name(output.name + ".csv")
        self.final.unlink(missing_ok=True)                 # tracked again: an earlier CSV is not this run's
        self.csv = VideoCSV(part_path(self.final), points, modes)
        self.parts = [_Part(s, rows_path(output, s.number), drawing_path(output, s.number) if draw else None)
                      for s in segments]
        self.draw_path = output.with_name(output.name + "_landmarks.avi") if draw else None
        self.writer: cv2.VideoWriter | None = None
        self.head = 0                          # the segment whose rows are being written
        self.cursor = 0                        # the next frame to write
        self.next_id = 0                       # the next free face number of the video
        self.last_size: tuple[int, int] | None = None
        self.started = time.perf_counter()
        self.counts = {"frames": 0, "tracked": 0, "detections": 0, "broken": 0, "fitted": 0}
        self.problems: list[str] = []
        self.parts[0].shift = 0                # the first segment's numbers are the video's

    def finished(self, number: int, problems: list[str] | None = None, failure: str | None = None,
                 fitted: int = 0) -> None:
        """Segment ``number`` is done, having fitted ``fitted`` frames (``failure``: its process died;
        its rows so far are kept)."""
        part = self.parts[number]
        part.done, part.failure = True, failure
        self.counts["fitted"] += fitted
        for problem in problems or []:
            if problem not in self.problems:
                self.problems.append(problem)
        if failure:
            first, last = part.segment.first + 1, part.segment.last
            self.problems.append(f"frames {first}–{last if last is not None else 'end'} (segment {number + 1} of "
                                 f"{len(self.parts)}) were not tracked to the end: {failure}")

    @property
    def complete(self) -> bool:
        return self.head >= len(self.parts)

    def pump(self) -> None:
        """Write every row that can be written now."""
        while not self.complete:
            part = self.parts[self.head]
            self._read(part)
            last = part.segment.last                               # None: the last segment
            while part.pending and (last is None or part.pending[0].frame + part.shift < last):
                self._write_frame(part, self._take_frame(part))
            if last is None:                                       # the video's last segment
                if not part.done or part.pending:
                    return
                while part.failure and self.cursor < self.frames:
                    self._write_untracked(self.cursor)
                self.head += 1
                return
            following = self.parts[self.head + 1]
            self._read(following)
            if not self._hand_over(part, following):
                return

    def close(self, stopped: bool = False) -> "AssemblySummary":
        """Finish and remove the rows files; the summary of the whole video. Frames that a segment
        did not track get success-0 rows where a later segment's rows follow them; a run that was
        ``stopped`` keeps only the frames tracked without a gap. The CSV is renamed from its
        ``.csv.part`` where every segment was tracked to its end."""
        failed = any(part.failure for part in self.parts) or not all(part.done for part in self.parts)
        self.pump()
        while not self.complete and not stopped:
            part = self.parts[self.head]                           # a segment that never finished: hand over
            if not part.done:
                self.finished(self.head, failure="its process ended before it")
            following = self.parts[self.head + 1] if self.head + 1 < len(self.parts) else None
            if following is not None and not following.done:
                self.finished(self.head + 1, failure="its process ended before it")
            self.pump()
        for part in self.parts:
            if part.drawing is not None:
                part.drawing.release()
            part.rows_path.unlink(missing_ok=True)
            if part.drawing_path is not None:
                part.drawing_path.unlink(missing_ok=True)
        self.csv.close()
        if self.writer is not None:
            self.writer.release()
        complete = not stopped and not failed and self.complete
        if complete:
            os.replace(self.csv.path, self.final)
        return AssemblySummary(self.final if complete else self.csv.path, self.counts, self.problems,
                               time.perf_counter() - self.started, len(self.parts), complete)

    # reading

    def _read(self, part: _Part) -> None:
        """Parse the complete rows appended to a segment's rows file since the last read."""
        if not part.rows_path.is_file():
            return
        with open(part.rows_path, newline="") as stream:
            stream.seek(part.offset)
            text = stream.read()
        end = text.rfind("\n") + 1                                 # a row still being written waits
        part.offset += len(text[:end].encode())
        for fields in csv.reader(text[:end].splitlines()):
            part.pending.append(_Row(int(fields[0]), int(fields[1]), fields[2] == "1", fields[3] == "1", fields[4],
                                     fields[5:]))

    def _take_frame(self, part: _Part) -> list[_Row]:
        """The pending rows of a segment's next frame."""
        frame = part.pending[0].frame
        rows = []
        while part.pending and part.pending[0].frame == frame:
            rows.append(part.pending.pop(0))
        return rows

    # writing

    def _write_frame(self, part: _Part, rows: list[_Row]) -> None:
        """Write one frame of a segment (skipped where it is before the cursor: a warm-up frame)."""
        true = rows[0].frame + part.shift
        if true < self.cursor:
            return
        while self.cursor < true:                                  # frames nobody tracked
            self._write_untracked(self.cursor)
        timestamp = true / self.fps
        for row in rows:
            face = -1 if row.face < 0 else self._video_id(part, row.face)
            self.csv.write_values(true, timestamp, face, row.values)
        self.counts["frames"] += 1
        self.counts["tracked"] += any(r.success for r in rows)
        self.counts["detections"] += any(r.detected for r in rows)
        self.counts["broken"] += rows[0].broken
        self._copy_drawing(part, rows[0].frame, rows[0].broken)
        self.cursor = true + 1

    def _write_untracked(self, frame: int) -> None:
        self.csv.write_values(frame, frame / self.fps, 0, row_values(None, len(self.csv.columns)))
        self.counts["frames"] += 1
        self.cursor = frame + 1
        if self.writer is not None and self.last_size is not None:
            self.writer.write(np.zeros((*self.last_size[::-1], 3), np.uint8))

    def _video_id(self, part: _Part, face: int) -> int:
        if face not in part.ids:
            part.ids[face] = self.next_id
        self.next_id = max(self.next_id, part.ids[face] + 1)
        return part.ids[face]

    def _copy_drawing(self, part: _Part, frame: int, broken: bool) -> None:
        """The drawn frame ``frame`` of a segment into the video's drawing (a broken frame is not drawn)."""
        if part.drawing_path is None or broken:
            return
        if part.drawing is None:
            part.drawing = cv2.VideoCapture(str(part.drawing_path))
        image = None
        while part.drawn <= frame - part.segment.read_from:         # the segment drew every frame it read
            ok, image = part.drawing.read()
            part.drawn += 1
            if not ok:
                return
        if image is None:
            return
        if self.writer is None:
            height, width = image.shape[:2]
            self.last_size = (width, height)
            self.writer = cv2.VideoWriter(str(self.draw_path), cv2.VideoWriter_fourcc(*"MJPG"), self.fps,
                                          (width, height))
        self.writer.write(image)

    # handing over from one segment to the next

    def _hand_over(self, part: _Part, following: _Part) -> bool:
        """Hand over from ``part`` (the segment being written) to the following one where they agree,
        if they do yet (else False: wait for more rows). Checks the following segment's frame
        numbers first, writes the rest of ``part`` up to the hand-over frame, carries the face numbers
        over and releases ``part``. Where either did not finish, the following one takes over at its
        first frame, and the frames before it that nobody tracked get success-0 rows."""
        start = following.segment.first
        if part.failure or following.failure:
            while self.cursor < start:
                self._write_untracked(self.cursor)
            if following.shift is None:
                following.shift = 0
            return self._switch(part)
        mine = _frames(part.pending, part.shift)
        if following.shift is None:
            following.shift = self._shift(mine, _frames(following.pending, 0), following, final=part.done)
            if following.shift is None:
                return False
        theirs = _frames(following.pending, following.shift)
        switch = None
        for frame in sorted(f for f in mine if f >= start and f > following.checked and f in theirs):
            following.checked = frame
            if _agree(mine[frame], theirs[frame], self.points):
                switch = frame
                break
        if switch is None:
            longest = (following.segment.last or self.frames) - start     # past it, hand over anyway
            if not part.done and not (mine and max(mine) - start >= longest):
                return False
            switch = max(mine) + 1 if mine else start
            if mine and not part.done:
                self.problems.append(f"segment {following.segment.number + 1}'s track did not come within "
                                     f"{AGREE_PX} px of the one before it by frame {switch}; it takes over there")
        while part.pending and part.pending[0].frame + part.shift < switch:
            self._write_frame(part, self._take_frame(part))
        common = max((f for f in mine if f <= switch and f in theirs), default=None)   # the hand-over frame, or before
        if common is not None:
            following.ids = _carried_ids(mine[common], theirs[common], part, self.points)
        return self._switch(part)

    def _switch(self, part: _Part) -> bool:
        """The next segment's rows are written from now on; ``part`` may stop."""
        part.pending.clear()
        self.release(part.segment.number)
        self.head += 1
        return True

    def _shift(self, mine: dict[int, list[_Row]], theirs: dict[int, list[_Row]], following: _Part,
               final: bool) -> int | None:
        """How far the following segment's frame numbers are off (0 where its seek was exact), from
        the digests of frames both decoded; None while fewer than 3 are there to compare (``final``:
        no more will come, decide with what there is)."""
        window = following.segment.first - following.segment.read_from + 1
        known = {f: rows[0].digest for f, rows in mine.items() if rows[0].digest}
        own = {f: rows[0].digest for f, rows in theirs.items() if rows[0].digest}
        if not final and len(set(own) & set(known)) < 3:
            return None
        for shift in sorted(range(-window, window + 1), key=abs):
            pairs = [(known[f + shift], d) for f, d in own.items() if f + shift in known]
            if len(pairs) >= min(3, len(own)) and pairs and all(a == b for a, b in pairs):
                if shift:
                    self.problems.append(f"segment {following.segment.number + 1}'s seek landed {shift:+d} frames "
                                         "off; its frame numbers were corrected from the frames themselves")
                return shift
        if own and known:
            self.problems.append(f"the frames of segment {following.segment.number + 1} could not be matched to "
                                 "those of the segment before: its frame numbers are the decoder's")
        return 0


@dataclass
class AssemblySummary:
    """What an assembly wrote: the CSV, the frame counts, the problems, the seconds it took, the
    segments, and whether every segment was tracked to its end (the CSV renamed from ``.csv.part``)."""

    csv: Path
    counts: dict[str, int]
    problems: list[str]
    seconds: float
    segments: int
    complete: bool = False


def _frames(rows: list[_Row], shift: int) -> dict[int, list[_Row]]:
    frames: dict[int, list[_Row]] = {}
    for row in rows:
        frames.setdefault(row.frame + shift, []).append(row)
    return frames


def _faces(rows: list[_Row], points: int) -> dict[int, tuple[bool, np.ndarray]]:
    return {row.face: (row.success, row.points(points)) for row in rows if row.face >= 0 and not row.broken}


def _agree(mine: list[_Row], theirs: list[_Row], points: int) -> bool:
    """Both tracks have the same faces here, each within AGREE_PX and of the same success."""
    a, b = _faces(mine, points), _faces(theirs, points)
    if len(a) != len(b):
        return False
    for success, landmarks in a.values():
        close = [s for s, other in b.values() if np.linalg.norm(landmarks - other, axis=1).mean() <= AGREE_PX]
        if not close or close[0] != success:
            return False
    return True


def _carried_ids(mine: list[_Row], theirs: list[_Row], part: _Part, points: int) -> dict[int, int]:
    """The following segment's face numbers that are faces of ``part`` on the same frame → the video's numbers."""
    ids = {}
    a, b = _faces(mine, points), _faces(theirs, points)
    for face, (_, landmarks) in b.items():
        distances = {own: np.linalg.norm(landmarks - other, axis=1).mean() for own, (_, other) in a.items()}
        own = min(distances, key=distances.get, default=None)
        if own is not None and distances[own] <= SAME_FACE_PX and own in part.ids:
            ids[face] = part.ids[own]
    return ids
