"""The part models of a few faces refitted together: one NU-RLMS batch for the inner face and the eyes.

OpenFace refits each part model on its own after the main fit: CalcParams from the face's
landmarks, then NU-RLMS over the part's scales. For one face (tracking a video, fitting a photo)
every tensor operation costs its few microseconds of overhead rather than its arithmetic, so
the number of operations is the time. :class:`JointParts` runs the CalcParams of all parts as
one call and aligns the parts' scales at their last: the eyes' two scales and the inner face's
one end together, and in a round where several parts fit, their response maps (each from its
own experts) are zero-padded to the largest window, their landmarks to the largest model, and
one NU-RLMS runs over all of them with each face's own sigma, prior, weights and window. Each
part's fit is the one it would get alone (the padding adds exact zeros; sums in another order
move float32 results by rounding only). For large batches, where the padding would cost
arithmetic, :class:`~torch_clnf.fitting.fitter.ModelFitter` fits each group of parts alone.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..models import PointDistributionModel
from ..models.constants import widest_float
from ..models.stacking import StackedPDM, per_face_model
from ..models.sync import syncs_cheaply
from .config import FitConfig
from .rlms import ResponseFrame, ScaleFit, fit_scale

if TYPE_CHECKING:
    from .fitter import ModelFitter

# Batches of at most this many faces refit their parts jointly: one face's fit is 1.1–1.2× faster,
# four faces' ~1.05×; from about 8 faces on, the padded arithmetic costs what the saved operations did.
JOINT_PARTS_MAX_FACES = 8


class PartInput(NamedTuple):
    """One group of parts (M models) of B faces, as :meth:`JointParts.fit` takes it.

    Attributes:
        landmarks: (M, B, n, 2) pixels, the face's landmarks mapped to the part's points.
        given: (M, B, n) bool, the part's points that have a landmark.
        use: (M · B,) bool, the part fits to run.
    """

    landmarks: torch.Tensor
    given: torch.Tensor
    use: torch.Tensor


class JointParts(nn.Module):
    """Groups of part models (the inner face; the two eyes, a stacked fitter) refitted as one batch.

    Args:
        groups: per group, its fitter (a part's, or a stacked one) and its members' PDMs.
    """

    def __init__(self, groups: list[tuple["ModelFitter", list[PointDistributionModel]]]) -> None:
        super().__init__()
        if any(_shared_settings(fitter) != _shared_settings(groups[0][0]) for fitter, _ in groups):
            raise ValueError("joint part fits need parts that differ only in windows, sigma, reg_factor "
                             "and weight_factor")
        scales = [[(s, w) for s, w in enumerate(f.config.window_sizes[: len(f.experts)]) if w] for f, _ in groups]
        # fewest scales first: the parts fitting in a round (aligned at their last scale) are then
        # the last groups, one contiguous block of faces
        self.order = sorted(range(len(groups)), key=lambda g: len(scales[g]))
        self._fitters = [groups[g][0] for g in self.order]          # not submodules: the ModelFitter owns them
        self.scales = [scales[g] for g in self.order]
        self.members = [len(groups[g][1]) for g in self.order]
        self.first_member = [sum(self.members[:i]) for i in range(len(self.order))]
        self.pdm = StackedPDM([pdm for g in self.order for pdm in groups[g][1]], padded=True)

    def fit(self, padded: torch.Tensor, image_index: torch.Tensor, parts: list[PartInput],
            compiled: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Refit every group's parts: CalcParams of all of them as one call, then the rounds of scales.

        Args:
            padded: (N, H + 4, W + 4) grey images (:func:`~torch_clnf.fitting.sampling.pad_images`).
            image_index: (B,) the image of each face.
            parts: one per group, in the order of the groups given at construction.
            compiled: CalcParams as its compiled package (``FitConfig.compile``; the rounds are
                compiled as part of :func:`~torch_clnf.fitting.fitter.refit_parts_jointly`).
        Returns:
            per group, (M · B, 6) global and (M · B, m) local params of its own model.
        """
        batch = parts[0].landmarks.shape[1]
        points = self.pdm.num_points
        ordered = [parts[g] for g in self.order]
        landmarks = torch.cat([F.pad(p.landmarks.flatten(0, 1), (0, 0, 0, points - p.landmarks.shape[2])) for p in ordered])
        given = torch.cat([F.pad(p.given.flatten(0, 1), (0, points - p.given.shape[2])) for p in ordered])
        use = torch.cat([p.use for p in ordered])
        params_global, params_local = self.pdm.tiled(batch).params_from_landmarks(landmarks, given, compiled=compiled)
        state = self._rounds(padded, image_index, params_global, params_local, use)
        fitted = [(state.params_global[self._rows(i, batch)], state.params_local[self._rows(i, batch), : self._modes(i)])
                  for i in range(len(self.order))]
        return [fitted[self.order.index(g)] for g in range(len(self.order))]

    def _prepare(self, batch: int) -> None:
        """Make what the rounds of ``batch`` faces keep (the experts' tables, the tiled models)
        before they are traced: the package then holds them, instead of computing them in every call."""
        for i, fitter in enumerate(self._fitters):
            per_face_model(fitter.pdm, batch)
            self.pdm.tiled(batch, self.first_member[i])
            for scale, window in self.scales[i]:
                fitter.experts[scale].tables(window)

    def _rounds(self, padded: torch.Tensor, image_index: torch.Tensor, params_global: torch.Tensor,
                params_local: torch.Tensor, use: torch.Tensor) -> ScaleFit:
        """The rounds of scales of :meth:`fit` from the CalcParams params: (P, 6) and (P, m) params,
        P the parts of all faces, the joint model's modes."""
        batch = image_index.shape[0]
        points = self.pdm.num_points
        state = ScaleFit(params_global, params_local, use.clone(), use.clone(), params_global.new_zeros(use.shape[0]))
        rounds = max(len(s) for s in self.scales)
        for round_ in range(rounds if not syncs_cheaply(use) or bool(use.any()) else 0):
            fitting = [i for i, s in enumerate(self.scales) if len(s) >= rounds - round_]
            rows = slice(self.first_member[fitting[0]] * batch, None)
            if syncs_cheaply(use) and not bool(state.active[rows].any()):
                continue
            scales = [self.scales[i][round_ - rounds + len(self.scales[i])] for i in fitting]
            if len(fitting) == 1:                                # a part alone: its own model, unpadded
                state = self._fit_alone(fitting[0], scales[0], padded, image_index, batch, state)
                continue
            size = max(window for _, window in scales)
            frames, sigmas, regs = [], [], []
            for i, (scale, window) in zip(fitting, scales):
                frame, sigma, reg = self._frame(i, scale, window, padded, image_index, batch, state)
                frames.append(_pad_frame(frame, window, points, size))
                count = self.members[i] * batch
                sigmas.append(torch.full((count,), sigma, dtype=widest_float(use.device), device=use.device))
                regs.append(torch.full((count, 1), reg, dtype=params_global.dtype, device=use.device))
            frame = _cat_frames(frames, self._points(batch, fitting[0]))
            out = fit_scale(self.pdm.tiled(batch, self.first_member[fitting[0]]), state.params_global[rows],
                            state.params_local[rows], frame, torch.cat(sigmas), torch.cat(regs),
                            self._fitters[fitting[0]].config, state.active[rows], state.success[rows],
                            state.likelihood[rows])
            state = ScaleFit(*(_put(whole, rows, part) for whole, part in zip(state, out)))
        return state

    def _frame(self, i: int, scale: int, window: int, padded: torch.Tensor, image_index: torch.Tensor, batch: int,
               state: ScaleFit) -> tuple[ResponseFrame, float, float]:
        """Group ``i``'s response frame at one of its scales, with its sigma and reg_factor there."""
        fitter, rows = self._fitters[i], self._rows(i, batch)
        pdm, member = per_face_model(fitter.pdm, batch)
        sigma, reg, weight_factor = fitter.settings_at(scale)
        frame, _ = fitter.responses(padded, image_index.repeat(self.members[i]), state.params_global[rows],
                                    state.params_local[rows, : self._modes(i)], scale, window, weight_factor, pdm, member)
        return frame, sigma, reg

    def _fit_alone(self, i: int, scale_window: tuple[int, int], padded: torch.Tensor, image_index: torch.Tensor,
                   batch: int, state: ScaleFit) -> ScaleFit:
        """One scale of group ``i`` alone, with its own (unpadded) model."""
        frame, sigma, reg = self._frame(i, *scale_window, padded, image_index, batch, state)
        rows, modes = self._rows(i, batch), self._modes(i)
        pdm = per_face_model(self._fitters[i].pdm, batch)[0]
        out = fit_scale(pdm, state.params_global[rows], state.params_local[rows, :modes], frame, sigma, reg,
                        self._fitters[i].config, state.active[rows], state.success[rows], state.likelihood[rows])
        local = state.params_local.clone()
        local[rows, :modes] = out.params_local
        return ScaleFit(_put(state.params_global, rows, out.params_global), local, _put(state.active, rows, out.active),
                        _put(state.success, rows, out.success), _put(state.likelihood, rows, out.likelihood))

    def _rows(self, i: int, batch: int) -> slice:
        """The faces of group ``i`` (all its members) in the joint batch."""
        return slice(self.first_member[i] * batch, (self.first_member[i] + self.members[i]) * batch)

    def _modes(self, i: int) -> int:
        """Group ``i``'s own number of modes (the joint model's first ones)."""
        return self.pdm.sizes[self.first_member[i]][1]

    def _points(self, batch: int, first_group: int) -> torch.Tensor:
        """(F, n, 1) 1 for the members' own points, 0 for padding, faces of the groups from ``first_group`` on."""
        index = self.pdm.member_index(batch)[self.first_member[first_group] * batch:]
        return self.pdm.points[index].unsqueeze(-1).to(self.pdm.mean_shape.dtype)


def _shared_settings(fitter: "ModelFitter") -> FitConfig:
    """A part's config without what may differ between jointly fitted parts."""
    return replace(fitter.config, window_sizes=(), tracking_window_sizes=(), sigma=0.0, reg_factor=0.0, weight_factor=0.0)


def _put(values: torch.Tensor, rows: slice, new: torch.Tensor) -> torch.Tensor:
    """``values`` with ``rows`` replaced by ``new`` (a copy)."""
    values = values.clone()
    values[rows] = new
    return values


def _pad_frame(frame: ResponseFrame, window: int, points: int, size: int) -> ResponseFrame:
    """A part's frame padded to ``points`` landmarks (invisible, weight 0) and ``size`` × ``size`` maps (zeros)."""
    extra = points - frame.maps.shape[1]
    maps = F.pad(frame.maps, (0, size - window, 0, size - window, 0, extra))
    return ResponseFrame(maps, F.pad(frame.visible, (0, extra)), F.pad(frame.base_shape, (0, 0, 0, extra)),
                         frame.image_to_reference, frame.reference_to_image, F.pad(frame.weights, (0, extra)),
                         torch.full((maps.shape[0],), window, dtype=widest_float(maps.device), device=maps.device))


def _cat_frames(frames: list[ResponseFrame], points: torch.Tensor) -> ResponseFrame:
    """Padded frames of consecutive groups as one frame, with the (F, n, 1) mask of real points."""
    def cat(name: str) -> torch.Tensor:
        return torch.cat([getattr(f, name) for f in frames])

    return ResponseFrame(cat("maps"), cat("visible"), cat("base_shape"), cat("image_to_reference"),
                         cat("reference_to_image"), cat("weights"), cat("windows"), points)
