"""A long video as overlapping segments, tracked side by side: which segments, and where they start.

Tracking is sequential within a face's track, but a video's segments are not: segment k starts
``warmup`` frames before its first frame (a detection there, then tracking up to the segment's
start, as a sequential run would have been tracking), so that by its first frame its track has
converged to the sequential one (a track restarted by detection comes within 0.02–0.04 px of the
sequential one after about 8 frames). It also runs on past its last frame — ``margin`` frames at
least, and until the next segment's track agrees with its own — so that the next segment takes
over where the two tracks agree (:mod:`.assembly`). The segments of all
videos are the jobs that fill the lockstep batches of one or several processes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

# frames tracked before a segment's first frame, and after its last, by default: measured on the
# sample videos (bench/video.py --segments), the segmented track is then within 0.03 px (median) of
# the sequential one
WARMUP = 16
MARGIN = 4           # frames read past the last at least: their digests check the next segment's frame numbers
# a segment is at least this many warm-ups (and margins) long: the frames fitted twice stay below a half
MIN_WARMUPS_PER_SEGMENT = 2
# compiled fits (FitConfig.compile) on a CPU gain far less from lockstep (7 faces tracked 1.3x the
# frames/s of one, uncompiled 3.1x: docs/speed.md), so their segments are longer: the frames fitted
# twice stay below a tenth, and a short video is tracked whole
MIN_WARMUPS_PER_SEGMENT_COMPILED = 10


@dataclass(frozen=True)
class Segment:
    """Frames ``[first, last)`` of video ``video`` (a number among the run's sources), tracked by
    reading frames from ``read_from`` to ``read_to`` at least, and on until released by the
    assembly (``read_to`` None: to the end of the source).

    Attributes:
        source: the video file or image folder.
        video: the source's number in the run.
        number: the segment's number in its video (0 first); count: the video's segments.
        frames: frames it reads (for the last segment, as the source's header counts them).
    """

    source: Path
    video: int
    number: int
    count: int
    first: int
    last: int | None
    read_from: int
    read_to: int | None
    frames: int = 0


def split(source: Path, video: int, frames: int, count: int, warmup: int = WARMUP, margin: int = MARGIN) -> list[Segment]:
    """``count`` segments of about equal length over ``frames`` frames (the last one reads on to the
    source's end, wherever that is); one segment (the whole source, no warm-up) for ``count`` 1."""
    count = max(1, min(count, frames // max(1, warmup + margin) or 1))
    bounds = [round(k * frames / count) for k in range(count)] + [None]
    segments = []
    for k in range(count):
        first, last = bounds[k], bounds[k + 1]
        read_from, read_to = max(0, first - warmup), None if last is None else last + margin
        segments.append(Segment(source, video, k, count, first, last, read_from, read_to,
                                (frames if read_to is None else read_to) - read_from))
    return segments


def warmups_per_segment(compiled_on_cpu: bool) -> int:
    """The shortest segment, in warm-ups, for a run of compiled fits on a CPU or of the others."""
    return MIN_WARMUPS_PER_SEGMENT_COMPILED if compiled_on_cpu else MIN_WARMUPS_PER_SEGMENT


def segment_counts(frames: list[int], seekable: list[bool], slots: int, segments: int | None = None,
                   warmup: int = WARMUP, margin: int = MARGIN, warmups: int = MIN_WARMUPS_PER_SEGMENT) -> list[int]:
    """How many segments each source is cut into.

    Args:
        frames: each source's frame count (0 when unknown: not segmented).
        seekable: whether each source can start anywhere (a video file or an image folder; not a
            camera or a pipe).
        slots: lockstep streams of the run in all (streams per process times processes).
        segments: a fixed count for every seekable source (1: sequential), or None: so many that
            the run's jobs fill its slots, each at least ``warmups`` warm-ups (and margins) long
            (:func:`warmups_per_segment`).
    """
    if segments is not None:
        return [max(1, segments) if ok and n else 1 for n, ok in zip(frames, seekable)]
    shortest = warmups * (warmup + margin)
    length = max(shortest, math.ceil(sum(frames) / max(1, slots)))
    return [max(1, round(n / length)) if ok and n else 1 for n, ok in zip(frames, seekable)]
