"""Frames from a video file or an image folder, decoded in a background thread.

Decoding runs ahead of fitting (OpenCV releases the GIL while it decodes), so the fitter never
waits on I/O. Damage is reported, not raised: a frame that cannot be decoded between good ones
comes out as a :class:`Frame` with ``image=None`` and an ``error``; a file that ends early (a
truncated video) or cannot be opened at all is described in :attr:`FrameReader.problems`.

A video has ended early when it is shorter than its container declares (:mod:`.containers`, read
at open), when it decodes fewer frames than its header announces, or when its last frame falls
well short of the play duration its container declares. The frame count alone misses cut WMVs:
OpenCV estimates theirs from the file's size.
"""
from __future__ import annotations

import hashlib
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..images import read_image
from .containers import Declared, declared

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".avi", ".mp4", ".mov", ".mkv", ".wmv", ".mpg", ".mpeg", ".m4v", ".webm", ".flv"}
IMAGE_SEQUENCE_FPS = 30.0     # OpenFace's frame rate for image folders
SHORT_OF_DURATION = (1.0, 0.05)  # a video ending short of its declared duration by more than 1 s and 5% has ended
                                 # early (the duration is the longest stream's: audio may outlast video a little)


@dataclass
class Frame:
    """One frame of a source.

    Attributes:
        index: 0-based frame number.
        image: (H, W, 3) BGR uint8, or None when the frame could not be decoded.
        timestamp: seconds from the start (index / fps).
        error: what went wrong with this frame, or None.
        digest: a short hash of the decoded pixels (with ``FrameReader(..., digests=True)``): two
            decodes of one frame have the same, so a segment's frames can be checked against the
            frames another reader decoded (:mod:`.assembly`).
    """

    index: int
    image: np.ndarray | None
    timestamp: float
    error: str | None = None
    digest: str | None = None


def frame_digest(image: np.ndarray) -> str:
    """16 hex digits of a frame's pixels (every 4th row and column: fast, and enough to tell frames apart)."""
    return hashlib.blake2b(np.ascontiguousarray(image[::4, ::4]).tobytes(), digest_size=8).hexdigest()


