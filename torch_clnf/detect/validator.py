"""OpenFace's CNN detection validator: is a fitted 68-point shape on a face? Batched over faces.

For each face OpenFace picks the view whose orientation is nearest the fitted head rotation,
warps the grey image piecewise-affinely (triangle by triangle) from the landmarks onto the
view's reference shape (a 60×60 image, bilinear like ``cv::remap``), normalises the face
pixels (own mean and std, then the view's mean and std images), runs the view's CNN, and
turns the arg-max of its bins into a certainty in (0, 1). A fit succeeds when the certainty
exceeds ``validation_boundary`` (0.725 in OpenFace's defaults).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.compiling import batch_parts, compiled_function, consecutive_slices
from ..models.constants import widest_float
from ..openface.validator import DetectionValidatorData, read_validator

# OpenFace's default FaceModelParameters::validation_boundary.
VALIDATION_BOUNDARY = 0.725
# cv::remap quantises source coordinates to 1/32 pixel (INTER_BITS = 5).
REMAP_STEPS = 32
# OpenFace crops the image to the landmarks' bounding box grown by this much (pixels).
ROI_MARGIN = 3.0

GreyLike = Union[np.ndarray, torch.Tensor]


def _certainty_table(bins: int) -> np.ndarray:
    """(bins,) float32, the certainty of each arg-max bin: bin 0 is the most certain."""
    step = 2.0 / bins
    decision = -1.0 + step / 2.0 + np.arange(bins) * step
    return (0.5 * (1.0 - decision)).astype(np.float32)


def _to(tensor: torch.Tensor, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """Move small integer data before converting it, convert float data before moving it (MPS has no float64)."""
    if tensor.is_floating_point():
        return tensor.to(dtype=dtype).to(device)
    return tensor.to(device).to(dtype)


def pack_images(images: Sequence[GreyLike] | torch.Tensor, sizes: torch.Tensor | None = None, margin: int = 0,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey images → one flat pixel buffer and (N, 4) long (offset, row stride, width, height) per image.

    ``images``, ``sizes`` and ``margin`` as in :meth:`DetectionValidator.score`.
    """
    if isinstance(images, torch.Tensor) and images.dim() == 3:
        n, h, w = images.shape
        flat = _to(images, device, dtype).reshape(-1)
        info = torch.zeros(n, 4, dtype=torch.long, device=device)
        info[:, 0] = torch.arange(n, device=device) * (h * w) + margin * w + margin
        info[:, 1] = w
        if sizes is None:
            info[:, 2], info[:, 3] = w - 2 * margin, h - 2 * margin
        else:
            info[:, 2:] = torch.as_tensor(sizes).round().long().reshape(n, 2).to(device)
        return flat, info
    if isinstance(images, (np.ndarray, torch.Tensor)):
        images = [images]
    parts, rows, offset = [], [], 0
    for k, image in enumerate(images):
        tensor = torch.as_tensor(np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image)
        if tensor.dim() != 2 or tensor.numel() == 0:
            raise ValueError(f"image {k}: expected a grey (H, W) image, found shape {tuple(tensor.shape)}")
        h, w = tensor.shape
        parts.append(_to(tensor, device, dtype).reshape(-1))
        rows.append((offset, w, w, h))
        offset += h * w
    if not parts:
        raise ValueError("expected at least one image")
    return torch.cat(parts), torch.tensor(rows, dtype=torch.long, device=device)


