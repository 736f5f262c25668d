"""OpenFace's MTCNN face detector in torch, batched over pyramid levels, images and candidates.

Three stages, as OpenFace's ``FaceDetectorMTCNN::DetectFaces``: PNet scores every 12×12 window
of an image pyramid (scales ``12 / min_face · 0.709^i``) and proposes boxes; RNet (24×24 crops)
and ONet (48×48 crops) rescore and refine them; non-maximum suppression between stages. The
boxes that come out are corrected the way OpenFace corrects them to initialise CLNF (tight
around the 68 landmarks rather than the whole head).

The networks run batched (all images of one size per pyramid level, all crops of all images in
one RNet and one ONet call); box bookkeeping and suppression run on the host in NumPy, in
OpenFace's float32 / integer arithmetic, so boxes come out as OpenFace's do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..openface.cnn import CNNLayer
from ..openface.mtcnn import MTCNNData, read_mtcnn

PYRAMID_FACTOR = 0.709
FACE_SUPPORT = 12                       # PNet's window, pixels
NMS_BLOCK = 512                         # boxes whose overlaps suppression computes at once
# OpenFace's correction of an MTCNN box to the box CLNF is initialised from: x, y, width, height
CLNF_CORRECTION = (-0.0075, 0.2459, 1.0323, 0.7751)


@dataclass
class Detections:
    """The faces found in one image.

    Attributes:
        boxes: (N, 4) x, y, width, height pixels, corrected for CLNF initialisation, widest first.
        confidence: (N,) ONet's face probability.
        points: (N, 5, 2) ONet's five facial points, pixels: the eyes (left and right in the
            image), the nose tip, the mouth's corners (left and right); they follow a face turned
            in the plane, which the upright boxes do not (see :func:`torch_clnf.fitting.start_from_points`).
    """

    boxes: torch.Tensor
    confidence: torch.Tensor
    points: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.boxes.shape[0]


def largest(detections: Detections) -> torch.Tensor | None:
    """(4,) the widest box (OpenFace's choice of a single face), or None when there is none."""
    return detections.boxes[0] if len(detections) else None


class CNN(nn.Module):
    """One of MTCNN's networks: convolutions, PReLU, max pooling, fully connected layers.

    Max pooling keeps a partial last window (OpenFace rounds its output size up); a fully
    connected layer on maps acts per pixel when its input size is the map count (PNet's last
    layer), else on the maps flattened column by column (as OpenFace flattens them).
    """

    def __init__(self, layers: list[CNNLayer], dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.kinds = [layer.kind for layer in layers]
        self.pools = [(layer.kernel, layer.stride) for layer in layers]
        for n, layer in enumerate(layers):
            if layer.weight is not None:
                self.register_buffer(f"weight{n}", torch.from_numpy(layer.weight).to(dtype))
            if layer.bias is not None:
                self.register_buffer(f"bias{n}", torch.from_numpy(layer.bias).to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised RGB → (N, C, h, w) maps, or (N, C) for a network ending in a vector.

        Any memory layout; channels-last (as :class:`MTCNN` passes it) is the fast one on CPU.
        """
        for n, kind in enumerate(self.kinds):
            if kind == "conv":
                x = F.conv2d(x, getattr(self, f"weight{n}"), getattr(self, f"bias{n}"))
            elif kind == "prelu":
                x = F.prelu(x, getattr(self, f"weight{n}"))
            elif kind == "max_pool":
                kernel, stride = self.pools[n]
                x = F.max_pool2d(x, kernel, stride, ceil_mode=True)
            elif kind == "fully_connected":
                weight, bias = getattr(self, f"weight{n}"), getattr(self, f"bias{n}")     # (in, out), (out,)
                if x.dim() == 4 and x.shape[1] == weight.shape[0]:
                    x = torch.einsum("nchw,co->nohw", x, weight) + bias[:, None, None]
                else:
                    if x.dim() == 4:
                        x = x.transpose(-1, -2).flatten(1)
                    x = x @ weight + bias
            elif kind == "sigmoid":
                x = torch.sigmoid(x)
        return x


def _face_probability(scores: torch.Tensor) -> torch.Tensor:
    """OpenFace's ``1 / (1 + exp(s0 − s1))`` of the two class scores (dim 1)."""
    return 1 / (1 + torch.exp(scores[:, 0] - scores[:, 1]))


def _int_rects(boxes: np.ndarray) -> np.ndarray:
    """(K, 4) float boxes → OpenCV's integer ``cv::Rect`` (each value rounded half to even)."""
    return np.rint(boxes).astype(np.int64)


def suppress(boxes: np.ndarray, scores: np.ndarray, threshold: float, minimum: bool = False) -> np.ndarray:
    """OpenFace's non-maximum suppression: indices kept, highest score first.

    Overlap is measured on the boxes rounded to integers, as intersection over union (or over
    the smaller area with ``minimum``) in float32; a box overlapping a kept one by more than
    ``threshold`` is dropped. Among equal scores the later box is taken first.

    Args:
        boxes: (K, 4) x, y, width, height; scores: (K,).
    Returns:
        (M,) int64 indices into ``boxes``.
    """
    order = np.lexsort((-np.arange(len(boxes)), -scores.astype(np.float64)))
    rects = _int_rects(boxes)[order].astype(np.int32)
    x1, y1 = rects[:, 0], rects[:, 1]
    x2, y2 = x1 + rects[:, 2], y1 + rects[:, 3]
    area = rects[:, 2].astype(np.int64) * rects[:, 3]
    alive = np.ones(len(boxes), bool)
    kept = []
    for first in range(0, len(boxes), NMS_BLOCK):
        last = min(first + NMS_BLOCK, len(boxes))
        # overlap of this block's boxes with themselves and every box after them, (b, K - first)
        block, rest = slice(first, last), slice(first, None)
        width = np.minimum(x2[block, None], x2[None, rest]) - np.maximum(x1[block, None], x1[None, rest])
        height = np.minimum(y2[block, None], y2[None, rest]) - np.maximum(y1[block, None], y1[None, rest])
        inter = np.maximum(width, 0).astype(np.float32) * np.maximum(height, 0).astype(np.float32)  # as int→float
        if minimum:
            union = np.minimum(area[block, None], area[None, rest]).astype(np.float32)
        else:
            union = (area[block, None] + area[None, rest]).astype(np.float32) - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            drops = inter / union > threshold
        for row in range(last - first):
            if alive[first + row]:
                kept.append(first + row)
                alive[rest] &= ~drops[row]
    return order[np.asarray(kept, np.int64)]


def apply_correction(boxes: np.ndarray, corrections: np.ndarray, add_one: bool) -> np.ndarray:
    """Shift and scale boxes by the network's regression (fractions of the integer box's size)."""
    rects = _int_rects(boxes).astype(np.float32)
    if add_one:
        rects[:, 2:] += 1
    x, y, w, h = rects.T
    low_x, low_y = x + corrections[:, 0] * w, y + corrections[:, 1] * h
    high_x, high_y = x + w + w * corrections[:, 2], y + h + h * corrections[:, 3]
    return np.stack([low_x, low_y, high_x - low_x, high_y - low_y], 1).astype(np.float32)


def five_points(boxes: np.ndarray, relative: np.ndarray) -> np.ndarray:
    """ONet's facial points (K, 10), fractions of the crop (x₁ … x₅, y₁ … y₅), as (K, 5, 2) pixels of
    the image: the crop spans the integer box grown by one pixel (:func:`crop_boxes`)."""
    x, y, w, h = _int_rects(boxes).astype(np.float32).T
    px = x[:, None] - 1 + relative[:, :5] * (w[:, None] + 1)
    py = y[:, None] - 1 + relative[:, 5:] * (h[:, None] + 1)
    return np.stack([px, py], -1).astype(np.float32)


def rectify(boxes: np.ndarray) -> np.ndarray:
    """Boxes made square about their centre, truncated to integers as OpenFace does."""
    x, y, w, h = boxes.astype(np.float64).T
    side = np.maximum(w, h)
    low_x = (x + 0.5 * (w - side)).astype(np.float32)
    low_y = (y + 0.5 * (h - side)).astype(np.float32)
    side = side.astype(np.float32)
    return np.trunc(np.stack([low_x, low_y, side, side], 1)).astype(np.float32)


class MTCNN(nn.Module):
    """OpenFace's MTCNN face detector.

    Args:
        data: the three networks, from :func:`torch_clnf.openface.mtcnn.read_mtcnn`.
        min_face: smallest face searched for, pixels (OpenFace: 60).
        thresholds: PNet, RNet and ONet face-probability thresholds (OpenFace: 0.6, 0.7, 0.7).

    Example:
        >>> detector = load_mtcnn("mtcnn_detector/MTCNN_detector.txt")
        >>> found = detector.detect([cv2.imread("face.jpg")])
        >>> found[0].boxes          # (N, 4) x, y, width, height
    """

    def __init__(self, data: MTCNNData, dtype: torch.dtype = torch.float32, min_face: int = 60,
                 thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)) -> None:
        super().__init__()
        self.pnet = CNN(data.pnet, dtype)
        self.rnet = CNN(data.rnet, dtype)
        self.onet = CNN(data.onet, dtype)
        self.min_face = min_face
        self.thresholds = thresholds

    @property
    def device(self) -> torch.device:
        return self.pnet.weight0.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pnet.weight0.dtype

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray | torch.Tensor]) -> list[Detections]:
        """The faces in each image.

        Args:
            images: (H, W, 3) BGR or (H, W) grey, uint8 or float 0–255, as OpenCV reads them
                (tensors of the same layout are accepted).
        Returns:
            per image a :class:`Detections` (N = 0 when there is no face).
        Raises:
            ValueError: an empty image, NaN / infinite pixels, or a wrong shape.
        """
        rgb = [self._as_rgb(image, k) for k, image in enumerate(images)]             # each (H, W, 3)
        boxes, scores, owner = self._propose(rgb)
        points = np.zeros((0, 5, 2), np.float32)
        for size, network, threshold, last in ((24, self.rnet, self.thresholds[1], False),
                                               (48, self.onet, self.thresholds[2], True)):
            if not len(boxes):
                break
            boxes, scores, owner, points = self._refine(rgb, boxes, owner, size, network, threshold, last)
        if len(points) != len(boxes):
            points = np.zeros((len(boxes), 5, 2), np.float32)
        out = []
        for k in range(len(rgb)):
            mine = owner == k
            found, confidence, found_points = boxes[mine], scores[mine], points[mine]
            dx, dy, sw, sh = CLNF_CORRECTION
            x, y, w, h = found.T.astype(np.float64) if len(found) else np.zeros((4, 0))
            corrected = np.stack([w * dx + x, h * dy + y, sw * w, sh * h], 1).astype(np.float32)
            widest = np.argsort(-corrected[:, 2], kind="stable") if len(corrected) else np.zeros(0, np.int64)
            out.append(Detections(torch.from_numpy(corrected[widest].reshape(-1, 4)).to(self.device, self.dtype),
                                  torch.from_numpy(confidence[widest].astype(np.float32)).to(self.device, self.dtype),
                                  torch.from_numpy(found_points[widest].reshape(-1, 5, 2)).to(self.device, self.dtype)))
        return out

    forward = detect

    def _as_rgb(self, image: np.ndarray | torch.Tensor, k: int) -> torch.Tensor:
        """(H, W, 3) contiguous float RGB on the device (a grey image repeated in all three channels)."""
        tensor = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(image))
        if tensor.dim() == 3 and tensor.shape[2] == 1:
            tensor = tensor[..., 0]
        if tensor.dim() not in (2, 3) or (tensor.dim() == 3 and tensor.shape[2] != 3):
            raise ValueError(f"image {k}: expected a grey (H, W) or BGR (H, W, 3) image, found shape {tuple(tensor.shape)}")
        if tensor.shape[0] == 0 or tensor.shape[1] == 0:
            raise ValueError(f"image {k}: expected a non-empty image, found shape {tuple(tensor.shape)}")
        tensor = tensor.detach().to(self.device)
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"image {k}: the image has NaN or infinite pixels")
        rgb = tensor[..., None].expand(*tensor.shape, 3) if tensor.dim() == 2 else tensor.flip(-1)   # BGR → RGB
        return rgb.to(self.dtype).contiguous()

    def _propose(self, rgb: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """PNet over each image's pyramid, suppression per level and across levels, regression."""
        by_size: dict[tuple[int, int], list[int]] = {}
        for k, image in enumerate(rgb):
            by_size.setdefault(tuple(image.shape[:2]), []).append(k)
        per_image: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[] for _ in rgb]
        threshold = self.thresholds[0]
        for (height, width), members in by_size.items():
            batch = torch.stack([rgb[k] for k in members]).permute(0, 3, 1, 2)   # (G, 3, H, W) channels-last
            levels = max(0, math.floor(math.log(self.min_face / min(height, width)) / math.log(PYRAMID_FACTOR)) + 1)
            for level in range(levels):
                scale = FACE_SUPPORT / self.min_face * PYRAMID_FACTOR ** level
                size = (math.ceil(height * scale), math.ceil(width * scale))
                resized = F.interpolate(batch, size=size, mode="bilinear", align_corners=False)
                out = self.pnet((resized - 127.5) * 0.0078125)
                heat = _face_probability(out).float().cpu().numpy()               # (G, h, w)
                corrections = out[:, 2:6].float().cpu().numpy()                  # (G, 4, h, w)
                for g, k in enumerate(members):
                    # candidates in OpenFace's order: x outer, y inner
                    xs, ys = np.nonzero(heat[g].T >= threshold)
                    # PNet's stride is 2; OpenFace divides in float32
                    low_x, high_x, low_y, high_y = (np.trunc((2 * at + offset).astype(np.float32) / np.float32(scale))
                                                    for at in (xs, ys) for offset in (1, FACE_SUPPORT))
                    boxes = np.stack([low_x, low_y, high_x - low_x, high_y - low_y], 1).astype(np.float32)
                    scores = heat[g][ys, xs]
                    regress = corrections[g][:, ys, xs].T
                    keep = suppress(boxes, scores, 0.5)
                    per_image[k].append((boxes[keep], scores[keep], regress[keep]))
        all_boxes, all_scores, owners = [], [], []
        for k, levels in enumerate(per_image):
            if not levels:
                continue
            boxes = np.concatenate([b for b, _, _ in levels]).reshape(-1, 4)
            scores = np.concatenate([s for _, s, _ in levels])
            regress = np.concatenate([r for _, _, r in levels]).reshape(-1, 4)
            keep = suppress(boxes, scores, 0.7)
            boxes = rectify(apply_correction(boxes[keep], regress[keep], add_one=False))
            all_boxes.append(boxes)
            all_scores.append(scores[keep])
            owners.append(np.full(len(keep), k))
        if not all_boxes:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
        return np.concatenate(all_boxes), np.concatenate(all_scores), np.concatenate(owners)

    def _refine(self, rgb: list[torch.Tensor], boxes: np.ndarray, owner: np.ndarray, size: int, network: CNN,
                threshold: float, last: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """RNet or ONet on crops of every candidate of every image, then threshold and suppression;
        the kept boxes, scores, owners and (ONet) five points per box, pixels ((0, 5, 2) for RNet)."""
        crops = torch.cat([crop_boxes(rgb[k], torch.from_numpy(boxes[owner == k]), size)
                           for k in np.unique(owner)])
        order = np.concatenate([np.flatnonzero(owner == k) for k in np.unique(owner)])
        out = network((crops - 127.5) * 0.0078125)
        scores_sorted = _face_probability(out).float().cpu().numpy()
        regress_sorted = out[:, 2:6].float().cpu().numpy()
        scores = np.empty(len(boxes), np.float32)
        regress = np.empty((len(boxes), 4), np.float32)
        scores[order], regress[order] = scores_sorted, regress_sorted
        if last:
            relative = np.empty((len(boxes), 10), np.float32)
            relative[order] = out[:, 6:16].float().cpu().numpy()
        kept_boxes, kept_scores, owners, kept_points = [], [], [], []
        for k in np.unique(owner):
            mine = np.flatnonzero((owner == k) & (scores >= threshold))
            b, s, r = boxes[mine], scores[mine], regress[mine]
            if last:
                p = five_points(b, relative[mine])
                b = apply_correction(b, r, add_one=True)
                keep = suppress(b, s, 0.7, minimum=True)
                b = b[keep]
                kept_points.append(p[keep])
            else:
                keep = suppress(b, s, 0.7)
                b = rectify(apply_correction(b[keep], r[keep], add_one=False))
            kept_boxes.append(b)
            kept_scores.append(s[keep])
            owners.append(np.full(len(keep), k))
        points = np.concatenate(kept_points).reshape(-1, 5, 2) if last else np.zeros((0, 5, 2), np.float32)
        return (np.concatenate(kept_boxes).reshape(-1, 4), np.concatenate(kept_scores),
                np.concatenate(owners).astype(np.int64), points)


def crop_boxes(image: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """OpenFace's RNet / ONet inputs: each integer box grown to (w + 1) × (h + 1) from (x − 1, y − 1),
    zero outside the image, resized to size × size with OpenCV's bilinear ``resize``.

    Args:
        image: (H, W, C) float; boxes: (K, 4) x, y, width, height (integers).
    Returns:
        (K, C, size, size), channels-last in memory.
    """
    height, width, channels = image.shape
    boxes = boxes.to(torch.float64)
    extent = boxes[:, 2:] + 1                                                     # (K, 2) the crop's width, height
    steps = torch.arange(size, dtype=torch.float64)
    source = (steps + 0.5)[None, :, None] * (extent / size)[:, None, :] - 0.5      # (K, size, 2) x, y in the crop
    source = source.to(torch.float32).to(torch.float64)                           # OpenCV keeps it in float
    low = torch.floor(source)
    frac = source - low
    low = low.long()
    first = low < 0
    frac = torch.where(first, torch.zeros_like(frac), frac)
    low = low.clamp(min=0)
    limit = extent.long()[:, None, :] - 1
    past = low >= limit
    frac = torch.where(past, torch.zeros_like(frac), frac)
    low = torch.minimum(low, limit)
    high = torch.minimum(low + 1, limit)
    origin = (boxes[:, :2].long() - 1)[:, None, :]                                # crop (0, 0) in the image
    columns = torch.stack([low[..., 0], high[..., 0]], -1) + origin[..., :1]       # (K, size, 2)
    rows = torch.stack([low[..., 1], high[..., 1]], -1) + origin[..., 1:]
    device, dtype = image.device, image.dtype
    # the two taps' weights per output column / row, zero for a tap outside the image (the zero padding)
    weight_x = torch.stack([1 - frac[..., 0], frac[..., 0]], -1).to(dtype) * ((columns >= 0) & (columns < width))
    weight_y = torch.stack([1 - frac[..., 1], frac[..., 1]], -1).to(dtype) * ((rows >= 0) & (rows < height))
    columns, rows = columns.clamp(0, width - 1), rows.clamp(0, height - 1)
    index = (rows[:, :, None, :, None] * width + columns[:, None, :, None, :]).to(device)   # (K, sy, sx, 2, 2)
    values = image.reshape(-1, channels)[index]                                        # (K, sy, sx, 2, 2, C)
    weight_x = weight_x.to(device)[:, None, :, :, None]                                 # (K, 1, sx, 2, 1)
    weight_y = weight_y.to(device)[:, :, None, :, None]                                 # (K, sy, 1, 2, 1)
    top = values[..., 0, 0, :] * weight_x[..., 0, :] + values[..., 0, 1, :] * weight_x[..., 1, :]   # along x first
    bottom = values[..., 1, 0, :] * weight_x[..., 0, :] + values[..., 1, 1, :] * weight_x[..., 1, :]
    return (top * weight_y[..., 0, :] + bottom * weight_y[..., 1, :]).permute(0, 3, 1, 2)


def load_mtcnn(path: str | Path, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> MTCNN:
    """OpenFace's MTCNN from ``MTCNN_detector.txt``, its folder, or OpenFace's model folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "MTCNN_detector.txt" if (path / "MTCNN_detector.txt").is_file() else \
            path / "mtcnn_detector" / "MTCNN_detector.txt"
    detector = MTCNN(read_mtcnn(path), dtype)
    return detector if device is None else detector.to(device)
