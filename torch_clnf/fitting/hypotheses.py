"""Fitting faces from several head-rotation hypotheses, as OpenFace's ``DetectLandmarksInImage``."""
from __future__ import annotations

from dataclasses import fields
from typing import Callable

import torch

from ..models import PointDistributionModel
from ..openface import EarlyTermination
from .fitter import FitState, ModelFitter

# OpenFace completes this many first-scale fits when none passes its early-termination cutoff; a
# CLNF fit completes at most this many while the validator rejects them
COMPLETED = 3
# likelihood (OpenFace's, after the first scale) by which another hypothesis must beat the frontal
# one to be completed first (measured on the sample images and their turned copies: docs/accuracy.md)
FRONTAL_MARGIN = 0.5
# likelihood by which the detector's start (:func:`start_from_points`) must beat the frontal one to
# be completed first: it fits a face a little rolled (sample2, 15°) a little apart from OpenFace's
# single start, which such a face should keep (measured: docs/accuracy.md)
DETECTOR_MARGIN = 1.0
# the 68-point landmarks whose mean is each of MTCNN's five facial points: the eyes as they appear
# left and right in the image, the nose tip, the mouth's left and right corners
DETECTOR_POINTS = (tuple(range(36, 42)), tuple(range(42, 48)), (30,), (48,), (54,))


def start_from_points(pdm: PointDistributionModel, points: torch.Tensor) -> torch.Tensor:
    """Global params that put the mean shape's eyes, nose tip and mouth corners on a detector's five
    facial points (least-squares similarity: scale, roll, translation; pitch and yaw 0): a start
    that follows a face turned in the plane, which an upright box does not.

    Args:
        points: (B, 5, 2) pixels, in the order of :data:`DETECTOR_POINTS` (MTCNN's).
    Returns:
        (B, 6) global params.
    """
    mean = pdm.mean_shape[..., :2].to(points.dtype)
    model = torch.stack([mean[..., list(rows), :].mean(-2) for rows in DETECTOR_POINTS], -2)   # ([B,] 5, 2)
    source = model.mean(-2)                                          # ([B,] 2)
    model, found = model - source[..., None, :], points - points.mean(-2, keepdim=True)
    norm = model.square().sum((-2, -1))
    cosine = (model * found).sum((-2, -1)) / norm                    # scale · cos(roll), scale · sin(roll)
    sine = (model[..., 0] * found[..., 1] - model[..., 1] * found[..., 0]).sum(-1) / norm
    scale, roll = torch.hypot(cosine, sine), torch.atan2(sine, cosine)
    x, y = source[..., 0], source[..., 1]
    turned = torch.stack([cosine * x - sine * y, sine * x + cosine * y], -1)    # the similarity's part of the centre
    translation = points.mean(-2) - turned                           # (B, 2)
    zero = torch.zeros_like(scale)
    return torch.stack([scale, zero, zero, roll, translation[:, 0], translation[:, 1]], 1)


def fit_hypotheses(fitter: ModelFitter, padded: torch.Tensor, image_index: torch.Tensor, params_global: torch.Tensor,
                   window_sizes: tuple[int, ...], early_termination: EarlyTermination | None = None,
                   accept: Callable[[FitState, torch.Tensor], torch.Tensor] | None = None,
                   detector_start: bool = False) -> FitState:
    """One fit per face from H starting params each (the face's box at H head rotations).

    Every hypothesis is fitted at the first scale only (the first window size that is not 0),
    then a few are completed over the other scales (and the part models):

    - Without early termination (CLNF): the hypotheses are ranked by their likelihood after the
      first scale, except that the frontal one (OpenFace's single start) comes first where it is
      within :data:`FRONTAL_MARGIN` of the best (:data:`DETECTOR_MARGIN` of the detector's start),
      and second otherwise (:func:`_ranking`); the
      first ``fitter.config.hypotheses_completed`` are completed (default 1) and the most likely
      completed fit kept. Where ``accept`` (the validator) rejects it, the next in the ranking is
      completed, up to :data:`COMPLETED` in all, and the first accepted kept (else the first).
      With ``hypotheses_completed = H``: OpenFace's basic search, every hypothesis completed, the
      most likely kept. The rule and its measurements: docs/accuracy.md.
    - With it (CE-CLM), OpenFace's search: each first-scale likelihood ``L``, calibrated per view,
      is compared with the view's cutoff (``w·L + b > cutoff``); the first hypothesis in order
      that passes is completed, and where none does, the :data:`COMPLETED` with the highest
      calibrated likelihood are, and the most likely completed fit kept.

    Args:
        padded: (N, H + 4, W + 4) grey images with a zero margin; image_index: (B,).
        params_global: (B, H, 6) the starting params of each face's hypotheses (local params 0).
        window_sizes: per scale, as for :meth:`ModelFitter.fit`.
        early_termination: the model's per-view calibration (V,) of its first scale's views.
        accept: (fits of b faces, their (b,) image index) → (b,) bool, whether a completed fit is
            kept (CLNF only); None: the first completed is.
        detector_start: the last of the H hypotheses is the detector's start (:func:`start_from_points`).
    Returns:
        FitState of B faces.
    """
    count, h = params_global.shape[:2]
    flat = params_global.flatten(0, 1)
    local = flat.new_zeros(flat.shape[0], fitter.pdm.num_modes)
    index = image_index.repeat_interleave(h)
    first_windows, other_windows = _first_scale_and_the_others(window_sizes)
    first = fitter.fit(padded, index, flat, local, first_windows, parts=False)
    faces = torch.arange(count, device=flat.device)
    if early_termination is None:
        order = _ranking(first.likelihood.view(count, h), first.success.view(count, h), detector_start)   # (B, H)
        usable = first.success.view(count, h).gather(1, order)
        k = max(1, min(fitter.config.hypotheses_completed, h))
        chosen = _complete(fitter, padded, image_index, first, order[:, :k] + faces[:, None] * h, usable[:, :k],
                           other_windows)
        if accept is None or k >= min(COMPLETED, h):
            return chosen
        kept = accept(chosen, image_index)
        for rank in range(k, min(COMPLETED, h)):
            again = (~kept & usable[:, rank]).nonzero().flatten()
            if not len(again):
                break
            retried = _complete(fitter, padded, image_index[again], first, (order[again, rank] + again * h)[:, None],
                                usable[again, rank:rank + 1], other_windows)
            better = accept(retried, image_index[again])
            chosen = _replaced(chosen, again[better], _rows(retried, better))
            kept[again[better]] = True
        return chosen
    view = first.view
    weights, biases, cutoffs = (t.to(flat.device, flat.dtype)[view] for t in
                                (early_termination.weights, early_termination.biases, early_termination.cutoffs))
    calibrated = first.likelihood * weights + biases
    calibrated = torch.where(first.success, calibrated, -torch.inf).view(count, h)
    passes = calibrated > cutoffs.view(count, h)
    any_passes = passes.any(1)
    first_passing = passes.to(torch.int8).argmax(1)                                 # the first True
    k = min(COMPLETED, h)
    best = calibrated.topk(k, dim=1).indices                                        # (B, k), most likely first
    candidates = torch.where(any_passes[:, None], first_passing[:, None].expand(count, k), best)
    use = torch.ones(count, k, dtype=torch.bool, device=flat.device)
    use[:, 1:] = ~any_passes[:, None]                                               # a passing hypothesis alone
    rows = candidates + faces[:, None] * h
    return _complete(fitter, padded, image_index, first, rows, use & first.success[rows], other_windows)


