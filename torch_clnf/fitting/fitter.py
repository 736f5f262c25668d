"""The landmark fitter: scales, views, NU-RLMS phases and hierarchical parts, batched over faces."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch
from torch import nn

from ..models import CCNFExperts, CENExperts, PointDistributionModel
from ..models.ccnf import CCNFTables, ccnf_maps_per_face
from ..models.compiling import batch_parts, compiled_function, compiling_failed, consecutive_slices
from ..models.linalg import inverse
from ..models.stacking import StackedExperts, StackedPDM, per_face_model
from ..models.sync import static_graph, syncs_cheaply
from ..openface import OpenFaceModel
from .capture import CapturedFit, MainFit
from .config import FitConfig
from .parts import JOINT_PARTS_MAX_FACES, JointParts, PartInput
from .rlms import ResponseFrame, fit_scale, run_scale
from .sampling import align_similarity, sample_areas


@dataclass
class FitState:
    """Where a batch of fits ended.

    Attributes:
        params_global: (B, 6) (scale, pitch, yaw, roll, tx, ty), radians and pixels.
        params_local: (B, m).
        landmarks: (B, n, 2) pixels.
        likelihood: (B,) OpenFace's model likelihood of the last scale.
        success: (B,) bool, False where the fit shrank below ``min_scale`` or became non-finite.
        view: (B,) the expert view used at the last scale.
    """

    params_global: torch.Tensor
    params_local: torch.Tensor
    landmarks: torch.Tensor
    likelihood: torch.Tensor
    success: torch.Tensor
    view: torch.Tensor


class ModelFitter(nn.Module):
    """One OpenFace model (the face, or a part) as a batched fitter.

    Part models of the same shape and settings (the two eyes) are refitted together, as one
    stacked fitter (:meth:`stacked`) over both parts of every face; for a few faces all the
    parts are (:class:`~torch_clnf.fitting.parts.JointParts`).

    Args:
        model: the model's tensors, from :func:`torch_clnf.weights.load_weights`.
        config: fitting parameters (a part gets ``config.for_part(name)``).
        dtype: float32 (default) or float64.
    """

    pdm: PointDistributionModel | StackedPDM
    joint_parts_max_faces: int = JOINT_PARTS_MAX_FACES      # batches this small refit their parts jointly
    _captured: CapturedFit | None = None                   # the main fit's graphs (FitConfig.capture)

    def __init__(self, model: OpenFaceModel, config: FitConfig, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.config = config
        self.pdm = PointDistributionModel(model.pdm, dtype)
        if model.cen:
            layer_dtype = torch.bfloat16 if config.cen_bfloat16 else None
            experts = [CENExperts(e, dtype, sparse=config.sparse, layer_dtype=layer_dtype) for e in model.cen]
        else:
            experts = [CCNFExperts(e, dtype) for e in model.ccnf]
        self.experts = nn.ModuleList(experts)
        self.part_names = [part.name for part in model.parts]
        self.parts = nn.ModuleList([ModelFitter(part.model, config.for_part(part.name), dtype) for part in model.parts])
        for k, part in enumerate(model.parts):
            mapping = torch.tensor(part.mapping, dtype=torch.long)
            self.register_buffer(f"part_{k}_mapping", mapping)                     # (k, 2): main index, part index
        self.part_groups = _stackable_groups(list(self.parts))                     # part indices fitted together
        self.stacked_parts = nn.ModuleDict({_group_key(group): ModelFitter.stacked([self.parts[k] for k in group])
                                            for group in self.part_groups if len(group) > 1})
        self.joint_parts = _joint_parts(self)                                     # few faces: all parts as one batch

    @classmethod
    def stacked(cls, fitters: list["ModelFitter"]) -> "ModelFitter":
        """One fitter for M models of equal shape and settings (see :mod:`~torch_clnf.models.stacking`):
        its :meth:`fit` takes M blocks of B faces, block m fitted with ``fitters[m]``'s model."""
        fitter = cls.__new__(cls)
        nn.Module.__init__(fitter)
        fitter.config = fitters[0].config
        fitter.pdm = StackedPDM([f.pdm for f in fitters])
        fitter.experts = nn.ModuleList([StackedExperts(scale) for scale in zip(*(f.experts for f in fitters))])
        fitter.part_names, fitter.parts, fitter.part_groups = [], nn.ModuleList(), []
        fitter.stacked_parts = nn.ModuleDict()
        fitter.joint_parts = None
        return fitter

    @property
    def patch_scales(self) -> list[float]:
        return [e.patch_scale for e in self.experts]

    def settings_at(self, scale: int) -> tuple[float, float, float]:
        """(sigma, reg_factor, weight_factor) at a scale (:meth:`FitConfig.at_scale`; as OpenFace, a
        scale after the third, CE-CLM's fourth, keeps the third's patch scale for it)."""
        return self.config.at_scale(self.patch_scales[min(scale, 2)])

    def views(self, params_global: torch.Tensor, scale: int, member: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) the expert view nearest each face's rotation at a scale (among its member's views,
        for a :meth:`stacked` fitter)."""
        experts = self.experts[scale]
        return nearest_view(params_global, experts.view_centers, getattr(experts, "view_member", None), member)

    def _compiled(self, *experts: nn.Module) -> bool:
        """Whether responses of these experts are computed from compiled packages (``FitConfig.compile``,
        CCNF experts, not in a static graph, no compilation failed)."""
        return (self.config.compile and not static_graph() and not compiling_failed()
                and all(map(_has_tables, experts)))

    def responses(self, padded: torch.Tensor, image_index: torch.Tensor, params_global: torch.Tensor,
                  params_local: torch.Tensor, scale: int, window: int, weight_factor: float,
                  pdm: PointDistributionModel | None = None,
                  member: torch.Tensor | None = None) -> tuple[ResponseFrame, torch.Tensor]:
        """Sample the areas around the current shape (``padded`` from :func:`pad_images`) and
        compute one scale's response maps (``pdm`` and ``member``: those of a :meth:`stacked` fitter's batch)."""
        experts = self.experts[scale]
        pdm = self.pdm if pdm is None else pdm
        if self._compiled(experts):         # (inside a compiled package: each face's view chosen in the graph)
            return _frame_and_view(ccnf_frame(pdm, padded, image_index, params_global, params_local,
                                              experts.tables(window), experts.patch_scale, experts.support,
                                              window + experts.support[0] - 1, weight_factor, member))
        shape = pdm.project(params_global, params_local)
        image_to_reference = align_similarity(shape, pdm.reference_shape(params_local, experts.patch_scale))
        reference_to_image = inverse(image_to_reference)
        view = self.views(params_global, scale, member)
        areas = sample_areas(padded, image_index, shape, reference_to_image, window + experts.support[0] - 1)
        maps, visible = experts(areas, view)
        weights = torch.ones_like(maps[:, :, 0, 0])
        if weight_factor > 0:
            weights = weight_factor * experts.confidence[view]
        return ResponseFrame(maps, visible, shape, image_to_reference, reference_to_image, weights), view

    def fit(self, padded: torch.Tensor, image_index: torch.Tensor, params_global: torch.Tensor,
            params_local: torch.Tensor, window_sizes: tuple[int, ...], active: torch.Tensor | None = None,
            parts: bool = True) -> FitState:
        """Fit from the given params over the scales (OpenFace's ``CLNF::Fit``), then the parts.

        Args:
            padded: (N, H + 4, W + 4) grey images with a zero margin, from :func:`pad_images`.
            image_index: (B,) the image of each face.
            params_global: (B, 6); params_local: (B, m) the starting params.
            window_sizes: per scale (0 skips it).
            active: (B,) bool, faces to fit (default all); the others are returned unchanged.
            parts: refit the part models afterwards (if the config's ``refine_hierarchical`` is on).

        A :meth:`stacked` fitter of M members takes B = M · b faces, member m's in block m.
        """
        cfg = self.config
        members = self.pdm.members if isinstance(self.pdm, StackedPDM) else 1
        if self._may_fit_in_parts(members):
            sizes = batch_parts(params_global.shape[0], lambda: self._main_package_made(
                padded, image_index, params_global, params_local, window_sizes, active))
            if len(sizes) > 1:
                return self._fit_in_parts(sizes, padded, image_index, params_global, params_local, window_sizes,
                                          active, parts)
        pdm, _ = per_face_model(self.pdm, params_global.shape[0] // members)
        if cfg.capture and members == 1 and not static_graph():
            if self._captured is None:
                self._captured = CapturedFit(self)
            main = self._captured(padded, image_index, params_global, params_local, tuple(window_sizes), active)
        else:
            main = self.main_fit(padded, image_index, params_global, params_local, window_sizes, active)
        params_global, params_local, success, likelihood, view = main
        landmarks = pdm.project(params_global, params_local)
        state = FitState(params_global, params_local, landmarks, likelihood, success, view)
        if parts and cfg.refine_hierarchical and len(self.parts):
            state = self.refine_parts(padded, image_index, state, success)
        finite = torch.isfinite(state.landmarks).flatten(1).all(1) & torch.isfinite(state.params_global).all(1)
        state.success = state.success & finite
        return state

    def _may_fit_in_parts(self, members: int) -> bool:
        """Whether a compiled fit (of ``members`` == 1 model, neither captured nor being traced) may
        run in the power-of-two parts of :func:`~torch_clnf.models.compiling.batch_parts`."""
        return (self.config.compile and not self.config.capture and members == 1 and not static_graph()
                and not compiling_failed() and not torch.compiler.is_compiling())

    def _main_package_made(self, padded: torch.Tensor, image_index: torch.Tensor, params_global: torch.Tensor,
                           params_local: torch.Tensor, window_sizes: tuple[int, ...],
                           active: torch.Tensor | None) -> bool:
        """Whether the main fit of these faces is one package, made already for their number."""
        call = self._compiled_main_fit(padded, image_index, params_global, params_local, window_sizes, active)
        return call is not None and call[0].has_package(*call[1])

    def _fit_in_parts(self, sizes: list[int], padded: torch.Tensor, image_index: torch.Tensor,
                      params_global: torch.Tensor, params_local: torch.Tensor, window_sizes: tuple[int, ...],
                      active: torch.Tensor | None, parts: bool) -> FitState:
        """:meth:`fit` of the faces in consecutive blocks of these sizes, each block with the images
        its faces are on (a range of ``padded`` where they are consecutive, as in tracking: not copied)."""
        states = []
        for faces in consecutive_slices(sizes):
            images, index = torch.unique(image_index[faces], return_inverse=True)
            first, count = int(images[0]), len(images)
            block = padded.narrow(0, first, count) if int(images[-1]) - first + 1 == count else padded[images]
            states.append(self.fit(block, index, params_global[faces], params_local[faces], window_sizes,
                                   None if active is None else active[faces], parts))
        return FitState(*(torch.cat([getattr(s, f.name) for s in states]) for f in fields(FitState)))

    def _compiled_main_fit(self, padded: torch.Tensor, image_index: torch.Tensor, params_global: torch.Tensor,
                           params_local: torch.Tensor, window_sizes: tuple[int, ...],
                           active: torch.Tensor | None) -> tuple[Callable, tuple] | None:
        """(the compiled function, its arguments) that :meth:`main_fit` runs as one package, or None
        where it does not (not compiled, or experts without tables: CEN)."""
        cfg = self.config
        batch = params_global.shape[0]
        members = self.pdm.members if isinstance(self.pdm, StackedPDM) else 1
        used = [(scale, window) for scale, window in enumerate(window_sizes[: len(self.experts)]) if window]
        if not self._compiled(*(self.experts[s] for s, _ in used)):
            return None
        pdm, member = per_face_model(self.pdm, batch // members)                  # member: None for one model
        scales = tuple((self.experts[s].tables(w), self.experts[s].patch_scale, self.experts[s].support,
                        w + self.experts[s].support[0] - 1, *self.settings_at(s)) for s, w in used)
        active = torch.ones(batch, dtype=torch.bool, device=params_global.device) if active is None else active
        return (compiled_function(fit_ccnf_scales, MainFit._make, dynamic={1: (1, 2)}),
                (pdm, padded, image_index, params_global, params_local, active, member, scales, cfg.iterations,
                 cfg.convergence, cfg.kde_step, cfg.shape_sigmas, cfg.min_scale))

    def main_fit(self, padded: torch.Tensor, image_index: torch.Tensor, params_global: torch.Tensor,
                 params_local: torch.Tensor, window_sizes: tuple[int, ...],
                 active: torch.Tensor | None = None) -> MainFit:
        """The scales of :meth:`fit` (OpenFace's ``CLNF::Fit``), without the parts: (B, 6) and (B, m)
        params, (B,) success, likelihood and view."""
        cfg = self.config
        batch = params_global.shape[0]
        members = self.pdm.members if isinstance(self.pdm, StackedPDM) else 1
        compiled = self._compiled_main_fit(padded, image_index, params_global, params_local, window_sizes, active)
        if compiled is not None:
            function, args = compiled
            return function(*args)
        pdm, member = per_face_model(self.pdm, batch // members)                  # member: None for one model
        active = torch.ones(batch, dtype=torch.bool, device=params_global.device) if active is None else active.clone()
        success = active.clone()
        likelihood = params_global.new_zeros(batch)
        view = torch.zeros(batch, dtype=torch.long, device=params_global.device)
        for scale, window in enumerate(window_sizes[: len(self.experts)]):
            if window == 0 or (syncs_cheaply(active) and not bool(active.any())):
                continue
            sigma, reg, weight_factor = self.settings_at(scale)
            frame, view_now = self.responses(padded, image_index, params_global, params_local, scale, window, weight_factor,
                                             pdm, member)
            view = torch.where(active, view_now, view)
            params_global, params_local, active, success, likelihood = fit_scale(
                pdm, params_global, params_local, frame, sigma, reg, cfg, active, success, likelihood)
        return MainFit(params_global, params_local, success, likelihood, view)

    def refine_parts(self, padded: torch.Tensor, image_index: torch.Tensor, state: FitState, active: torch.Tensor) -> FitState:
        """Refit each part model from the face's landmarks and write its landmarks back.

        As OpenFace: a part is refitted where the face's scale exceeds 0.9 × the part's first
        patch scale; where any part was, the face's params are refitted to the combined landmarks.
        Parts are independent of each other (each starts from the face's landmarks); a group of
        stackable parts (the eyes) is one fit of all its parts of all faces, and a batch of at
        most :attr:`joint_parts_max_faces` faces refits all its groups as one padded batch
        (:mod:`.parts`); with ``FitConfig.compile``, all of it is one package (:func:`refit_parts_jointly`).
        """
        batch = state.landmarks.shape[0]
        if (self.config.compile and self._refits_jointly(batch) and not torch.compiler.is_compiling()
                and all(f._compiled(*f.experts) for f in self.joint_parts._fitters)):
            return compiled_function(refit_parts_jointly, lambda t: FitState(*t), dynamic={2: (1, 2)},
                                     prepare=_prepare_joint_refit)(
                self, self._parts_settings(), padded, image_index, state, active)
        return self._refine_parts(padded, image_index, state, active)

    def _refine_parts(self, padded: torch.Tensor, image_index: torch.Tensor, state: FitState,
                      active: torch.Tensor) -> FitState:
        """:meth:`refine_parts`, step by step."""
        landmarks = state.landmarks.clone()
        batch = landmarks.shape[0]
        groups = [self._group_fitter(group) for group in self.part_groups]
        inputs = [self._part_input(group, fitter, state, active)
                  for group, fitter in zip(self.part_groups, groups)]
        if self._refits_jointly(batch):
            fitted = self.joint_parts.fit(padded, image_index, inputs, compiled=self.config.compile)
        else:
            fitted = [self._refit_group(fitter, part, padded, image_index) for fitter, part in zip(groups, inputs)]
        used_any = torch.zeros_like(active)
        for group, fitter, part, (g, p) in zip(self.part_groups, groups, inputs, fitted):
            refined = per_face_model(fitter.pdm, batch)[0].project(g, p).unflatten(0, (len(group), batch))
            for m, k in enumerate(group):
                main_index, part_index = getattr(self, f"part_{k}_mapping").unbind(1)
                landmarks[:, main_index] = torch.where(active[:, None, None], refined[m][:, part_index],
                                                       landmarks[:, main_index])
            used_any = used_any | part.use.unflatten(0, (len(group), batch)).any(0)
        if not syncs_cheaply(used_any) or bool(used_any.any()):
            g, p = self.pdm.params_from_landmarks(landmarks, compiled=self.config.compile)
            keep = used_any[:, None]
            state.params_global = torch.where(keep, g, state.params_global)
            state.params_local = torch.where(keep, p, state.params_local)
            state.landmarks = self.pdm.project(state.params_global, state.params_local)
        return state

    def _parts_settings(self) -> tuple:
        """The configs (as text) and patch scales of the fitter and its parts, which name the
        parts' refit package; made again only when a config is replaced."""
        fitters = [self, *self.parts]
        configs = tuple(f.config for f in fitters)
        kept = self.__dict__.get("_kept_settings")
        if kept is None or len(kept[0]) != len(configs) or any(a is not b for a, b in zip(kept[0], configs)):
            kept = self._kept_settings = (configs, tuple((repr(f.config), tuple(f.patch_scales)) for f in fitters))
        return kept[1]

    def _refits_jointly(self, batch: int) -> bool:
        """Whether a batch of ``batch`` faces refits its part groups as one padded batch (:mod:`.parts`)."""
        return self.joint_parts is not None and batch <= self.joint_parts_max_faces

    def _group_fitter(self, group: list[int]) -> "ModelFitter":
        """The fitter of a group of parts: the part's own, or the group's stacked one."""
        return self.stacked_parts[_group_key(group)] if len(group) > 1 else self.parts[group[0]]

    def _part_input(self, group: list[int], fitter: "ModelFitter", state: FitState, active: torch.Tensor) -> PartInput:
        """A group's part landmarks (``fitter`` its :meth:`_group_fitter`), mapped from the face's,
        and where each part is refitted (as OpenFace: where the face's scale exceeds 0.9 × the
        part's first patch scale)."""
        batch = state.landmarks.shape[0]
        points = fitter.pdm.num_points
        landmarks = state.landmarks.new_zeros(len(group), batch, points, 2)
        given = torch.zeros(len(group), batch, points, dtype=torch.bool, device=landmarks.device)
        use = []
        for m, k in enumerate(group):
            mapping = getattr(self, f"part_{k}_mapping")
            landmarks[m][:, mapping[:, 1]] = state.landmarks[:, mapping[:, 0]]
            given[m][:, mapping[:, 1]] = True
            use.append(active & (state.params_global[:, 0] > 0.9 * self.parts[k].patch_scales[0]))
        return PartInput(landmarks, given, torch.cat(use))

    def _refit_group(self, fitter: "ModelFitter", part: PartInput, padded: torch.Tensor,
                     image_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CalcParams and the fit of one group of parts on its own: (M · B, 6), (M · B, m) params."""
        members, batch = part.landmarks.shape[:2]
        pdm = per_face_model(fitter.pdm, batch)[0]
        g, p = pdm.params_from_landmarks(part.landmarks.flatten(0, 1), part.given.flatten(0, 1),
                                         compiled=self.config.compile)
        if not syncs_cheaply(part.use) or bool(part.use.any()):
            fitted = fitter.fit(padded, image_index.repeat(members), g, p, fitter.config.window_sizes, part.use)
            g, p = fitted.params_global, fitted.params_local
        return g, p


def nearest_view(params_global: torch.Tensor, view_centers: torch.Tensor, view_member: torch.Tensor | None = None,
                 member: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) the view whose (V, 3) centre is nearest each face's (B, 6) rotation; with the (V,)
    ``view_member`` of stacked experts, among the views of each face's (B,) ``member``."""
    distance = ((params_global[:, None, 1:4] - view_centers.to(params_global.dtype)) ** 2).sum(-1)
    if member is not None:
        distance = torch.where(view_member == member[:, None], distance, torch.inf)
    return distance.argmin(1)


def ccnf_frame(pdm: PointDistributionModel, padded: torch.Tensor, image_index: torch.Tensor,
               params_global: torch.Tensor, params_local: torch.Tensor, tables: CCNFTables, patch_scale: float,
               support: tuple[int, int], size: int, weight_factor: float,
               member: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """:meth:`ModelFitter.responses` of CCNF experts with no host read, each face's view chosen and
    its experts gathered inside: what the compiled packages of ``FitConfig.compile`` run (see
    :func:`fit_ccnf_scales`, :func:`refit_parts_jointly`).

    Returns:
        (B, n, w, w) maps, (B, n) visible, (B, n, 2) shape, (B, 2, 2) image-to-reference and
        reference-to-image similarities, (B, n) weights, (B,) view (see :func:`_frame_and_view`).
    """
    shape = pdm.project(params_global, params_local)
    image_to_reference = align_similarity(shape, pdm.reference_shape(params_local, patch_scale))
    reference_to_image = inverse(image_to_reference)
    view = nearest_view(params_global, tables.view_centers, tables.view_member, member)
    areas = sample_areas(padded, image_index, shape, reference_to_image, size)
    maps = ccnf_maps_per_face(areas, view, tables, support)
    weights = weight_factor * tables.confidence[view] if weight_factor > 0 else torch.ones_like(maps[:, :, 0, 0])
    return maps, tables.visible[view], shape, image_to_reference, reference_to_image, weights, view


def fit_ccnf_scales(pdm: PointDistributionModel, padded: torch.Tensor, image_index: torch.Tensor,
                    params_global: torch.Tensor, params_local: torch.Tensor, active: torch.Tensor,
                    member: torch.Tensor | None, scales: tuple[tuple, ...], iterations: int, convergence: float,
                    kde_step: float, shape_sigmas: float, min_scale: float) -> MainFit:
    """:meth:`ModelFitter.main_fit` of CCNF experts with no host read (every scale runs, faces
    that stopped masked): what ``FitConfig.compile`` runs as one package per model, windows and
    batch size (the images' height and width are the package's variables).

    Args:
        scales: per scale fitted, its experts' (:class:`CCNFTables`, patch scale, support, area
            size) and (sigma, reg_factor, weight_factor).
    """
    success = active.clone()
    likelihood = params_global.new_zeros(active.shape)
    view = torch.zeros(active.shape, dtype=torch.long, device=active.device)
    for tables, patch_scale, support, size, sigma, reg, weight_factor in scales:
        frame, view_now = _frame_and_view(ccnf_frame(pdm, padded, image_index, params_global, params_local, tables,
                                                     patch_scale, support, size, weight_factor, member))
        view = torch.where(active, view_now, view)
        params_global, params_local, active, success, likelihood = run_scale(
            pdm, params_global, params_local, frame, sigma, reg, iterations, convergence, kde_step, shape_sigmas,
            min_scale, active, success, likelihood)
    return MainFit(params_global, params_local, success, likelihood, view)


def refit_parts_jointly(fitter: ModelFitter, settings: tuple, padded: torch.Tensor, image_index: torch.Tensor,
                        state: FitState, active: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """:meth:`ModelFitter.refine_parts` with the parts refitted jointly, what ``FitConfig.compile``
    runs as one package per model and batch size (the images' height and width its variables): the
    parts' CalcParams (its loop inside), their rounds of scales, the landmarks written back and the
    face's CalcParams. ``settings``, the configs and patch scales of the fitter and its parts (which
    the refit reads), name the package.

    Returns:
        the fields of the refined :class:`FitState`, in order.
    """
    state = fitter._refine_parts(padded, image_index, FitState(*vars(state).values()), active)
    return tuple(vars(state).values())


def _prepare_joint_refit(fitter: ModelFitter, settings: tuple, padded: torch.Tensor, image_index: torch.Tensor,
                         state: FitState, active: torch.Tensor) -> None:
    """What :func:`refit_parts_jointly`'s package keeps (the parts' tables and tiled models), made
    before it is traced."""
    fitter.joint_parts._prepare(state.landmarks.shape[0])


def _frame_and_view(out: tuple[torch.Tensor, ...]) -> tuple[ResponseFrame, torch.Tensor]:
    """:func:`ccnf_frame`'s tensors as :meth:`ModelFitter.responses` returns them."""
    return ResponseFrame(*out[:6]), out[6]


def _has_tables(experts: nn.Module) -> bool:
    """Whether the experts are CCNF ones (or stacked CCNF ones), which :func:`ccnf_frame` computes."""
    members = experts.members if isinstance(experts, StackedExperts) else [experts]
    return all(isinstance(m, CCNFExperts) for m in members)


def _joint_parts(fitter: ModelFitter) -> JointParts | None:
    """The joint refit of a model's part groups, where they can be fitted as one (see :mod:`.parts`)."""
    if len(fitter.part_groups) < 2:
        return None
    groups = [(fitter._group_fitter(group), [fitter.parts[k].pdm for k in group]) for group in fitter.part_groups]
    try:
        return JointParts(groups)
    except ValueError:
        return None


def _stackable_groups(parts: list[ModelFitter]) -> list[list[int]]:
    """Part indices grouped where the models can be fitted as one stacked batch: same settings,
    point and mode counts, expert kind, patch scales and supports, no parts of their own."""
    def signature(part: ModelFitter) -> tuple:
        return (part.config, part.pdm.num_points, part.pdm.num_modes, len(part.parts),
                tuple((type(e), e.patch_scale, tuple(e.support), e.num_points) for e in part.experts))

    groups: list[tuple[tuple, list[int]]] = []
    for k, part in enumerate(parts):
        key = signature(part)
        same = [members for other, members in groups if other == key and not len(part.parts)]
        if same:
            same[0].append(k)
        else:
            groups.append((key, [k]))
    return [members for _, members in groups]


def _group_key(group: list[int]) -> str:
    return "_".join(map(str, group))