class FrameReader:
    """Iterates over the frames of a video file or an image folder, decoding ahead in a thread.

    Args:
        source: a video file, or a folder of images (read in name order).
        buffer: frames decoded ahead.
        max_gap: consecutive undecodable frames after which a video is taken to have ended.
        start: the first frame to read (a video seeks to it; frames keep their numbers in the
            whole source).
        stop: the frame before which to stop (None: the end); a reader that stops there does not
            check how the source ends.
        digests: give each frame its :attr:`Frame.digest`.

    Attributes:
        fps: frames per second (the video's, or 30 for an image folder).
        expected_frames: what the container says (0 when unknown).
        problems: what went wrong with the source as a whole (cannot be opened, ended early).
    """

    def __init__(self, source: str | Path, buffer: int = 32, max_gap: int = 8, start: int = 0,
                 stop: int | None = None, digests: bool = False) -> None:
        self.source = Path(source)
        self.max_gap = max_gap
        self.start, self.stop, self.digests = start, stop, digests
        self.problems: list[str] = []
        self.fps = IMAGE_SEQUENCE_FPS
        self.expected_frames = 0
        self._images: list[Path] | None = None
        self._capture = None
        self._container: Declared | None = None
        if self.source.is_dir():
            self._images = sorted(p for p in self.source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            self.expected_frames = len(self._images)
            if not self._images:
                self.problems.append("no image files in the folder")
        elif not self.source.is_file():
            self.problems.append("file not found")
        else:
            self._container = declared(self.source)
            capture = cv2.VideoCapture(str(self.source))
            if not capture.isOpened():
                self.problems.append("not a readable video (OpenCV cannot open it)")
                capture.release()
            else:
                self._capture = capture
                fps = capture.get(cv2.CAP_PROP_FPS)
                self.fps = fps if np.isfinite(fps) and fps > 0 else IMAGE_SEQUENCE_FPS
                self.expected_frames = max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
        self._queue: queue.Queue = queue.Queue(maxsize=buffer)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"frames:{self.source.name}", daemon=True)
        self._thread.start()

    @staticmethod
    def count(source: str | Path) -> int:
        """The frames a source announces (0 when unknown or unreadable), without decoding."""
        source = Path(source)
        if source.is_dir():
            return sum(p.suffix.lower() in IMAGE_SUFFIXES for p in source.iterdir())
        capture = cv2.VideoCapture(str(source)) if source.is_file() else None
        if capture is None or not capture.isOpened():
            return 0
        frames = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        capture.release()
        return max(0, int(frames))

    @staticmethod
    def describe(source: str | Path) -> tuple[int, float, bool]:
        """(frames, frames per second, seekable) of a source, from its header (a file that is shorter
        than its container declares is counted by decoding it: its header's count is wrong). Not
        seekable: what is neither a regular file nor an image folder (a camera, a pipe)."""
        source = Path(source)
        if source.is_dir():
            return FrameReader.count(source), IMAGE_SEQUENCE_FPS, True
        if not source.is_file():
            return 0, IMAGE_SEQUENCE_FPS, False
        capture = cv2.VideoCapture(str(source))
        if not capture.isOpened():
            return 0, IMAGE_SEQUENCE_FPS, False
        fps = capture.get(cv2.CAP_PROP_FPS)
        frames = max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
        container = declared(source)
        if container is not None and container.truncated:
            frames = 0
            while capture.grab():
                frames += 1
        capture.release()
        return frames, fps if np.isfinite(fps) and fps > 0 else IMAGE_SEQUENCE_FPS, True

    @property
    def readable(self) -> bool:
        return self._capture is not None or bool(self._images)

    def _put(self, item: Frame | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            frames = self._decode_images() if self._images is not None else self._decode_video()
            for frame in frames:
                if not self._put(frame):
                    return
        except Exception as err:                                   # never let the thread die silently
            self.problems.append(f"decoding stopped: {err}")
        finally:
            if self._capture is not None:
                self._capture.release()
            self._put(None)

    def _frame(self, index: int, image: np.ndarray | None, error: str | None = None) -> Frame:
        digest = frame_digest(image) if self.digests and image is not None else None
        return Frame(index, image, index / self.fps, error, digest)

    def _decode_images(self) -> Iterator[Frame]:
        images = self._images or []
        for index in range(self.start, len(images) if self.stop is None else min(self.stop, len(images))):
            path = images[index]
            try:
                image, error = bgr_frame(read_image(path)), None
            except ValueError as err:
                image, error = None, str(err).replace(str(path), path.name)
            yield self._frame(index, image, error)

    def _decode_video(self) -> Iterator[Frame]:
        capture, index, pending = self._capture, self.start, 0
        if self.start and capture is not None:
            capture.set(cv2.CAP_PROP_POS_FRAMES, self.start)       # checked by the frames' digests (:mod:`.assembly`)
        duration = self._container.duration if self._container is not None else None
        last_ms = 0.0                                              # the last decoded frame's stream time
        while capture is not None and not self._stop.is_set() and (self.stop is None or index < self.stop):
            ok, image = capture.read()
            if not ok or image is None or not image.size:
                pending += 1
                if pending > self.max_gap or (self.expected_frames and index + pending > self.expected_frames):
                    break
                continue
            for _ in range(pending):                               # undecodable frames between good ones
                yield self._frame(index, None, "frame could not be decoded")
                index += 1
            pending = 0
            if duration:                                           # read only where there is one to compare
                last_ms = capture.get(cv2.CAP_PROP_POS_MSEC)
            yield self._frame(index, image)
            index += 1
        if self._stop.is_set() or self.stop is not None and index >= self.stop:
            return                                                  # closed, or a segment: the source goes on
        # a backend without stream times reports 0 for every frame: no time to compare then
        ended = last_ms / 1000 + 1 / self.fps if index == 1 or last_ms > 0 else None
        self._check_end(index, ended)

    def _check_end(self, frames: int, ended: float | None) -> None:
        """One line in :attr:`problems` when the video ended early (``frames`` decoded, the last
        ending at ``ended`` seconds when known): the container's sizes first, as the most exact."""
        container = self._container
        cut = container.problem() if container is not None else None
        duration = container.duration if container is not None else None
        # containers estimate their frame count (WMV from its size): a few frames short is normal
        few = bool(self.expected_frames) and frames < 0.98 * self.expected_frames - 1
        early = bool(duration) and ended is not None and ended < duration - max(
            SHORT_OF_DURATION[0], SHORT_OF_DURATION[1] * duration)
        if frames == 0:
            ending = "no frame could be decoded"
        elif early:                                 # before ``few``: where there is a duration, the count is estimated
            ending = f"video ended after {frames} frames, at {ended:.1f} s of the {duration:.1f} s its header announces"
        elif few:
            ending = f"video ended after {frames} of the {self.expected_frames} frames its header announces"
        else:
            ending = None
        if cut:
            self.problems.append(cut + (f"; {ending}" if ending else f"; video ended after {frames} frames"))
        elif ending:
            self.problems.append(ending + ("" if frames == 0 else " (truncated or damaged file)"))

    def __iter__(self) -> Iterator[Frame]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            yield item

    def close(self) -> None:
        """Stop decoding (frames not yet read are dropped)."""
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> "FrameReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bgr_frame(image: np.ndarray) -> np.ndarray:
    """An image as :func:`~torch_clnf.images.read_image` gives it (grey or BGR, uint8 or float32
    grey levels 0–255, any bit depth of file) as a video frame: (H, W, 3) BGR uint8."""
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image


def video_sources(paths: list[str | Path]) -> list[Path]:
    """The sources a command line names: files as given; a folder of videos → every video in it
    (name order); a folder of images → itself, as one image sequence."""
    sources: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            videos = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
            sources += videos if videos else [path]
        else:
            sources.append(path)
    return sources