class DetectionValidator(nn.Module):
    """OpenFace's CNN detection validator for many faces at once.

    The warp is one gather for all faces; the CNN runs once per view present in the batch.
    On CUDA, PyTorch lets cuDNN convolutions use TF32 by default; a near-tie between two bins
    may then fall the other way (set ``torch.backends.cudnn.allow_tf32 = False`` to avoid it).

    Args:
        data: the validator, from :func:`torch_clnf.openface.validator.read_validator`.
        dtype: working precision (float32 gives OpenFace's numbers; float64 is allowed).

    Example:
        >>> validator = load_validator("detection_validation/validator_cnn.txt")
        >>> certainty = validator.score([grey], torch.tensor([0]), landmarks, rotation)   # (1,)
        >>> success = certainty > VALIDATION_BOUNDARY
    """

    pixel_xy: torch.Tensor
    pixel_triangle: torch.Tensor
    pixel_index: torch.Tensor
    pixel_valid: torch.Tensor
    pixel_count: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    triangles: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor

    def __init__(self, data: DetectionValidatorData, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        views = data.views
        self.num_points = views[0].warp.destination.shape[0]
        if any(v.warp.destination.shape[0] != self.num_points for v in views):
            raise ValueError("all validator views must warp the same number of landmarks")
        self.orientations = data.orientations.astype(np.float64)                     # (V, 3) radians
        self.sizes = [tuple(v.warp.mask.shape) for v in views]                        # (H, W) per view
        self.kinds = [[layer.kind for layer in v.layers] for v in views]
        self.certainty_tables = [_certainty_table(v.bins) for v in views]
        self.pixel_counts = [v.warp.num_pixels for v in views]
        pixels = max(v.warp.num_pixels for v in views)
        tris = max(len(v.warp.triangles) for v in views)
        count = len(views)
        xy = np.zeros((count, pixels, 2), np.float32)
        tri_of = np.zeros((count, pixels), np.int64)
        index = np.zeros((count, pixels), np.int64)
        valid = np.zeros((count, pixels), bool)
        mean = np.zeros((count, pixels), np.float32)
        std = np.ones((count, pixels), np.float32)
        triangles = np.zeros((count, tris, 3), np.int64)
        alpha = np.zeros((count, tris, 3), np.float32)
        beta = np.zeros((count, tris, 3), np.float32)
        for v, view in enumerate(views):
            warp = view.warp
            # the face pixels in OpenFace's order: the mask read column by column
            cols, rows = np.nonzero(warp.mask.T)
            n = len(cols)
            xy[v, :n, 0] = cols.astype(np.float32) + np.float32(warp.min_x)          # float, as OpenFace
            xy[v, :n, 1] = rows.astype(np.float32) + np.float32(warp.min_y)
            tri_of[v, :n] = warp.triangle_id[rows, cols]
            index[v, :n] = rows * warp.mask.shape[1] + cols
            valid[v, :n] = True
            mean[v, :n], std[v, :n] = view.mean, view.std
            t = len(warp.triangles)
            triangles[v, :t] = warp.triangles
            alpha[v, :t], beta[v, :t] = warp.alpha, warp.beta
        self.register_buffer("pixel_xy", torch.from_numpy(xy).to(dtype))               # (V, P, 2) reference frame
        self.register_buffer("pixel_triangle", torch.from_numpy(tri_of))                # (V, P)
        self.register_buffer("pixel_index", torch.from_numpy(index))                    # (V, P) y·W + x
        self.register_buffer("pixel_valid", torch.from_numpy(valid))                    # (V, P)
        self.register_buffer("pixel_count", torch.tensor(self.pixel_counts))          # (V,)
        self.register_buffer("mean", torch.from_numpy(mean).to(dtype))                  # (V, P)
        self.register_buffer("std", torch.from_numpy(std).to(dtype))                    # (V, P)
        self.register_buffer("triangles", torch.from_numpy(triangles))                  # (V, T, 3)
        self.register_buffer("alpha", torch.from_numpy(alpha).to(dtype))                # (V, T, 3)
        self.register_buffer("beta", torch.from_numpy(beta).to(dtype))                  # (V, T, 3)
        for v, view in enumerate(views):
            for n, layer in enumerate(view.layers):
                if layer.weight is None:
                    continue
                weight = torch.from_numpy(layer.weight)                     # conv (out, in, kh, kw); fc (in, out)
                self.register_buffer(f"view{v}_layer{n}_weight", weight.to(dtype))
                self.register_buffer(f"view{v}_layer{n}_bias", torch.from_numpy(layer.bias).to(dtype))

    @property
    def num_views(self) -> int:
        return len(self.sizes)

    def view_index(self, rotation: torch.Tensor) -> torch.Tensor:
        """(B, 3) rotation (rx, ry, rz) radians → (B,) the nearest view (Euclidean, first on ties)."""
        work = widest_float(rotation.device)
        centres = torch.as_tensor(self.orientations, dtype=work, device=rotation.device)
        return (rotation.to(work)[:, None, :] - centres).norm(dim=-1).argmin(1)

    def score(self, images: Sequence[GreyLike] | torch.Tensor, image_index: torch.Tensor, landmarks: torch.Tensor,
              rotation: torch.Tensor, sizes: torch.Tensor | None = None, margin: int = 0,
              compiled: bool = False) -> torch.Tensor:
        """OpenFace's detection certainty of each fitted face.

        Args:
            images: the grey images (H, W), uint8 or float grey levels 0–255 (OpenFace feeds its
                uint8 grey image), as a list of arrays/tensors of any sizes, or one (N, H, W)
                tensor; a padded batch as :func:`torch_clnf.images.batch_images` makes needs
                ``sizes`` and ``margin``.
            image_index: (B,) the image of each face.
            landmarks: (B, 68, 2) fitted landmarks, pixels (x, y), 0-based.
            rotation: (B, 3) the fit's head rotation (rx, ry, rz) radians (params_global[1:4]).
            sizes: (N, 2) each image's (width, height) inside a padded (N, H, W) batch.
            margin: where each image starts inside the padded batch (pixels, both axes).
            compiled: warp and normalise from one compiled package (``FitConfig.compile``, see
                :mod:`~torch_clnf.models.compiling`; the images' size is its variable).

        Returns:
            (B,) certainty in (0, 1), one of ``bins`` levels (1 − (2k + 1) / (2·bins)); 0 where
            the landmarks' box (grown by 3 pixels, clipped to the image) is at most 1 pixel wide
            or high, or a landmark is not finite. Landmarks partly outside the image are handled
            as OpenFace does: pixels outside the clipped box read as 0.
        """
        device, dtype = self.mean.device, self.mean.dtype
        flat, info = pack_images(images, sizes, margin, device, dtype)
        if landmarks.dim() != 3 or landmarks.shape[1:] != (self.num_points, 2):
            raise ValueError(f"expected landmarks (B, {self.num_points}, 2), found {tuple(landmarks.shape)}")
        count = landmarks.shape[0]
        if rotation.shape != (count, 3):
            raise ValueError(f"expected rotation ({count}, 3), found {tuple(rotation.shape)}")
        image_index = torch.as_tensor(image_index, device=device).long().reshape(-1)
        if image_index.shape != (count,):
            raise ValueError(f"expected image_index ({count},), found {tuple(image_index.shape)}")
        if count == 0:
            return torch.zeros(0, dtype=dtype, device=device)
        if bool(((image_index < 0) | (image_index >= info.shape[0])).any()):
            raise ValueError(f"image_index must lie in [0, {info.shape[0]})")
        view = self.view_index(rotation).to(device)
        landmarks = _to(landmarks, device, dtype)
        warp = compiled_function(_warped_features, dynamic={1: (0,)}) if compiled else _warped_features
        blocks = batch_parts(count, lambda: warp.has_package(self, flat, info[image_index], landmarks, view)
                             ) if compiled else [count]                 # (packages are per number of faces)
        if len(blocks) == 1:
            features, box_ok = warp(self, flat, info[image_index], landmarks, view)
        else:
            warped = [warp(self, flat, info[image_index[faces]], landmarks[faces], view[faces])
                      for faces in consecutive_slices(blocks)]
            features, box_ok = (torch.cat(parts) for parts in zip(*warped))
        certainty = torch.zeros(count, dtype=dtype, device=device)
        for v in torch.unique(view).tolist():
            faces = (view == v).nonzero().squeeze(1)
            certainty[faces] = self.classify(features[faces], v)
        return torch.where(box_ok, certainty, torch.zeros_like(certainty))

    forward = score

    def warp(self, flat: torch.Tensor, info: torch.Tensor, landmarks: torch.Tensor,
             view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Piecewise affine warp of every face onto its view's reference frame, one gather for all.

        Args:
            flat: the images' pixels, one flat buffer; info: (B, 4) long, each face's image
                (offset, row stride, width, height); landmarks: (B, L, 2) pixels; view: (B,).

        Returns:
            values: (B, P) the warped face pixels in OpenFace's order (0 past the view's count).
            box_ok: (B,) False where OpenFace gives up (empty box, non-finite landmarks).
        """
        count = landmarks.shape[0]
        dtype = landmarks.dtype
        finite = torch.isfinite(landmarks).all(2).all(1)
        points = torch.where(finite[:, None, None], landmarks, torch.zeros_like(landmarks))
        # OpenFace's region of interest: the landmarks' box ± 3 px, truncated to int, clipped
        low = torch.trunc((points.amin(1) - ROI_MARGIN).clamp(-2 ** 30, 2 ** 30)).long().clamp(min=0)
        high = torch.trunc((points.amax(1) + ROI_MARGIN).clamp(-2 ** 30, 2 ** 30)).long()
        high = torch.minimum(high, info[:, 2:] - 1)
        extent = high - low                                                             # (B, 2) width, height
        box_ok = finite & (extent > 1).all(1)
        local = points - low.to(dtype)[:, None, :]

        # each triangle's affine map from the reference frame to the region (as PAW::CalcCoeff):
        # source = (s0 + d1·alpha) + d2·beta, with s0 only in the constant term
        tri = self.triangles[view]                                                      # (B, T, 3)
        corners = torch.gather(local, 1, tri.reshape(count, -1, 1).expand(-1, -1, 2)).reshape(*tri.shape, 2)
        corners = corners.transpose(2, 3)                                               # (B, T, 2 axes, 3)
        d1, d2 = corners[..., 1:2] - corners[..., :1], corners[..., 2:3] - corners[..., :1]
        constant = F.pad(corners[..., :1], (0, 2))                                      # (s0, 0, 0)
        coeffs = (constant + d1 * self.alpha[view][:, :, None]) + d2 * self.beta[view][:, :, None]
        pixel_coeffs = torch.gather(coeffs.reshape(count, -1, 6), 1,
                                    self.pixel_triangle[view][..., None].expand(-1, -1, 6)).reshape(count, -1, 2, 3)
        ref = self.pixel_xy[view][:, :, None, :]                                        # (B, P, 1, 2)
        source = (pixel_coeffs[..., 0] + pixel_coeffs[..., 1] * ref[..., 0]) + pixel_coeffs[..., 2] * ref[..., 1]

        # cv::remap, INTER_LINEAR, BORDER_CONSTANT 0: coordinates rounded to 1/32 px
        fixed = source.mul(REMAP_STEPS).clamp(-2 ** 30, 2 ** 30).round().long()       # (B, P, 2)
        corner = torch.div(fixed, REMAP_STEPS, rounding_mode="floor")
        frac = (fixed - corner * REMAP_STEPS).to(dtype) / REMAP_STEPS
        size = extent[:, None, :]
        first = (corner >= 0) & (corner < size)                                         # corner, corner + 1 inside
        second = (corner >= -1) & (corner < size - 1)
        inside = torch.stack([first[..., 1] & first[..., 0], first[..., 1] & second[..., 0],
                              second[..., 1] & first[..., 0], second[..., 1] & second[..., 0]], -1)
        stride = info[:, 1]
        origin = info[:, 0] + low[:, 1] * stride + low[:, 0]
        top_left = origin[:, None] + corner[..., 1] * stride[:, None] + corner[..., 0]  # (B, P)
        step = torch.stack([torch.zeros_like(stride), torch.ones_like(stride), stride, stride + 1], -1)
        index = top_left[..., None] + step[:, None]                                     # (B, P, 4) the 2×2 pixels
        pixels = flat[torch.where(inside, index, torch.zeros_like(index))] * inside     # one gather, all faces
        fx, fy = frac[..., 0], frac[..., 1]
        weights = torch.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], -1)
        products = pixels * weights
        values = ((products[..., 0] + products[..., 1]) + products[..., 2]) + products[..., 3]
        return values * self.pixel_valid[view], box_ok

    def normalise(self, values: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """(B, P) warped pixels → the CNN's features: own mean/std, then the view's mean/std images."""
        dtype = values.dtype
        work = widest_float(values.device)
        valid = self.pixel_valid[view]
        wide = values.to(work)
        scale = 1.0 / self.pixel_count[view].to(work)                                  # cv::meanStdDev
        mean = wide.sum(1) * scale
        std = (wide.square().sum(1) * scale - mean * mean).clamp(min=0).sqrt()
        std = torch.where(std == 0, torch.ones_like(std), std)
        centred = (values - mean.to(dtype)[:, None]) * (1.0 / std).to(dtype)[:, None]
        features = (centred - self.mean[view]) / self.std[view]
        return features * valid

    def classify(self, features: torch.Tensor, v: int) -> torch.Tensor:
        """(n, P) features of faces in view ``v`` → (n,) certainty from the arg-max bin."""
        count = features.shape[0]
        h, w = self.sizes[v]
        pixels = self.pixel_counts[v]
        image = features.new_zeros(count, h * w)
        image.scatter_(1, self.pixel_index[v, :pixels].expand(count, -1), features[:, :pixels])
        x = image.reshape(count, 1, h, w)
        for n, kind in enumerate(self.kinds[v]):
            if kind == "conv":
                x = F.conv2d(x, getattr(self, f"view{v}_layer{n}_weight"), getattr(self, f"view{v}_layer{n}_bias"))
            elif kind == "max_pool":
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            elif kind == "fully_connected":
                if x.dim() == 4:                                  # each map flattened column by column
                    x = x.transpose(2, 3).reshape(count, -1)
                x = x @ getattr(self, f"view{v}_layer{n}_weight") + getattr(self, f"view{v}_layer{n}_bias")
            elif kind == "relu":
                x = torch.relu(x)
            elif kind == "sigmoid":
                x = torch.sigmoid(x)
        table = torch.as_tensor(self.certainty_tables[v], device=x.device).to(features.dtype)
        return table[x.reshape(count, -1).argmax(1)]


def _warped_features(validator: DetectionValidator, flat: torch.Tensor, info: torch.Tensor, landmarks: torch.Tensor,
                     view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`DetectionValidator.warp` then :meth:`~DetectionValidator.normalise`: (B, P) features
    and (B,) box_ok."""
    values, box_ok = validator.warp(flat, info, landmarks, view)
    return validator.normalise(values, view), box_ok


def load_validator(path: str | Path, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> DetectionValidator:
    """Read ``validator_cnn.txt`` (path to the file) into a :class:`DetectionValidator` on ``device``."""
    validator = DetectionValidator(read_validator(path), dtype)
    return validator if device is None else validator.to(device)
