"""Image files through the fitter a batch at a time: a folder of thousands of photos without
holding them all in memory, and an unreadable file reported without stopping the run."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..images import read_image
from ..landmark_model import FitResult, LandmarkModel
from .frames import IMAGE_SUFFIXES


@dataclass
class ImageFit:
    """What one image file gave.

    Attributes:
        path: the file.
        image: (H, W) grey or (H, W, 3) BGR uint8, as read; None when the file could not be read.
        faces: its faces that were kept (see :func:`kept_faces`), in the order found (``image_index``
            0, length 0 when no face was found or none was kept); None when unreadable.
        error: why the file could not be read; None when it was.
        face_ids: (K,) each kept face's number among the image's faces (0: the first found: the
            largest detected, or the given box).
        found: how many faces the image had (fitted, kept or not).
    """

    path: Path
    image: np.ndarray | None
    faces: FitResult | None
    error: str | None = None
    face_ids: torch.Tensor | None = None
    found: int = 0


def kept_faces(faces: FitResult, max_faces: int | None = None, min_confidence: float | None = None) -> torch.Tensor:
    """(K,) the numbers, in order, of the faces to keep among an image's ``faces``: those whose
    validator confidence is at least ``min_confidence`` (None: all), and of them the ``max_faces``
    most confident (None: all; the first found of equals)."""
    confidence = faces.confidence.detach().cpu()
    keep = torch.ones(len(confidence), dtype=torch.bool)
    if min_confidence is not None:
        keep &= confidence >= min_confidence
    if max_faces is not None:
        ranked = torch.where(keep, confidence, -torch.inf).sort(descending=True, stable=True).indices
        keep[ranked[max_faces:]] = False
    return keep.nonzero().flatten()


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """The images a command line names: files as given; a folder → the image files in it, in name order."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        else:
            files.append(path)
    return files


# at most this many image pixels per batch (33.5 MP: sixteen 1080p frames; detection works on
# float copies and pyramids of them, some 50 bytes a pixel at its peak), counted as the fitter's
# batch holds them: every image padded to the largest height and the largest width
MAX_BATCH_PIXELS = 1 << 25


def fit_image_files(model: LandmarkModel, paths: Sequence[str | Path], boxes: torch.Tensor | None = None,
                    batch: int = 16, multi_view: bool = True, max_pixels: int = MAX_BATCH_PIXELS,
                    max_faces: int | None = None, min_confidence: float | None = None) -> Iterator[ImageFit]:
    """Fit the faces in image files, up to ``batch`` files per :meth:`~LandmarkModel.fit`, one
    :class:`ImageFit` per file in order, as soon as its batch is done.

    Only one batch of images is held at a time, and a batch is closed early where its images
    would exceed ``max_pixels`` (a larger image is fitted alone), counted as the fitter holds
    them, each padded to the batch's largest height and width: a portrait photo among landscape
    ones, or one 12 MP photo among 1 MP ones, starts a new batch rather than making every image
    of the batch that large. A file that cannot be read gives an :class:`ImageFit` with its
    ``error`` and the run goes on.

    Args:
        paths: image files (see :func:`image_files` for folders).
        boxes: None (every face the detector finds), (4,) one ``x, y, width, height`` box for every
            file, or (N, 4) one per file.
        batch: files fitted together (more: faster per face, more memory).
        multi_view: as :meth:`LandmarkModel.fit` (default: from 11 head rotations; False: one start).
        max_pixels: the most pixels in one batch: its images times their largest height times
            their largest width.
        max_faces, min_confidence: which of an image's faces its :class:`ImageFit` keeps
            (:func:`kept_faces`); every face is fitted and counted in ``found``.
    """
    if batch < 1:
        raise ValueError(f"batch: expected at least 1 file per fit, found {batch}")
    if max_faces is not None and max_faces < 1:
        raise ValueError(f"max_faces: expected at least 1 face per image, found {max_faces}")
    choose = functools.partial(kept_faces, max_faces=max_faces, min_confidence=min_confidence)
    paths = [Path(p) for p in paths]
    if boxes is not None:
        boxes = torch.as_tensor(boxes, dtype=torch.float64)
        if boxes.shape == (4,):
            boxes = boxes.expand(len(paths), 4)
        if boxes.shape != (len(paths), 4):
            raise ValueError(f"boxes: expected (4,) for every file or ({len(paths)}, 4), one per file; "
                             f"found shape {tuple(boxes.shape)}")
    entries: list[tuple[int, np.ndarray | None, str | None]] = []      # (file, image or None, error)
    images = height = width = 0                     # the batch's readable images and their largest sides
    for k, path in enumerate(paths):
        try:
            image, error = read_image(path), None
        except ValueError as err:
            image, error = None, str(err)
        if image is not None:
            grown = (images + 1) * max(height, image.shape[0]) * max(width, image.shape[1])
            if images and (images == batch or grown > max_pixels):
                yield from _fit_entries(model, paths, entries, boxes, multi_view, choose)
                entries, images, height, width = [], 0, 0, 0
            images, height, width = images + 1, max(height, image.shape[0]), max(width, image.shape[1])
        entries.append((k, image, error))
    if entries:
        yield from _fit_entries(model, paths, entries, boxes, multi_view, choose)


def _fit_entries(model: LandmarkModel, paths: list[Path], entries: list[tuple[int, np.ndarray | None, str | None]],
                 boxes: torch.Tensor | None, multi_view: bool,
                 choose: Callable[[FitResult], torch.Tensor]) -> Iterator[ImageFit]:
    """One batch of :func:`fit_image_files`: its readable images in one fit, an ImageFit per entry
    with the faces ``choose`` keeps."""
    read = [(k, image) for k, image, _ in entries if image is not None]
    result = None
    if read:
        result = model.fit([image for _, image in read], None if boxes is None else boxes[[k for k, _ in read]],
                           multi_view=multi_view)
    position = {k: n for n, (k, _) in enumerate(read)}
    for k, image, error in entries:
        if image is None:
            yield ImageFit(paths[k], None, None, error)
            continue
        faces = result.of_image(position[k])
        faces.image_index = torch.zeros_like(faces.image_index)
        ids = choose(faces)
        yield ImageFit(paths[k], image, faces[ids.to(faces.landmarks.device)], face_ids=ids, found=len(faces))
