"""The public API: ``load_model`` → ``LandmarkModel.fit / refine / track`` → ``FitResult``."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from torch import nn

from .devices import checked_device
from .fitting import ROTATION_HYPOTHESES, FitConfig, FitState, ModelFitter, fit_hypotheses, start_from_points
from .fitting.sampling import MARGIN
from .images import ImageBatch, ImageLike, as_array, prepare_images
from .memory import keep_freed_memory
from .openface import OpenFaceModel, read_main_spec
from .threads import CEN_FACE_WORK, call_threads, torch_threads
from .weights import load_weights, resolve_spec

Images = Union[Sequence[ImageLike], ImageLike, ImageBatch]


@dataclass
class FitResult:
    """Landmarks and pose of B faces.

    Attributes:
        landmarks: (B, n, 2) pixels (x, y), 0-based, as OpenFace outputs them.
        landmarks_3d: (B, n, 3) millimetres in camera coordinates (OpenFace's ``GetShape``).
        pose: (B, 6) (Tx, Ty, Tz) millimetres and (Rx, Ry, Rz) radians, OpenFace's pose columns.
        params_global: (B, 6) (scale, pitch, yaw, roll, tx, ty).
        params_local: (B, m) shape-mode weights.
        confidence: (B,) 0–1, OpenFace's detection certainty: the validator's score of the fitted
            face (0 where the fit itself failed; 1 for a successful fit when no validator is used).
        success: (B,) bool; False where the fit failed (too small, non-finite) or the validator's
            certainty is not above ``FitConfig.validation_boundary``.
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

    def of_image(self, number: int) -> "FitResult":
        """The faces of image ``number``, in order (``image_index`` kept as it is)."""
        return self[(self.image_index == number).nonzero().flatten()]

    @staticmethod
    def cat(results: Sequence["FitResult"]) -> "FitResult":
        """The faces of several results, in order (``image_index`` is kept as it is)."""
        return FitResult(**{f.name: torch.cat([getattr(r, f.name) for r in results]) for f in fields(FitResult)})


def camera(sizes: torch.Tensor) -> torch.Tensor:
    """OpenFace's default intrinsics for images of (N, 2) (width, height): (N, 3) (f, cx, cy)."""
    f = (500 * sizes[:, 0] / 640 + 500 * sizes[:, 1] / 480) / 2
    return torch.stack([f, sizes[:, 0] / 2, sizes[:, 1] / 2], 1)


# the fewest given points :meth:`LandmarkModel.refine` starts a face from (fewer cannot fix its
# scale, rotation and position)
MIN_REFINE_POINTS = 3


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

    Attributes:
        threads: torch threads for each call; None (default) chooses them per call from its work
            and the free cores (:mod:`torch_clnf.threads`: one for a few faces).
    """

    threads: int | None = None

    def __init__(self, model: OpenFaceModel, config: FitConfig | None = None, dtype: torch.dtype = torch.float32,
                 validator: nn.Module | None = None, detector: nn.Module | None = None) -> None:
        super().__init__()
        config = config or FitConfig()
        self.name = model.name
        self.is_ceclm = bool(model.cen)
        self.config = config.for_ceclm() if self.is_ceclm else config
        self.fitter = ModelFitter(model, self.config, dtype)
        self.early_termination = model.early_termination                         # CE-CLM's multi-view search
        self.validator = validator
        self.detector = detector

    @property
    def device(self) -> torch.device:
        return self.fitter.pdm.mean_shape.device

    @property
    def dtype(self) -> torch.dtype:
        return self.fitter.pdm.mean_shape.dtype

    def prepare(self, images: Images) -> ImageBatch:
        """Images converted once (grey, padded, on the model's device) for several calls."""
        return prepare_images(images, self.device, self.dtype, margin=MARGIN)   # padded as the sampler reads it

    def _certainty(self, state: FitState, batch: ImageBatch, image_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) confidence and success as OpenFace's ``DetectLandmarks``: the validator scores fits that succeeded."""
        fitted = state.success
        if self.validator is None or not self.config.validate:
            return fitted.to(self.dtype), fitted
        certainty = state.params_global.new_zeros(fitted.shape)
        if bool(fitted.any()):
            faces = fitted.nonzero().squeeze(1)
            scores = self.validator.score(batch.padded, image_index[faces], state.landmarks[faces],
                                          state.params_global[faces, 1:4], sizes=batch.sizes, margin=batch.margin,
                                          compiled=self.config.compile)
            certainty[faces] = scores.to(certainty.dtype)
        return certainty, fitted & (certainty > self.config.validation_boundary)

    def _result(self, state: FitState, batch: ImageBatch, image_index: torch.Tensor) -> FitResult:
        pdm = self.fitter.pdm
        g, p = state.params_global, state.params_local
        intrinsics = camera(batch.sizes)[image_index]                                 # (B, 3)
        f, cx, cy = intrinsics.unbind(1)
        depth = f / g[:, 0]
        unit = g.clone()                                   # the shape rotated, unscaled, untranslated
        unit[:, 0], unit[:, 4:] = 1, 0
        z = depth[:, None] + pdm.project_3d(unit, p)[..., 2]
        landmarks = state.landmarks
        landmarks_3d = torch.stack([z * (landmarks[..., 0] - cx[:, None]) / f[:, None],
                                    z * (landmarks[..., 1] - cy[:, None]) / f[:, None], z], -1)
        pose = torch.stack([(g[:, 4] - cx) * depth / f, (g[:, 5] - cy) * depth / f, depth, g[:, 1], g[:, 2], g[:, 3]], 1)
        confidence, success = self._certainty(state, batch, image_index)
        return FitResult(landmarks, landmarks_3d, pose, g, p, confidence, success, state.likelihood, image_index)

    def _empty(self, batch: ImageBatch) -> FitResult:
        """A result with no faces."""
        pdm = self.fitter.pdm
        zeros = pdm.mean_shape.new_zeros
        state = FitState(zeros(0, 6), zeros(0, pdm.num_modes), zeros(0, pdm.num_points, 2), zeros(0),
                         torch.zeros(0, dtype=torch.bool, device=self.device),
                         torch.zeros(0, dtype=torch.long, device=self.device))
        return self._result(state, batch, torch.zeros(0, dtype=torch.long, device=self.device))

    @torch.inference_mode()
    def detect(self, images: Images) -> list:
        """Faces found by the MTCNN detector: per image a :class:`torch_clnf.detect.Detections`
        (``boxes`` (N, 4) x, y, width, height pixels as OpenFace corrects them for CLNF, largest first;
        ``confidence`` (N,)). An image without a face gives N = 0."""
        if self.detector is None:
            raise RuntimeError("this model has no face detector: load it with load_model(..., detector=True) from a "
                               "model folder that holds mtcnn_detector/MTCNN_detector.txt, or pass boxes")
        if isinstance(images, ImageBatch):
            arrays = images.originals
        else:
            if isinstance(images, (str, Path, np.ndarray, torch.Tensor)):
                images = [images]
            arrays = [as_array(image) for image in images]
        with self._threads(pixels=sum(a.shape[0] * a.shape[1] for a in arrays)):
            return self.detector.detect(arrays)

    def _threads(self, faces: int = 0, pixels: int = 0):
        """torch's threads for a call on ``faces`` faces or ``pixels`` pixels (see :attr:`threads`;
        a CE-CLM face is :data:`~torch_clnf.threads.CEN_FACE_WORK` faces' work)."""
        return torch_threads(call_threads(self.threads, faces * (CEN_FACE_WORK if self.is_ceclm else 1), pixels))

    @torch.inference_mode()
    def fit(self, images: Images, boxes: torch.Tensor | Sequence[Sequence[float]] | None = None,
            image_index: torch.Tensor | Sequence[int] | None = None, multi_view: bool = True,
            points: torch.Tensor | None = None) -> FitResult:
        """Fit faces from boxes, as OpenFace's ``DetectLandmarksInImage``.

        Args:
            images: paths, arrays or tensors of any sizes (grey, or BGR as OpenCV reads them).
            boxes: (B, 4) face boxes ``(x, y, width, height)``, pixels; None: every face the
                detector finds (``image_index`` then says whose; no face in any image gives B = 0).
            image_index: (B,) the image of each box (default: box k is in image k).
            multi_view: fit each face from OpenFace's 11 head-rotation hypotheses (default; its
                "wild" mode, which fits profile and tilted faces that one start misses): every
                hypothesis at the first scale, the most likely there (the frontal one where
                nearly as likely) completed, the next where the validator rejects it
                (:func:`~torch_clnf.fitting.fit_hypotheses`; CE-CLM: OpenFace's early
                termination); 1.4 times a single start for one face with two free cores, 1.5 on
                one thread. False: OpenFace's default single start (rotation 0), the mode whose
                landmarks the tests check against OpenFace's C++.
            points: (B, 5, 2) the detector's five facial points of each box (pixels,
                :attr:`Detections.points <torch_clnf.detect.Detections.points>`), or None; with
                ``multi_view``, one more hypothesis starts from them (:func:`~torch_clnf.fitting.start_from_points`:
                roll, scale and position of a face turned in the plane). Faces found by the detector
                (``boxes`` None) use theirs.
        """
        batch = self.prepare(images)
        given = boxes is not None
        if boxes is None:
            found = self.detect(batch)
            image_index = [k for k, d in enumerate(found) for _ in range(len(d.boxes))]
            if not image_index:
                return self._empty(batch)
            boxes = torch.cat([d.boxes for d in found])
            points = torch.cat([d.points for d in found]) if all(d.points is not None for d in found) else None
        grey = batch.padded
        boxes = torch.as_tensor(boxes, dtype=self.dtype, device=self.device)
        if boxes.shape[-1:] != (4,) or boxes.dim() > 2:
            raise ValueError(f"boxes: expected (B, 4) x, y, width, height, found shape {tuple(boxes.shape)}")
        boxes = boxes.reshape(-1, 4)
        broken = ~torch.isfinite(boxes).all(1)
        if bool(broken.any()):
            raise ValueError(f"boxes: expected finite x, y, width, height; not finite: box(es) "
                             f"{broken.nonzero().flatten().tolist()}")
        index = _as_index(image_index, boxes.shape[0], grey.shape[0], self.device)
        if points is not None:
            points = torch.as_tensor(points, dtype=self.dtype, device=self.device)
            if points.shape != (boxes.shape[0], 5, 2):
                raise ValueError(f"points: expected ({boxes.shape[0]}, 5, 2), the detector's five points of each box, "
                                 f"found shape {tuple(points.shape)}")
        if given:
            _warn_outside(boxes, batch.sizes[index])
        fitter = self.fitter
        if not multi_view:
            with self._threads(faces=boxes.shape[0]):
                g = fitter.pdm.params_from_box(boxes)
                state = fitter.fit(grey, index, g, g.new_zeros(g.shape[0], fitter.pdm.num_modes),
                                   self.config.window_sizes)
                return self._result(state, batch, index)
        hypotheses = torch.tensor(ROTATION_HYPOTHESES, dtype=self.dtype, device=self.device)   # (H, 3)
        count, h = boxes.shape[0], hypotheses.shape[0]
        # threads as for a batch of every face's hypotheses: their first scale is that batch, and its
        # experts the largest share of a multi-view fit (one face: 12 hypotheses, two threads where free)
        with self._threads(faces=count * (h + (points is not None))):
            g = fitter.pdm.params_from_box(boxes.repeat_interleave(h, 0), hypotheses.repeat(count, 1)).view(count, h, 6)
            if points is not None and fitter.pdm.num_points == 68:
                detected = start_from_points(fitter.pdm, points)                           # (B, 6)
                usable = torch.isfinite(detected).all(1, keepdim=True) & (detected[:, :1] > 0)
                g = torch.cat([g, torch.where(usable, detected, g[:, 0])[:, None]], 1)    # else the frontal start again
            validated = self.validator is not None and self.config.validate
            state = fit_hypotheses(fitter, grey, index, g, self.config.window_sizes, self.early_termination,
                                   (lambda fits, where: self._certainty(fits, batch, where)[1]) if validated else None,
                                   detector_start=g.shape[1] > h)
            return self._result(state, batch, index)

    @torch.inference_mode()
    def refine(self, images: Images, landmarks: torch.Tensor,
               image_index: torch.Tensor | Sequence[int] | None = None,
               window_sizes: tuple[int, ...] | None = None) -> FitResult:
        """Fit faces starting from given landmarks (e.g. another detector's output).

        The start is taken to be close, so the fit runs at the tracking window sizes (OpenFace
        skips the coarsest scale when tracking); pass ``window_sizes`` to change that.

        Args:
            landmarks: (B, n, 2) pixels in OpenFace's 68-point order. Points that are not finite
                (NaN: another detector's missing points) are left out of the start, which is
                fitted to the others; a face needs at least :data:`MIN_REFINE_POINTS` of them.
        """
        batch = self.prepare(images)
        grey = batch.padded
        landmarks = torch.as_tensor(landmarks, dtype=self.dtype, device=self.device)
        if landmarks.dim() != 3 or landmarks.shape[1:] != (self.fitter.pdm.num_points, 2):
            raise ValueError(f"landmarks: expected (B, {self.fitter.pdm.num_points}, 2), found {tuple(landmarks.shape)}")
        finite = torch.isfinite(landmarks).all(-1)                                   # (B, n)
        few = finite.sum(1) < MIN_REFINE_POINTS
        if bool(few.any()):
            raise ValueError(f"landmarks: expected at least {MIN_REFINE_POINTS} finite points per face; fewer in "
                             f"face(s) {few.nonzero().flatten().tolist()}")
        index = _as_index(image_index, landmarks.shape[0], grey.shape[0], self.device)
        with self._threads(faces=landmarks.shape[0]):
            g, p = self.fitter.pdm.params_from_landmarks(landmarks, finite)
            state = self.fitter.fit(grey, index, g, p, window_sizes or self.config.tracking_window_sizes)
            return self._result(state, batch, index)

    @torch.inference_mode()
    def track(self, images: Images, previous: FitResult,
              image_index: torch.Tensor | Sequence[int] | None = None,
              window_sizes: tuple[int, ...] | None = None) -> FitResult:
        """Fit faces in the next frames starting from their previous fits (OpenFace's tracking).

        Faces whose previous fit succeeded use the tracking window sizes (or ``window_sizes``);
        the others the full ones.
        """
        batch = self.prepare(images)
        grey = batch.padded
        index = _as_index(image_index, len(previous), grey.shape[0], self.device)
        ok = previous.success.to(self.device)
        fitter = self.fitter
        g, p = previous.params_global.to(self.device, self.dtype), previous.params_local.to(self.device, self.dtype)
        small = window_sizes or self.config.tracking_window_sizes
        with self._threads(faces=len(ok)):
            state = fitter.fit(grey, index, g, p, small, ok) if bool(ok.any()) or not len(ok) else None  # no faces: empty
            if not bool(ok.all()):
                retry = fitter.fit(grey, index, g, p, self.config.window_sizes, ~ok)
                state = retry if state is None else _merge(state, retry, ok)
            return self._result(state, batch, index)


def _warn_outside(boxes: torch.Tensor, sizes: torch.Tensor) -> None:
    """A warning naming the (B, 4) boxes less than half inside their images of (B, 2) (width,
    height) pixels: a box for another image, or corners given where x, y, width, height are meant."""
    low = boxes[:, :2].clamp(min=0)
    high = torch.minimum(boxes[:, :2] + boxes[:, 2:], sizes)
    inside = (high - low).clamp(min=0).prod(1) / (boxes[:, 2] * boxes[:, 3]).clamp(min=1e-12)
    outside = (inside < 0.5).nonzero().flatten().tolist()
    if outside:
        described = "; ".join(f"box {k} ({', '.join(f'{v:g}' for v in boxes[k].tolist())}) in a "
                              f"{int(sizes[k, 0])}x{int(sizes[k, 1])} image" for k in outside[:3])
        warnings.warn(f"less than half of {len(outside)} face box(es) lies inside its image: {described} "
                      "(boxes are x, y, width, height in pixels)", stacklevel=3)


def _merge(first: FitState, second: FitState, use_first: torch.Tensor) -> FitState:
    """Per face, the first state where ``use_first``, else the second."""
    def pick(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(use_first.reshape(-1, *([1] * (a.dim() - 1))), a, b)
    return FitState(*(pick(getattr(first, f.name), getattr(second, f.name)) for f in fields(FitState)))


def load_model(spec: str | Path = "main_clnf_general.txt", models: str | Path | None = None,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
               config: FitConfig | None = None, cache: str | Path | None = None, detector: bool = True,
               threads: int | None = None) -> LandmarkModel:
    """Load an OpenFace landmark model, converted weights cached (see :mod:`torch_clnf.weights`).

    Args:
        spec: the main spec, ``main_clnf_general.txt`` (CLNF) or ``main_ceclm_general.txt``
            (CE-CLM); a path, or a name inside ``models`` / ``$TORCH_CLNF_MODELS``.
        device, dtype: where and in which precision to fit (a ValueError names the devices
            available where ``device`` is not).
        config: fitting parameters (default OpenFace's; CE-CLM's changes are applied on top); with
            ``compile``, the compiled packages are kept in ``cache``'s ``compiled/`` folder.
        detector: also load the detection validator the spec names and the MTCNN face detector
            (``mtcnn_detector/MTCNN_detector.txt`` beside the spec), as OpenFace does.
        threads: torch threads for each call (:attr:`LandmarkModel.threads`); None chooses them
            per call: one for a few faces, more for large batches where cores are free.

    On the CPU this also keeps freed memory in the process (:func:`torch_clnf.memory.keep_freed_memory`).
    """
    device = checked_device(device)
    path = resolve_spec(spec, models)
    if device.type == "cpu":
        keep_freed_memory()
    validator = face_detector = None
    if detector:
        from .detect.mtcnn import load_mtcnn
        from .detect.validator import load_validator

        main = read_main_spec(path)
        if main.validator is not None:
            validator = load_validator(main.validator, dtype=dtype)
        mtcnn = path.parent / "mtcnn_detector" / "MTCNN_detector.txt"
        if mtcnn.is_file():
            face_detector = load_mtcnn(mtcnn, dtype=dtype)
    if config is not None and config.compile:
        from .models.compiling import set_package_dir
        from .weights import cache_dir

        set_package_dir(cache_dir(cache) / "compiled")
    model = LandmarkModel(load_weights(path, models, cache), config, dtype, validator, face_detector)
    model.threads = threads
    return model.to(device)
