"""Turning user images (paths, arrays, tensors; any sizes) into one batch of grey images."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import cv2
import numpy as np
import torch

ImageLike = Union[str, Path, np.ndarray, torch.Tensor]


def read_image(path: str | Path) -> np.ndarray:
    """A BGR or grey image from a file, uint8 or float32 grey levels 0–255; ValueError naming the file
    when it cannot be read.

    As OpenCV's default reading (and OpenFace's), a photo is turned upright by its EXIF
    orientation and an alpha channel is dropped. Deeper images are scaled by their type's range,
    not taken as grey levels: 16-bit (and other unsigned integer) pixels by 255 / their maximum,
    float pixels (TIFF, EXR), which are 0–1 by convention, by 255; a float image with values
    outside 0–1 is refused rather than guessed at.
    """
    image = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if image is None:
        raise ValueError(f"{path}: not a readable image file")
    if image.dtype.kind == "f":
        image = image.astype(np.float32)
        finite = image[np.isfinite(image)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if low < 0 or high > 1:
            raise ValueError(f"{path}: float pixels from {low:g} to {high:g}; expected 0–1 (the convention of float "
                             "image files): save it as an 8- or 16-bit image, or pass the pixels as an array of "
                             "grey levels 0–255")
        return image * 255
    return _scaled_to_bytes(image, str(path))


def _scaled_to_bytes(image: np.ndarray, name: str) -> np.ndarray:
    """Integer pixels as uint8 grey levels: unsigned types scaled by 255 / their maximum (16-bit:
    65535 → 255), rounded; uint8 and float arrays as they are; other types a ValueError."""
    if image.dtype == np.uint8 or image.dtype.kind == "f":
        return image
    if image.dtype.kind != "u":
        raise ValueError(f"{name}: {image.dtype} pixels are not supported (expected unsigned 8- or 16-bit integers "
                         "or floats)")
    scale = 255.0 / np.iinfo(image.dtype).max
    return np.clip(np.rint(image.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def as_array(image: ImageLike) -> np.ndarray:
    """One image as OpenCV holds it: (H, W) grey or (H, W, 3) BGR, uint8 or float32; checked.

    Accepts a path (:func:`read_image`); a NumPy array (H, W) grey or (H, W, 3) BGR; a tensor
    (H, W) grey or (3, H, W) BGR. Float arrays are grey levels 0–255; 16-bit (unsigned integer)
    arrays are scaled by their type's range. Raises ValueError for other shapes and types, empty
    images and NaN / infinite pixels.
    """
    if isinstance(image, (str, Path)):
        image = read_image(image)
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.dim() == 3 and tensor.shape[0] in (1, 3):
            tensor = tensor.permute(1, 2, 0)
        image = tensor.numpy()
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"expected a grey (H, W) or BGR (H, W, 3) image, found shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected a non-empty image, found shape {image.shape}")
    if image.dtype == np.bool_:
        raise ValueError("bool pixels are not supported (expected grey levels)")
    if image.dtype.kind in "ui":
        image = _scaled_to_bytes(image, "the image") if image.dtype.kind == "u" else image.astype(np.float32)
    if image.dtype != np.uint8:
        image = image.astype(np.float32)
        if not np.isfinite(image).all():
            raise ValueError("the image has NaN or infinite pixels")
        if 0 < image.max() <= 1:
            warnings.warn("float pixels all within 0–1 are read as grey levels 0–255, a nearly black image "
                          "(multiply by 255 first)", stacklevel=3)
    return image


def to_grey(image: ImageLike) -> torch.Tensor:
    """One image → (H, W) float32 grey levels 0–255, converted as OpenFace does (OpenCV's BGR→grey)."""
    return torch.from_numpy(grey_levels(image).astype(np.float32))


def grey_levels(image: ImageLike) -> np.ndarray:
    """One image → (H, W) grey levels in its own dtype (uint8 or float32), OpenCV's BGR→grey."""
    image = as_array(image)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return np.ascontiguousarray(image)


@dataclass
class ImageBatch:
    """Images prepared once for detection, fitting and validation.

    Attributes:
        originals: the N images as OpenCV arrays ((H, W) grey or (H, W, 3) BGR), for the detector.
        padded: (N, H + 2·margin, W + 2·margin) grey, each image at (margin, margin), zeros elsewhere.
        sizes: (N, 2) (width, height) pixels.
        margin: the zero border, pixels.
    """

    originals: list[np.ndarray]
    padded: torch.Tensor
    sizes: torch.Tensor
    margin: int

    def __len__(self) -> int:
        return len(self.originals)

    def grey(self, k: int) -> torch.Tensor:
        """(H, W) the grey levels of image k (a view into ``padded``)."""
        width, height = (int(v) for v in self.sizes[k].tolist())
        m = self.margin
        return self.padded[k, m: m + height, m: m + width]


def prepare_images(images: Sequence[ImageLike] | ImageLike | ImageBatch, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32, margin: int = 0) -> ImageBatch:
    """Images of any sizes → an :class:`ImageBatch` (an ImageBatch already on ``device`` passes through).

    Raises ValueError naming the image that is empty, unreadable, NaN or of a wrong shape.
    """
    if isinstance(images, ImageBatch):
        if images.margin != margin:
            return prepare_images(images.originals, device, dtype, margin)
        return ImageBatch(images.originals, images.padded.to(device, dtype), images.sizes.to(device, dtype), margin)
    if isinstance(images, (str, Path, np.ndarray, torch.Tensor)):
        images = [images]
    if len(images) == 0:
        raise ValueError("expected at least one image")
    originals, greys = [], []
    for k, image in enumerate(images):
        try:
            original = as_array(image)
            originals.append(original)
            greys.append(grey_levels(original))     # converted to dtype by the copy into the batch
        except ValueError as err:
            raise ValueError(f"image {k}: {err}") from None
    height = max(g.shape[0] for g in greys)
    width = max(g.shape[1] for g in greys)
    batch = torch.empty(len(greys), height + 2 * margin, width + 2 * margin, dtype=dtype)
    for k, grey in enumerate(greys):              # each image, and zeros only around it (not a whole fill)
        h, w = grey.shape
        batch[k, margin: margin + h, margin: margin + w] = torch.from_numpy(grey)
        batch[k, :margin] = 0
        batch[k, margin + h:] = 0
        batch[k, margin: margin + h, :margin] = 0
        batch[k, margin: margin + h, margin + w:] = 0
    sizes = torch.tensor([[g.shape[1], g.shape[0]] for g in greys], dtype=dtype)
    return ImageBatch(originals, batch.to(device), sizes.to(device), margin)


def batch_images(images: Sequence[ImageLike] | ImageLike, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, margin: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of any sizes → one (N, H + 2·margin, W + 2·margin) grey batch and their (N, 2) (width, height)."""
    batch = prepare_images(images, device, dtype, margin)
    return batch.padded, batch.sizes
