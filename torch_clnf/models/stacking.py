"""Several models fitted as one batch, each face with its member's model.

OpenFace fits its two eye models one after the other. Stacked, the left and right eyes of B
faces are one batch of 2B fits: faces ``0 … B − 1`` use member 0, faces ``B … 2B − 1`` member 1
(contiguous blocks, :meth:`StackedPDM.tiled`), so every fitting step runs once instead of twice.
Models of different sizes (the inner face and the eyes) stack padded (``StackedPDM(...,
padded=True)``): the smaller ones get points that no landmark uses and modes that move nothing.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..openface import PDMData
from .ccnf import CCNFTables
from .pdm import PointDistributionModel
from .sync import static_graph
from .windows import PatchResponse


class StackedPDM(nn.Module):
    """M point distribution models with equal point and mode counts, or padded to the largest.

    Padding (``padded=True``) gives a smaller model points at the origin of its 3D frame, which
    the fits must weight 0 (:attr:`points` says which are real), and modes with zero components
    and eigenvalue 1: a regularised step leaves their params at exactly 0.

    Example:
        >>> eyes = StackedPDM([left_eye_pdm, right_eye_pdm])
        >>> pdm = eyes.tiled(4)          # 8 faces: 4 left eyes, then 4 right eyes
        >>> pdm.project(params_global, params_local).shape     # (8, 6), (8, m) params
        torch.Size([8, 28, 2])
    """

    mean_shape: torch.Tensor
    principal_components: torch.Tensor
    eigenvalues: torch.Tensor
    points: torch.Tensor

    def __init__(self, pdms: Sequence[PointDistributionModel], padded: bool = False) -> None:
        super().__init__()
        shapes = {(p.num_points, p.num_modes) for p in pdms}
        if len(shapes) != 1 and not padded:
            raise ValueError(f"stacked PDMs need equal (points, modes), found {sorted(shapes)}")
        n, m = max(p.num_points for p in pdms), max(p.num_modes for p in pdms)
        like = pdms[0].mean_shape
        mean = like.new_zeros(len(pdms), n, 3)
        components = like.new_zeros(len(pdms), n, 3, m)
        eigenvalues = like.new_ones(len(pdms), m)
        points = torch.zeros(len(pdms), n, dtype=torch.bool, device=like.device)
        for k, pdm in enumerate(pdms):
            mean[k, : pdm.num_points] = pdm.mean_shape
            components[k, : pdm.num_points, :, : pdm.num_modes] = pdm.principal_components
            eigenvalues[k, : pdm.num_modes] = pdm.eigenvalues
            points[k, : pdm.num_points] = True
        self.register_buffer("mean_shape", mean)                                   # (M, n, 3)
        self.register_buffer("principal_components", components)                   # (M, n, 3, m)
        self.register_buffer("eigenvalues", eigenvalues)                           # (M, m)
        self.register_buffer("points", points)                                     # (M, n) the members' own points
        self.sizes = [(p.num_points, p.num_modes) for p in pdms]                   # each member's (n, m)
        self._tiled: dict[tuple[int, int], PointDistributionModel] = {}

    @property
    def members(self) -> int:
        return self.mean_shape.shape[0]

    @property
    def num_points(self) -> int:
        return self.mean_shape.shape[1]

    @property
    def num_modes(self) -> int:
        return self.eigenvalues.shape[1]

    def member_index(self, batch: int) -> torch.Tensor:
        """(M · batch,) the member of each face of a :meth:`tiled` batch."""
        return torch.arange(self.members, device=self.mean_shape.device).repeat_interleave(batch)

    def tiled(self, batch: int, first: int = 0) -> PointDistributionModel:
        """A PDM for M · ``batch`` faces, member m's model for faces ``m·batch … (m+1)·batch − 1``
        (its tensors carry the face dimension); from member ``first`` on, (M − first) · ``batch``
        faces. Kept per batch size."""
        key = (batch, first)
        found = self._tiled.get(key)
        if found is None:
            index = self.member_index(batch)[first * batch:]
            data = PDMData(self.mean_shape[index], self.principal_components[index], self.eigenvalues[index])
            found = PointDistributionModel(data, self.mean_shape.dtype)
            if not torch.compiler.is_compiling():          # (one made of traced tensors is the trace's)
                self._tiled[key] = found
        return found

    def _apply(self, fn, recurse=True):  # new device or dtype: drop the tiled copies
        self._tiled = {}
        return super()._apply(fn, recurse)


def per_face_model(pdm: PointDistributionModel | StackedPDM, batch: int) -> tuple[PointDistributionModel, torch.Tensor | None]:
    """The PDM that fits ``batch`` faces of each member (a :class:`StackedPDM`'s :meth:`~StackedPDM.tiled`
    model, or ``pdm`` itself), and the (M · batch,) member of each face (None for a single PDM)."""
    if isinstance(pdm, StackedPDM):
        return pdm.tiled(batch), pdm.member_index(batch)
    return pdm, None


class StackedExperts(nn.Module):
    """The patch experts of M members at one patch scale as one set whose views are the
    members' views one after the other: the view index of a face selects its member too.

    Members must share the patch scale, support and landmark count. Faces are grouped by
    member (one host read); inside :func:`~torch_clnf.models.sync.fixed_iterations` every
    member runs on every face and each face's own result is selected.
    """

    view_centers: torch.Tensor
    confidence: torch.Tensor
    visible: torch.Tensor
    view_member: torch.Tensor
    view_offset: torch.Tensor

    def __init__(self, experts: Sequence[nn.Module]) -> None:
        super().__init__()
        kinds = {(type(e), e.patch_scale, tuple(e.support), e.num_points) for e in experts}
        if len(kinds) != 1:
            raise ValueError(f"stacked experts need equal kind, patch scale, support and landmark count, found {kinds}")
        self.members = nn.ModuleList(experts)
        self.patch_scale = experts[0].patch_scale
        self.support = tuple(experts[0].support)
        counts = torch.tensor([e.num_views for e in experts])
        self.register_buffer("view_centers", torch.cat([e.view_centers for e in experts]))    # (V, 3)
        self.register_buffer("confidence", torch.cat([e.confidence for e in experts]))        # (V, L)
        self.register_buffer("visible", torch.cat([e.visible for e in experts]))              # (V, L)
        self.register_buffer("view_member", torch.arange(len(experts)).repeat_interleave(counts))   # (V,)
        self.register_buffer("view_offset", (counts.cumsum(0) - counts)[self.view_member])          # (V,)
        self._tables: dict[int, tuple] = {}                        # window → (the members' tables, joined)

    @property
    def num_views(self) -> int:
        return self.visible.shape[0]

    @property
    def num_points(self) -> int:
        return self.visible.shape[1]

    def tables(self, window: int) -> CCNFTables:
        """The members' :meth:`CCNFExperts.tables` as one set of the stacked views (CCNF members only)."""
        parts = [member.tables(window) for member in self.members]
        found = self._tables.get(window)
        if found is None or any(a is not b for a, b in zip(found[0], parts)):      # (new, or a member's moved)
            joined = CCNFTables(*(torch.cat(tensors) for tensors in zip(*parts)))
            found = (parts, joined._replace(view_member=self.view_member))
            if not torch.compiler.is_compiling():
                self._tables[window] = found
        return found[1]

    def forward(self, areas: torch.Tensor, view: torch.Tensor) -> PatchResponse:
        """Response maps: (B, L, H, W) areas, (B,) stacked view indices → maps (B, L, win, win),
        visible (B, L)."""
        member = self.view_member[view]
        local_view = view - self.view_offset[view]
        if static_graph():
            maps = None
            for m, experts in enumerate(self.members):
                own = experts(areas, local_view.clamp(max=experts.num_views - 1)).maps
                maps = own if maps is None else torch.where((member == m)[:, None, None, None], own, maps)
            return PatchResponse(maps, self.visible[view])
        present = torch.bincount(member, minlength=len(self.members)).tolist()
        if sum(c > 0 for c in present) == 1:
            m = next(m for m, c in enumerate(present) if c)
            return PatchResponse(self.members[m](areas, local_view).maps, self.visible[view])
        maps = None
        for m, count in enumerate(present):
            if count:
                faces = (member == m).nonzero().squeeze(1)
                own = self.members[m](areas[faces], local_view[faces]).maps
                if maps is None:
                    maps = own.new_zeros(areas.shape[0], *own.shape[1:])
                maps[faces] = own
        return PatchResponse(maps, self.visible[view])
