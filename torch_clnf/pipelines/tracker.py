"""OpenFace's video tracking, batched over many streams (videos) at once.

One face per stream (the default) follows OpenFace's ``DetectLandmarksInVideo`` (what
FeatureExtraction runs): the face model keeps whether tracking is initialised, whether the last
frame's fit succeeded, and how many frames in a row failed; it re-detects (MTCNN, then an
11-hypothesis fit) every ``reinit_every`` failed frames while tracking, every
``6 · reinit_every`` frames before a face was found. Several faces per stream
(``max_faces > 1``) follow OpenFace's FaceLandmarkVidMulti: every ``detect_every`` frames, while
a face slot is free, the detector runs and faces not overlapping a tracked one start new tracks;
a track that fails more than ``multi_failures`` frames in a row is dropped.

A frame step fits every tracked face of every stream in one batch from its previous params and
validates the fits in one batch. A stream's faces never depend on another stream's, so N
streams in lockstep give the landmarks each would give alone.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch

from ..images import ImageBatch
from ..landmark_model import FitResult, LandmarkModel


@dataclass(frozen=True)
class TrackingConfig:
    """When to re-detect (OpenFace's ``FaceModelParameters``), and the speed knobs of tracking.

    The defaults are OpenFace's behaviour; ``fit_every`` and ``adaptive_windows`` trade accuracy
    for speed (``bench/knobs.py`` measures both on the sample videos).

    Attributes:
        reinit_every: while a tracked face fails validation, re-detect every this many frames
            (0: never); before any face was found, every ``6 ·`` this many frames.
        max_failures: after more failed frames in a row, tracking is reset (the next detection
            starts afresh, as on the first frame).
        multi_view: fit a new detection (the first frame of a track, or a re-detection) from the 11
            head-rotation hypotheses (:meth:`LandmarkModel.fit`); False: from rotation 0 alone.
        fit_every: fit a tracked face on every Nth frame only; the frames in between are marked
            ``skipped`` (``track_videos`` blends their landmarks between the fits around them).
            A face whose last fit failed is fitted on every frame.
        adaptive_windows: tracking window sizes per scale to try first (e.g. ``(0, 0, 7, 0)``);
            a face whose fit then fails validation is fitted again with the usual tracking windows.
        max_faces: faces tracked per stream; above 1, OpenFace's multi-face tracking.
        detect_every: with several faces, look for new ones every this many frames.
        multi_failures: with several faces, drop a track after more failed frames in a row.
        overlap: with several faces, a detection whose box overlaps a tracked face's box by
            more than this (intersection over union) is that face.
    """

    reinit_every: int = 2
    max_failures: int = 100
    multi_view: bool = True
    fit_every: int = 1
    adaptive_windows: tuple[int, ...] | None = None
    max_faces: int = 1
    detect_every: int = 8
    multi_failures: int = 4
    overlap: float = 0.5


@dataclass
class FaceTrack:
    """One stream's face model between frames (OpenFace's CLNF tracking state).

    Attributes:
        initialised: a face has been found and is being tracked.
        success: the last fit passed validation (the next frame then uses the small windows).
        failures: failed frames in a row (-1 after a success, as OpenFace counts).
        result: the last fit, one face (None before the first detection).
        face_id: the face's number in its stream (0: the first face found; a face found after
            tracking was lost or reset gets a new number).
    """

    initialised: bool = False
    success: bool = False
    failures: int = -1
    result: FitResult | None = None
    face_id: int = -1
    since_fit: int = 0


@dataclass
class FrameFit:
    """What a step produced for one stream's frame.

    Attributes:
        result: the face's fit (one face), or None when no face has been found yet.
        face_id: the face's number in its stream (-1 when there is none).
        detected: this frame ran the face detector.
        skipped: not fitted (``fit_every``): ``result`` is the last fit, held.
    """

    result: FitResult | None
    face_id: int
    detected: bool = False
    skipped: bool = False


class Tracker:
    """Tracks the faces of ``streams`` videos, all advanced together one frame per step.

    Example:
        >>> tracker = Tracker(model, streams=2)
        >>> faces = tracker.step([frame_a, frame_b])     # BGR arrays; None for a missing frame
        >>> faces[0][0].result.landmarks.shape           # stream 0, its first face
        torch.Size([1, 68, 2])
    """

    def __init__(self, model: LandmarkModel, streams: int, config: TrackingConfig | None = None) -> None:
        self.model = model
        self.config = config or TrackingConfig()
        if self.config.max_faces < 1 or self.config.fit_every < 1:
            raise ValueError("TrackingConfig: max_faces and fit_every must be at least 1")
        self.tracks: list[list[FaceTrack]] = []
        self.frames_seen: list[int] = []
        self.faces_seen: list[int] = []
        for _ in range(streams):
            self.tracks.append([])
            self.frames_seen.append(0)
            self.faces_seen.append(0)
            self.reset(len(self.tracks) - 1)

    @property
    def multi_face(self) -> bool:
        return self.config.max_faces > 1

    def reset(self, stream: int, first_frame: int = 0) -> None:
        """Forget a stream's faces: a new video starts in that stream, at frame ``first_frame`` (a
        segment of a video starts later; several faces are looked for on the frames a run from
        the video's start would look on)."""
        self.tracks[stream] = [FaceTrack() for _ in range(self.config.max_faces)]
        self.frames_seen[stream] = first_frame
        self.faces_seen[stream] = 0

    def snapshot(self) -> tuple:
        """The state of every stream, to :meth:`restore` after a step that failed part-way."""
        return ([[replace(track) for track in stream] for stream in self.tracks], list(self.frames_seen),
                list(self.faces_seen))

    def restore(self, snapshot: tuple, stream: int | None = None) -> None:
        """Put back the state of one stream (or all) from :meth:`snapshot`."""
        tracks, frames_seen, faces_seen = snapshot
        for s in range(len(self.tracks)) if stream is None else [stream]:
            self.tracks[s] = [replace(track) for track in tracks[s]]
            self.frames_seen[s], self.faces_seen[s] = frames_seen[s], faces_seen[s]

    def _new_face_id(self, stream: int) -> int:
        self.faces_seen[stream] += 1
        return self.faces_seen[stream] - 1

    @torch.inference_mode()
    def step(self, frames: Sequence[np.ndarray | torch.Tensor | None]) -> list[list[FrameFit] | None]:
        """Advance every stream by one frame.

        Args:
            frames: one image per stream (BGR or grey, as OpenCV reads it); None where a stream
                has no frame this step (ended, or a frame that could not be decoded): its state
                is left as it is and its entry in the output is None.
        Returns:
            per stream, its faces: with one face per stream always one :class:`FrameFit` (its
            ``result`` None until a face is found); with several, one per tracked face.
        """
        if len(frames) != len(self.tracks):
            raise ValueError(f"expected {len(self.tracks)} frames (one per stream), found {len(frames)}")
        present = [s for s, frame in enumerate(frames) if frame is not None]
        out: list[list[FrameFit] | None] = [None] * len(frames)
        if not present:
            return out
        batch = self.model.prepare([frames[s] for s in present])
        image_of = {s: k for k, s in enumerate(present)}
        if self.multi_face:
            for s in present:                       # OpenFace drops a track failing too long before the frame
                for k, track in enumerate(self.tracks[s]):
                    if track.initialised and track.failures > self.config.multi_failures:
                        self.tracks[s][k] = FaceTrack()
            detections = self._look_for_faces(batch, present, image_of)
        skipped = self._track(batch, [(s, k) for s in present for k, t in enumerate(self.tracks[s]) if t.initialised],
                              image_of)
        if self.multi_face:
            detected = self._start_tracks(batch, detections, image_of)
        else:
            detected = self._redetect(batch, present, image_of)
        for s in present:
            self.frames_seen[s] += 1
            faces = []
            for k, track in enumerate(self.tracks[s]):
                if not self.multi_face:
                    if not track.initialised:
                        track.failures += 1
                    if track.failures > self.config.max_failures:
                        track.initialised = False
                elif not track.initialised:
                    continue
                faces.append(FrameFit(track.result, track.face_id if track.result is not None else -1,
                                      (s, k) in detected, (s, k) in skipped and (s, k) not in detected))
            out[s] = faces
        return out

    def _track(self, batch: ImageBatch, tracked: list[tuple[int, int]], image_of: dict[int, int]) -> set[tuple[int, int]]:
        """Fit every initialised face from its previous params (OpenFace's tracking branch);
        returns the faces whose fit was skipped (``fit_every``)."""
        fit, skipped = [], set()
        for s, k in tracked:
            track = self.tracks[s][k]
            track.since_fit += 1
            if track.success and track.since_fit < self.config.fit_every:
                skipped.add((s, k))
            else:
                fit.append((s, k))
                track.since_fit = 0
        if not fit:
            return skipped
        previous = FitResult.cat([self.tracks[s][k].result for s, k in fit])
        index = [image_of[s] for s, _ in fit]
        fitted = self.model.track(batch, previous, image_index=index, window_sizes=self.config.adaptive_windows)
        if self.config.adaptive_windows is not None:
            weak = (previous.success & ~fitted.success).nonzero().flatten().tolist()
            if weak:                                # grow the windows where the small ones failed
                again = self.model.track(batch, previous[torch.tensor(weak)], image_index=[index[j] for j in weak])
                fitted = FitResult.cat([again[weak.index(j)] if j in weak else fitted[j] for j in range(len(fitted))])
        for j, (s, k) in enumerate(fit):
            track = self.tracks[s][k]
            track.result = _one(fitted, j)
            track.success = bool(fitted.success[j])
            track.failures = -1 if track.success else track.failures + 1
        return skipped

    def _wants_detection(self, track: FaceTrack) -> bool:
        every = self.config.reinit_every
        if not track.initialised:
            return every > 0 and (track.failures + 1) % (every * 6) == 0
        return not track.success and every > 0 and track.failures % every == 0

    def _redetect(self, batch: ImageBatch, present: list[int], image_of: dict[int, int]) -> set[tuple[int, int]]:
        """One face per stream: detect and fit anew where OpenFace would; keep a re-detection of a
        tracked face only if it validates."""
        wanted = [s for s in present if self._wants_detection(self.tracks[s][0])]
        if not wanted:
            return set()
        found = self.model.detect([batch.originals[image_of[s]] for s in wanted])
        streams = [s for s, d in zip(wanted, found) if len(d.boxes)]
        chosen = [d for d in found if len(d.boxes)]                      # the largest face, as OpenFace picks
        if streams:
            fitted = self.model.fit(batch, torch.stack([d.boxes[0] for d in chosen]).to(self.model.device, self.model.dtype),
                                    image_index=[image_of[s] for s in streams], multi_view=self.config.multi_view,
                                    points=_points([None if d.points is None else d.points[:1] for d in chosen]))
        for j, s in enumerate(streams):
            track = self.tracks[s][0]
            initial = not track.initialised
            track.initialised = True
            success = bool(fitted.success[j])
            if not initial and not success:
                # keep the previous estimate; the frame counts as failed, with the new fit's certainty
                track.result = replace(track.result, confidence=fitted.confidence[j:j + 1], success=fitted.success[j:j + 1])
                track.success = False
                continue
            if initial:
                track.face_id = self._new_face_id(s)
            track.result = _one(fitted, j)
            track.success = success
            track.failures = -1
            track.since_fit = 0
        return {(s, 0) for s in wanted}

    def _look_for_faces(self, batch: ImageBatch, present: list[int],
                        image_of: dict[int, int]) -> dict[int, list[tuple[torch.Tensor, torch.Tensor | None]]]:
        """Several faces per stream: where a slot is free on a detection frame, the detected faces
        (box, five points) whose boxes overlap no tracked face (boxes of the previous frame's
        landmarks), largest first."""
        wanted = [s for s in present if self.frames_seen[s] % self.config.detect_every == 0
                  and not all(t.initialised for t in self.tracks[s])]
        if not wanted:
            return {}
        found = self.model.detect([batch.originals[image_of[s]] for s in wanted])
        new: dict[int, list[tuple[torch.Tensor, torch.Tensor | None]]] = {}
        for s, detections in zip(wanted, found):
            tracked = [_landmark_box(t.result) for t in self.tracks[s] if t.initialised and t.result is not None]
            points = [None] * len(detections) if detections.points is None else detections.points.cpu()
            new[s] = [(box, point) for box, point in zip(detections.boxes.cpu(), points)
                      if all(_overlap(box, other) <= self.config.overlap for other in tracked)]
        return new

    def _start_tracks(self, batch: ImageBatch, detections: dict[int, list[tuple[torch.Tensor, torch.Tensor | None]]],
                      image_of: dict[int, int]) -> set[tuple[int, int]]:
        """Free slots take the new faces: a fit from the box (``multi_view``: from the 11 head-rotation
        hypotheses; the full windows)."""
        starts: list[tuple[int, int, tuple[torch.Tensor, torch.Tensor | None]]] = []
        for s, found in detections.items():
            free = [k for k, t in enumerate(self.tracks[s]) if not t.initialised]
            starts += [(s, k, face) for k, face in zip(free, found)]
        if not starts:
            return set()
        boxes = torch.stack([box for _, _, (box, _) in starts]).to(self.model.device, self.model.dtype)
        fitted = self.model.fit(batch, boxes, image_index=[image_of[s] for s, _, _ in starts],
                                multi_view=self.config.multi_view,
                                points=_points([None if p is None else p[None] for _, _, (_, p) in starts]))
        for j, (s, k, _) in enumerate(starts):
            success = bool(fitted.success[j])
            self.tracks[s][k] = FaceTrack(True, success, -1 if success else 0, _one(fitted, j), self._new_face_id(s))
        return {(s, k) for s, k, _ in starts}


