"""Fitting faces from several head-rotation hypotheses, as OpenFace's ``DetectLandmarksInImage``."""
from __future__ import annotations

import torch

from ..openface import EarlyTermination
from .fitter import FitState, ModelFitter

# OpenFace completes this many first-scale fits when none passes its early-termination cutoff
COMPLETED = 3


def fit_hypotheses(fitter: ModelFitter, padded: torch.Tensor, image_index: torch.Tensor, params_global: torch.Tensor,
                   window_sizes: tuple[int, ...], early_termination: EarlyTermination | None = None) -> FitState:
    """One fit per face from H starting params each (the face's box at H head rotations).

    Without early termination (CLNF), OpenFace's basic search: every hypothesis is fitted over
    all scales and the most likely successful fit is kept. With it (CE-CLM), OpenFace's faster
    search: every hypothesis is fitted at the first scale only and its likelihood ``L``,
    calibrated per view, is compared with the view's cutoff (``w·L + b > cutoff``); the first
    hypothesis in order that passes is completed over the other scales, and where none does,
    the three with the highest calibrated likelihood are completed and the most likely
    completed fit is kept. The part models then refine the kept fits.

    Args:
        padded: (N, H + 4, W + 4) grey images with a zero margin; image_index: (B,).
        params_global: (B, H, 6) the starting params of each face's hypotheses (local params 0).
        window_sizes: per scale, as for :meth:`ModelFitter.fit`.
        early_termination: the model's per-view calibration (V,) of its first scale's views.
    Returns:
        FitState of B faces.
    """
    count, h = params_global.shape[:2]
    flat = params_global.flatten(0, 1)
    local = flat.new_zeros(flat.shape[0], fitter.pdm.num_modes)
    index = image_index.repeat_interleave(h)
    if early_termination is None:
        state = fitter.fit(padded, index, flat, local, window_sizes, parts=False)
        chosen = _most_likely(state, state.success.view(count, h))
    else:
        first = fitter.fit(padded, index, flat, local, window_sizes[:1] + (0,) * (len(window_sizes) - 1), parts=False)
        view = first.view
        weights, biases, cutoffs = (t.to(flat.device, flat.dtype)[view] for t in
                                    (early_termination.weights, early_termination.biases, early_termination.cutoffs))
        calibrated = first.likelihood * weights + biases
        calibrated = torch.where(first.success, calibrated, -torch.inf).view(count, h)
        passes = calibrated > cutoffs.view(count, h)
        any_passes = passes.any(1)
        first_passing = passes.to(torch.int8).argmax(1)                             # the first True
        k = min(COMPLETED, h)
        best = calibrated.topk(k, dim=1).indices                                    # (B, k), most likely first
        candidates = torch.where(any_passes[:, None], first_passing[:, None].expand(count, k), best)
        use = torch.ones(count, k, dtype=torch.bool, device=flat.device)
        use[:, 1:] = ~any_passes[:, None]                                           # a passing hypothesis alone
        rows = (candidates + torch.arange(count, device=flat.device)[:, None] * h).flatten()
        use = use.flatten() & first.success[rows]
        completed = fitter.fit(padded, index[rows], first.params_global[rows], first.params_local[rows],
                               (0,) + tuple(window_sizes[1:]), active=use, parts=False)
        completed.success = completed.success & use
        chosen = _most_likely(completed, completed.success.view(count, k))
    if fitter.config.refine_hierarchical and len(fitter.parts):
        chosen = fitter.refine_parts(padded, image_index, chosen, chosen.success)
    return chosen


def _most_likely(state: FitState, success: torch.Tensor) -> FitState:
    """Per face the successful fit of highest likelihood (the first of equals; the first fit
    where none succeeded) among its (B, k) fits, ``state`` holding B·k."""
    count, k = success.shape
    likelihood = torch.where(success, state.likelihood.view(count, k), -torch.inf)
    rows = likelihood.argmax(1) + torch.arange(count, device=success.device) * k
    return FitState(state.params_global[rows], state.params_local[rows], state.landmarks[rows],
                    state.likelihood[rows], state.success[rows], state.view[rows])
