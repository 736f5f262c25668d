"""Several models of the same shape fitted as one batch, each face with its member's model.

OpenFace fits its two eye models one after the other. Stacked, the left and right eyes of B
faces are one batch of 2B fits: faces ``0 … B − 1`` use member 0, faces ``B … 2B − 1`` member 1
(contiguous blocks, :meth:`StackedPDM.tiled`), so every fitting step runs once instead of twice.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..openface import PDMData
from .pdm import PointDistributionModel
from .sync import static_graph
from .windows import PatchResponse


class StackedPDM(nn.Module):
    """M point distribution models with equal point and mode counts.

    Example:
        >>> eyes = StackedPDM([left_eye_pdm, right_eye_pdm])
        >>> pdm = eyes.tiled(4)          # 8 faces: 4 left eyes, then 4 right eyes
        >>> pdm.project(params_global, params_local).shape     # (8, 6), (8, m) params
        torch.Size([8, 28, 2])
    """

    mean_shape: torch.Tensor
    principal_components: torch.Tensor
    eigenvalues: torch.Tensor

    def __init__(self, pdms: Sequence[PointDistributionModel]) -> None:
        super().__init__()
        shapes = {(p.num_points, p.num_modes) for p in pdms}
        if len(shapes) != 1:
            raise ValueError(f"stacked PDMs need equal (points, modes), found {sorted(shapes)}")
        self.register_buffer("mean_shape", torch.stack([p.mean_shape for p in pdms]))                   # (M, n, 3)
        self.register_buffer("principal_components", torch.stack([p.principal_components for p in pdms]))  # (M, n, 3, m)
        self.register_buffer("eigenvalues", torch.stack([p.eigenvalues for p in pdms]))                 # (M, m)
        self._tiled: dict[int, PointDistributionModel] = {}

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

    def tiled(self, batch: int) -> PointDistributionModel:
        """A PDM for M · ``batch`` faces, member m's model for faces ``m·batch … (m+1)·batch − 1``
        (its tensors carry the face dimension); kept per batch size."""
        if batch not in self._tiled:
            index = self.member_index(batch)
            data = PDMData(self.mean_shape[index], self.principal_components[index], self.eigenvalues[index])
            self._tiled[batch] = PointDistributionModel(data, self.mean_shape.dtype)
        return self._tiled[batch]

    def _apply(self, fn, recurse=True):  # new device or dtype: drop the tiled copies
        self._tiled = {}
        return super()._apply(fn, recurse)


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

    @property
    def num_views(self) -> int:
        return self.visible.shape[0]

    @property
    def num_points(self) -> int:
        return self.visible.shape[1]

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
