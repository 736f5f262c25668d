"""Areas of interest: the image around every landmark, in the patch experts' reference frame."""
from __future__ import annotations

import torch


def align_similarity(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The 2×2 scale-and-rotation that best maps centred ``source`` shapes onto ``target`` shapes.

    OpenFace's ``AlignShapesWithScale``: both shapes are centred and scaled to unit RMS, the
    rotation is the least-squares (Kabsch) one without reflection, and the scale is the ratio of
    the RMS sizes. In 2D the rotation has a closed form (``atan2`` of the cross and dot sums).

    Args:
        source, target: (B, n, 2).
    Returns:
        (B, 2, 2) ``A`` with ``A @ (source_i − mean) ≈ target_i − mean``.
    """
    src = source - source.mean(1, keepdim=True)
    dst = target - target.mean(1, keepdim=True)
    src_rms = torch.sqrt((src * src).sum((1, 2)) / src.shape[1])
    dst_rms = torch.sqrt((dst * dst).sum((1, 2)) / dst.shape[1])
    src, dst = src / src_rms[:, None, None], dst / dst_rms[:, None, None]
    dot = (src * dst).sum((1, 2))
    cross = (src[..., 0] * dst[..., 1] - src[..., 1] * dst[..., 0]).sum(1)
    angle = torch.atan2(cross, dot)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    return (dst_rms / src_rms)[:, None, None] * rotation


def opencv_position(row_part: torch.Tensor, column_part: torch.Tensor) -> torch.Tensor:
    """A warp's source coordinate ``row_part + column_part`` as OpenCV's ``warpAffine`` computes it.

    OpenCV rounds the part that depends on the output row (``M[1]·v + M[2]``) and the part that
    depends on the output column (``M[0]·u``) to 1/1024 pixel each, adds them, and keeps 1/32 pixel.
    """
    fixed = torch.round(row_part * 1024) + torch.round(column_part * 1024) + 16
    return torch.floor(fixed / 32) / 32


def bilinear(images: torch.Tensor, image_index: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of grey images at pixel coordinates, 0 outside the image.

    Args:
        images: (N, H, W) grey images (smaller images zero-padded to a common size).
        image_index: (B,) int64, the image of each face.
        x, y: (B, ...) pixel coordinates (x right, y down; pixel centres at integers).
    Returns:
        (B, ...) samples, the images' dtype.
    """
    count, height, width = images.shape
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    flat = images.reshape(-1)
    base = (image_index * (height * width)).reshape(-1, *([1] * (x.dim() - 1)))
    out = torch.zeros_like(x)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
            index = base + yi.clamp(0, height - 1) * width + xi.clamp(0, width - 1)
            out = out + torch.where(inside, flat[index], torch.zeros_like(out)) * (wx * wy)
    return out


def sample_areas(images: torch.Tensor, image_index: torch.Tensor, landmarks: torch.Tensor,
                 reference_to_image: torch.Tensor, size: int) -> torch.Tensor:
    """Square areas of interest around every landmark, warped into the reference frame.

    Area pixel ``(u, v)`` (centre ``c = (size − 1) / 2``) samples the image at
    ``landmark + A · (u − c, v − c)``, ``A`` the reference-to-image similarity: OpenFace's
    per-landmark ``warpAffine`` (bilinear, 0 outside, positions in OpenCV's fixed point) for all
    faces and landmarks in one gather.

    Args:
        images: (N, H, W) grey images.
        image_index: (B,) the image of each face.
        landmarks: (B, n, 2) pixels.
        reference_to_image: (B, 2, 2).
        size: area side, pixels (window + support − 1).
    Returns:
        (B, n, size, size).
    """
    centre = (size - 1) / 2
    steps = torch.arange(size, dtype=landmarks.dtype, device=landmarks.device)
    a = reference_to_image[:, None, :, :, None, None]                          # (B, 1, 2, 2, 1, 1)
    origin = landmarks[..., None, None] - centre * (a[:, :, :, 0] + a[:, :, :, 1])   # (B, n, 2, 1, 1)
    row_part = origin + a[:, :, :, 1] * steps[:, None]                          # (B, n, 2, size, 1): depends on v
    column_part = a[:, :, :, 0] * steps                                         # (B, 1, 2, 1, size): depends on u
    x = opencv_position(row_part[:, :, 0], column_part[:, :, 0])
    y = opencv_position(row_part[:, :, 1], column_part[:, :, 1])
    return bilinear(images, image_index, x, y)
