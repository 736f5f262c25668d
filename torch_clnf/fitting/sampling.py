"""Areas of interest: the image around every landmark, in the patch experts' reference frame."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.linalg import atan2
from ..models.sync import static_graph


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
    angle = atan2(cross, dot)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    return (dst_rms / src_rms)[:, None, None] * rotation


MARGIN = 2   # zero pixels around padded images: a tap clamped into the margin reads 0


def pad_images(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W) → (N, H + 4, W + 4) with a zero margin, what :func:`sample_areas` reads from."""
    return F.pad(images, (MARGIN, MARGIN, MARGIN, MARGIN))


def sample_areas(padded: torch.Tensor, image_index: torch.Tensor, landmarks: torch.Tensor,
                 reference_to_image: torch.Tensor, size: int) -> torch.Tensor:
    """Square areas of interest around every landmark, warped into the reference frame.

    Area pixel ``(u, v)`` (centre ``c = (size − 1) / 2``) samples the image at
    ``landmark + A · (u − c, v − c)``, ``A`` the reference-to-image similarity: OpenFace's
    per-landmark ``warpAffine`` (bilinear, 0 outside the image) for all faces and landmarks in
    one gather. Positions are computed in OpenCV's fixed point: the part that depends on the
    area row and the part that depends on the column are each rounded to 1/1024 pixel, and
    their sum is kept to 1/32 pixel.

    Args:
        padded: (N, H + 4, W + 4) grey images from :func:`pad_images`.
        image_index: (B,) the image of each face.
        landmarks: (B, n, 2) pixels.
        reference_to_image: (B, 2, 2).
        size: area side, pixels (window + support − 1).
    Returns:
        (B, n, size, size).
    """
    centre = (size - 1) / 2
    steps = torch.arange(size, dtype=landmarks.dtype, device=landmarks.device)
    # int32 halves the memory traffic of the full-size integer steps; beyond ±2^20 pixels (a
    # diverged fit) positions saturate, and every tap is clamped into the image anyway (compiled:
    # int64, the image's size being a variable there, and the steps fused into the gather)
    fixed = torch.int32 if not torch.compiler.is_compiling() and padded.numel() < 2 ** 31 - 1 else torch.long
    limit = float(2 ** 30)
    height, width = padded.shape[1] - 2 * MARGIN, padded.shape[2] - 2 * MARGIN
    stride = padded.shape[2]
    pixels, fractions = [], []
    for axis, bound in ((0, width), (1, height)):     # x, then y: each full-size tensor contiguous
        across = reference_to_image[:, axis, 0, None, None, None]                    # (B, 1, 1, 1) per area column
        down = reference_to_image[:, axis, 1, None, None, None]                      # per area row
        origin = landmarks[..., axis, None, None] - centre * (across + down)          # (B, n, 1, 1)
        row_part = torch.round((origin + down * steps[:, None]) * 1024).clamp_(-limit, limit).to(fixed)   # (B, n, size, 1)
        column_part = (torch.round(across * steps * 1024) + 16).clamp_(-limit, limit).to(fixed)             # (B, 1, 1, size)
        position = (row_part + column_part) >> 5                # 1/32 px, (B, n, size, size)
        fractions.append((position & 31).to(landmarks.dtype).mul_(1 / 32))
        pixels.append((position >> 5).clamp_(-MARGIN, bound))
    x0, y0 = pixels
    origin_index = (image_index * padded[0].numel() + MARGIN * stride + MARGIN).to(fixed)
    top_left = (y0 * stride).add_(x0).add_(origin_index[:, None, None, None])       # (B, n, size, size)
    flat = padded.reshape(-1)
    if static_graph():       # one gather of the four taps, tap-major (flat[index] would copy all images first)
        corners = torch.tensor([0, 1, stride, stride + 1], dtype=fixed, device=top_left.device).view(4, 1, 1, 1, 1)
        taps = flat.index_select(0, (corners + top_left).view(-1)).view(4, *top_left.shape)
    else:                    # each tap gathered from the images seen from its offset: no index arrays to add
        index = top_left.view(-1)
        taps = [flat[offset:].index_select(0, index).view(top_left.shape) for offset in (0, 1, stride, stride + 1)]
    fx, fy = fractions
    top = torch.lerp(taps[0], taps[1], fx)
    bottom = torch.lerp(taps[2], taps[3], fx)
    return torch.lerp(top, bottom, fy)
