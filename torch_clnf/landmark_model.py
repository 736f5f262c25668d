"""The public API: ``load_model`` → ``LandmarkModel.fit / refine / track`` → ``FitResult``."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .fitting import ROTATION_HYPOTHESES, FitConfig, FitState, ModelFitter
from .fitting.sampling import MARGIN
from .images import ImageLike, batch_images
from .openface import OpenFaceModel
from .weights import load_weights


@dataclass
class FitResult:
    """Landmarks and pose of B faces.

    Attributes:
        landmarks: (B, n, 2) pixels (x, y), 0-based, as OpenFace outputs them.
        landmarks_3d: (B, n, 3) millimetres in camera coordinates (OpenFace's ``GetShape``).
        pose: (B, 6) (Tx, Ty, Tz) millimetres and (Rx, Ry, Rz) radians, OpenFace's pose columns.
        params_global: (B, 6) (scale, pitch, yaw, roll, tx, ty).
        params_local: (B, m) shape-mode weights.
        confidence: (B,) 0–1 (1 for a successful fit until a validator is configured).
        success: (B,) bool; False where the fit failed (too small, non-finite).
        likelihood: (B,) OpenFace's model likelihood (higher is better).
        image_index: (B,) the image each face belongs to.
    """

    landmarks: torch.Tensor
    landmarks_3d: torch.Tensor
    pose: torch.Tensor
    params_global: torch.Tensor
    params_local: torch.Tensor
    confidence: torch.Tensor
    success: torch.Tensor
    likelihood: torch.Tensor
    image_index: torch.Tensor

    def __len__(self) -> int:
        return self.landmarks.shape[0]

    def __getitem__(self, index) -> "FitResult":
        """The results of some faces (an int, slice, index tensor or mask)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return FitResult(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def camera(sizes: torch.Tensor) -> torch.Tensor:
    """OpenFace's default intrinsics for images of (N, 2) (width, height): (N, 3) (f, cx, cy)."""
    f = (500 * sizes[:, 0] / 640 + 500 * sizes[:, 1] / 480) / 2
    return torch.stack([f, sizes[:, 0] / 2, sizes[:, 1] / 2], 1)


def _as_index(value: torch.Tensor | Sequence[int] | None, count: int, images: int, device) -> torch.Tensor:
    if value is None:
        if count != images:
            raise ValueError(f"{count} faces for {images} images: pass image_index, the image of each face")
        return torch.arange(count, device=device)
    index = torch.as_tensor(value, dtype=torch.long, device=device).reshape(-1)
    if index.shape[0] != count or (count and (int(index.min()) < 0 or int(index.max()) >= images)):
        raise ValueError(f"image_index: expected {count} indices in [0, {images}), found {index.tolist()}")
    return index


class LandmarkModel(nn.Module):
    """OpenFace's landmark model (CLNF or CE-CLM) fitting batches of faces.

    Example:
        >>> model = torch_clnf.load_model("main_clnf_general.txt")
        >>> result = model.fit(["face.jpg"], torch.tensor([[110.8, 111.1, 185.2, 164.1]]))
        >>> result.landmarks.shape
        torch.Size([1, 68, 2])
    """

    def __init__(self, model: OpenFaceModel, config: FitConfig | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        config = config or FitConfig()
        self.name = model.name
        self.is_ceclm = bool(model.cen)
        self.config = config.for_ceclm() if self.is_ceclm else config
        self.fitter = ModelFitter(model, self.config, dtype)

    @property
    def device(self) -> torch.device:
        return self.fitter.pdm.mean_shape.device

    @property
    def dtype(self) -> torch.dtype:
        return self.fitter.pdm.mean_shape.dtype

    def _images(self, images: Sequence[ImageLike] | ImageLike) -> tuple[torch.Tensor, torch.Tensor]:
        return batch_images(images, self.device, self.dtype, margin=MARGIN)   # padded as the sampler reads it

    def _result(self, state: FitState, sizes: torch.Tensor, image_index: torch.Tensor) -> FitResult:
        pdm = self.fitter.pdm
        g, p = state.params_global, state.params_local
        intrinsics = camera(sizes)[image_index]                                       # (B, 3)
        f, cx, cy = intrinsics.unbind(1)
        depth = f / g[:, 0]
        unit = g.clone()                                   # the shape rotated, unscaled, untranslated
        unit[:, 0], unit[:, 4:] = 1, 0
        z = depth[:, None] + pdm.project_3d(unit, p)[..., 2]
        landmarks = state.landmarks
        landmarks_3d = torch.stack([z * (landmarks[..., 0] - cx[:, None]) / f[:, None],
                                    z * (landmarks[..., 1] - cy[:, None]) / f[:, None], z], -1)
        pose = torch.stack([(g[:, 4] - cx) * depth / f, (g[:, 5] - cy) * depth / f, depth, g[:, 1], g[:, 2], g[:, 3]], 1)
        confidence = state.success.to(g.dtype)
        return FitResult(landmarks, landmarks_3d, pose, g, p, confidence, state.success, state.likelihood, image_index)

    @torch.inference_mode()
    def fit(self, images: Sequence[ImageLike] | ImageLike, boxes: torch.Tensor | Sequence[Sequence[float]],
            image_index: torch.Tensor | Sequence[int] | None = None, multi_view: bool = False) -> FitResult:
        """Fit faces from boxes, as OpenFace's ``DetectLandmarksInImage``.

        Args:
            images: paths, arrays or tensors of any sizes (grey, or BGR as OpenCV reads them).
            boxes: (B, 4) face boxes ``(x, y, width, height)``, pixels.
            image_index: (B,) the image of each box (default: box k is in image k).
            multi_view: also try 10 other head rotations and keep the most likely fit (as
                OpenFace does when it first finds a face in a video); 11 times the work.
        """
        grey, sizes = self._images(images)
        boxes = torch.as_tensor(boxes, dtype=self.dtype, device=self.device)
        if boxes.shape[-1:] != (4,) or boxes.dim() > 2:
            raise ValueError(f"boxes: expected (B, 4) x, y, width, height, found shape {tuple(boxes.shape)}")
        boxes = boxes.reshape(-1, 4)
        index = _as_index(image_index, boxes.shape[0], grey.shape[0], self.device)
        fitter = self.fitter
        if not multi_view:
            g = fitter.pdm.params_from_box(boxes)
            state = fitter.fit(grey, index, g, g.new_zeros(g.shape[0], fitter.pdm.num_modes), self.config.window_sizes)
            return self._result(state, sizes, index)
        hypotheses = torch.tensor(ROTATION_HYPOTHESES, dtype=self.dtype, device=self.device)   # (H, 3)
        count, h = boxes.shape[0], hypotheses.shape[0]
        g = fitter.pdm.params_from_box(boxes.repeat_interleave(h, 0), hypotheses.repeat(count, 1))
        p = g.new_zeros(g.shape[0], fitter.pdm.num_modes)
        state = fitter.fit(grey, index.repeat_interleave(h), g, p, self.config.window_sizes, parts=False)
        likelihood = torch.where(state.success, state.likelihood, torch.full_like(state.likelihood, -torch.inf))
        best = likelihood.reshape(count, h).argmax(1) + torch.arange(count, device=self.device) * h
        chosen = FitState(state.params_global[best], state.params_local[best], state.landmarks[best],
                          state.likelihood[best], state.success[best], state.view[best])
        if self.config.refine_hierarchical and len(fitter.parts):
            chosen = fitter.refine_parts(grey, index, chosen, chosen.success)
        return self._result(chosen, sizes, index)

    @torch.inference_mode()
    def refine(self, images: Sequence[ImageLike] | ImageLike, landmarks: torch.Tensor,
               image_index: torch.Tensor | Sequence[int] | None = None,
               window_sizes: tuple[int, ...] | None = None) -> FitResult:
        """Fit faces starting from given landmarks (e.g. another detector's output).

        The start is taken to be close, so the fit runs at the tracking window sizes (OpenFace
        skips the coarsest scale when tracking); pass ``window_sizes`` to change that.

        Args:
            landmarks: (B, n, 2) pixels in OpenFace's 68-point order.
        """
        grey, sizes = self._images(images)
        landmarks = torch.as_tensor(landmarks, dtype=self.dtype, device=self.device)
        if landmarks.dim() != 3 or landmarks.shape[1:] != (self.fitter.pdm.num_points, 2):
            raise ValueError(f"landmarks: expected (B, {self.fitter.pdm.num_points}, 2), found {tuple(landmarks.shape)}")
        index = _as_index(image_index, landmarks.shape[0], grey.shape[0], self.device)
        g, p = self.fitter.pdm.params_from_landmarks(landmarks)
        state = self.fitter.fit(grey, index, g, p, window_sizes or self.config.tracking_window_sizes)
        return self._result(state, sizes, index)

    @torch.inference_mode()
    def track(self, images: Sequence[ImageLike] | ImageLike, previous: FitResult,
              image_index: torch.Tensor | Sequence[int] | None = None) -> FitResult:
        """Fit faces in the next frames starting from their previous fits (OpenFace's tracking).

        Faces whose previous fit succeeded use the tracking window sizes; the others the full ones.
        """
        grey, sizes = self._images(images)
        index = _as_index(image_index, len(previous), grey.shape[0], self.device)
        ok = previous.success.to(self.device)
        fitter = self.fitter
        g, p = previous.params_global.to(self.device, self.dtype), previous.params_local.to(self.device, self.dtype)
        state = fitter.fit(grey, index, g, p, self.config.tracking_window_sizes, ok) if bool(ok.any()) else None
        if not bool(ok.all()):
            retry = fitter.fit(grey, index, g, p, self.config.window_sizes, ~ok)
            state = retry if state is None else _merge(state, retry, ok)
        return self._result(state, sizes, index)


def _merge(first: FitState, second: FitState, use_first: torch.Tensor) -> FitState:
    """Per face, the first state where ``use_first``, else the second."""
    def pick(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(use_first.reshape(-1, *([1] * (a.dim() - 1))), a, b)
    return FitState(*(pick(getattr(first, f.name), getattr(second, f.name)) for f in fields(FitState)))


def load_model(spec: str | Path = "main_clnf_general.txt", models: str | Path | None = None,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
               config: FitConfig | None = None, cache: str | Path | None = None) -> LandmarkModel:
    """Load an OpenFace landmark model, converted weights cached (see :mod:`torch_clnf.weights`).

    Args:
        spec: the main spec, ``main_clnf_general.txt`` (CLNF) or ``main_ceclm_general.txt``
            (CE-CLM); a path, or a name inside ``models`` / ``$TORCH_CLNF_MODELS``.
        device, dtype: where and in which precision to fit.
        config: fitting parameters (default OpenFace's; CE-CLM's changes are applied on top).
    """
    return LandmarkModel(load_weights(spec, models, cache), config, dtype).to(device)