def _ranking(likelihood: torch.Tensor, success: torch.Tensor, detector_start: bool = False) -> torch.Tensor:
    """(B, H) the order in which each face's hypotheses are completed: the most likely after the
    first scale, or the frontal one (0) where within :data:`FRONTAL_MARGIN` of the best of the box's
    hypotheses (and, with ``detector_start``, the last hypothesis being the detector's start, within
    :data:`DETECTOR_MARGIN` of that); then the frontal one (OpenFace's single start), then the
    others, most likely first (the first of equals; the failed last)."""
    likelihood = torch.where(success, likelihood, -torch.inf)
    if likelihood.shape[1] == 1:
        return torch.zeros_like(likelihood, dtype=torch.long)
    others = likelihood[:, 1:].sort(dim=1, descending=True, stable=True).indices + 1          # (B, H - 1)
    boxes = likelihood[:, :-1] if detector_start else likelihood
    frontal = likelihood[:, 0] >= boxes.amax(1) - FRONTAL_MARGIN
    if detector_start:
        frontal = frontal & (likelihood[:, 0] >= likelihood[:, -1] - DETECTOR_MARGIN)
    zero = torch.zeros_like(others[:, 0])
    return torch.cat([torch.where(frontal, zero, others[:, 0])[:, None],
                      torch.where(frontal, others[:, 0], zero)[:, None], others[:, 1:]], 1)


def _complete(fitter: ModelFitter, padded: torch.Tensor, image_index: torch.Tensor, first: FitState,
              rows: torch.Tensor, use: torch.Tensor, window_sizes: tuple[int, ...]) -> FitState:
    """Per face, the most likely of its (B, k) first-scale fits ``rows`` of ``first`` completed over
    ``window_sizes`` where ``use``, then refined by the part models."""
    count, k = rows.shape
    rows, use = rows.flatten(), use.flatten()
    completed = fitter.fit(padded, image_index.repeat_interleave(k), first.params_global[rows],
                           first.params_local[rows], window_sizes, active=use, parts=False)
    completed.success = completed.success & use
    chosen = _most_likely(completed, completed.success.view(count, k))
    if fitter.config.refine_hierarchical and len(fitter.parts):
        chosen = fitter.refine_parts(padded, image_index, chosen, chosen.success)
    return chosen


def _rows(state: FitState, rows: torch.Tensor) -> FitState:
    """The fits ``rows`` (an index or a mask) of a state."""
    return FitState(*(getattr(state, f.name)[rows] for f in fields(FitState)))


def _replaced(state: FitState, rows: torch.Tensor, new: FitState) -> FitState:
    """``state`` with its fits ``rows`` (an index) replaced by ``new``'s, in order."""
    values = []
    for f in fields(FitState):
        value = getattr(state, f.name).clone()
        value[rows] = getattr(new, f.name)
        values.append(value)
    return FitState(*values)


def _first_scale_and_the_others(window_sizes: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``window_sizes`` split at its first scale that is fitted: (11, 9, 7) → (11, 0, 0), (0, 9, 7)."""
    first = next((k for k, w in enumerate(window_sizes) if w), len(window_sizes))
    zeros = (0,) * len(window_sizes)
    return window_sizes[: first + 1] + zeros[first + 1:], zeros[: first + 1] + tuple(window_sizes[first + 1:])


def _most_likely(state: FitState, success: torch.Tensor) -> FitState:
    """Per face the successful fit of highest likelihood (the first of equals; the first fit
    where none succeeded) among its (B, k) fits, ``state`` holding B·k."""
    count, k = success.shape
    likelihood = torch.where(success, state.likelihood.view(count, k), -torch.inf)
    rows = likelihood.argmax(1) + torch.arange(count, device=success.device) * k
    return FitState(state.params_global[rows], state.params_local[rows], state.landmarks[rows],
                    state.likelihood[rows], state.success[rows], state.view[rows])