def _points(points: list[torch.Tensor | None]) -> torch.Tensor | None:
    """The detector's (1, 5, 2) facial points of each new face stacked (B, 5, 2); None where any lacks them."""
    return None if any(p is None for p in points) else torch.cat(points)


def _landmark_box(result: FitResult) -> torch.Tensor:
    """(4,) x, y, width, height of a face's landmarks."""
    points = result.landmarks[0].detach().cpu().float()
    low, high = points.amin(0), points.amax(0)
    return torch.cat([low, high - low])


def _overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Intersection over union of two x, y, width, height boxes."""
    a, b = a.float(), b.float()
    width = (torch.minimum(a[0] + a[2], b[0] + b[2]) - torch.maximum(a[0], b[0])).clamp(min=0)
    height = (torch.minimum(a[1] + a[3], b[1] + b[3]) - torch.maximum(a[1], b[1])).clamp(min=0)
    inter = float(width * height)
    union = float(a[2] * a[3] + b[2] * b[3]) - inter
    return inter / union if union > 0 else 0.0


def _one(result: FitResult, k: int) -> FitResult:
    """Face k of a batch, with image index 0 (a stream's own frame)."""
    face = result[k]
    face.image_index = torch.zeros_like(face.image_index)
    return face


def blend(first: FitResult, last: FitResult, t: float) -> FitResult:
    """A frame between two fits of one face: every quantity linearly between them (``t`` 0 → 1);
    ``success`` where both succeeded, ``confidence`` the lower."""
    values = {}
    for name in ("landmarks", "landmarks_3d", "pose", "params_global", "params_local", "likelihood"):
        a, b = getattr(first, name), getattr(last, name)
        values[name] = a + (b - a) * t
    return FitResult(**values, confidence=torch.minimum(first.confidence, last.confidence),
                     success=first.success & last.success, image_index=last.image_index)
