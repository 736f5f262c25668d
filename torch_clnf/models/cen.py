"""CEN patch experts (CE-CLM) as one batched nn.Module per patch scale."""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ..openface import CENPatchExperts
from .products import float32_products, routed_to_onednn
from .windows import (PatchResponse, WindowStatistics, check_inputs, correlation, normalise, per_view,
                      response_window, window_statistics, zero_mean)

SIGMOID, RELU = 0, 2

# up to this many window positions (all faces') per landmark, layers multiply them as rows (where MKL multiplies)
FEW_COLUMNS = 96


def sparse_positions(win: int) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenFace's sparse CEN evaluation on a win × win map.

    Only positions with x + y odd are computed; every other position is the mean of its
    (2 to 4) computed 4-neighbours.

    Returns:
        computed: (P_s,) row-major indices of the computed positions.
        interpolation: (P_s, win²) float64, maps the computed values to the full map.
    """
    y, x = torch.meshgrid(torch.arange(win), torch.arange(win), indexing="ij")
    odd = ((x + y) % 2 == 1).reshape(-1)
    computed = odd.nonzero().squeeze(1)
    slot = torch.full((win * win,), -1, dtype=torch.long)
    slot[computed] = torch.arange(len(computed))
    interpolation = torch.zeros(len(computed), win * win, dtype=torch.float64)
    interpolation[slot[computed], computed] = 1
    for p in (~odd).nonzero().squeeze(1).tolist():
        py, px = divmod(p, win)
        neighbours = [(py + dy) * win + px + dx for dy, dx in ((0, -1), (-1, 0), (0, 1), (1, 0))
                      if 0 <= py + dy < win and 0 <= px + dx < win]
        for q in neighbours:
            interpolation[slot[q], p] = 1 / len(neighbours)
    return computed, interpolation


class CENExperts(nn.Module):
    """All CEN experts of one patch scale: areas → response maps for all landmarks at once.

    Each window position's 11×11 window is contrast-normalised (minus mean, over norm) and fed
    through the expert's layers (``act(W x + b)``, the first layer also seeing a constant 1),
    each layer one batched matmul over all landmarks, every face's window positions side by
    side. A landmark whose expert is empty in a view uses its mirror landmark's expert in the
    mirror view on the horizontally flipped area, and its map is flipped back. Landmarks
    invisible in the view get a zero map and ``visible = False``.

    Args:
        data: one scale's experts, from :func:`torch_clnf.openface.read_cen`.
        dtype: parameter dtype.
        sparse: compute every second window position and interpolate the rest, as OpenFace does.
        layer_dtype: the layers' products in this dtype (default: ``dtype``). ``torch.bfloat16``
            rounds the weights and activations to bfloat16 (products accumulate in float32):
            half the weights' memory, the layers 2-3× faster on CPUs with AVX512-BF16 or AMX,
            the maps within a few 1e-3 (of values in [0, 1]). A device without native bfloat16
            products computes them in ``dtype`` instead (emulated, they are 3-5× slower on a CPU).

    Example:
        >>> experts = CENExperts(read_cen("patch_experts/cen_patches_0.25_of.dat"))
        >>> experts(torch.rand(1, 68, 21, 21) * 255, torch.tensor([0])).maps.shape
        torch.Size([1, 68, 11, 11])
    """

    expert_of: torch.Tensor
    flipped: torch.Tensor
    visible: torch.Tensor
    confidence: torch.Tensor
    view_centers: torch.Tensor

    def __init__(self, data: CENPatchExperts, dtype: torch.dtype = torch.float32, sparse: bool = False,
                 layer_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.patch_scale = data.patch_scale
        self.support = tuple(data.support)
        self.sparse = sparse
        self.layer_dtype = layer_dtype
        # CPU: the largest intermediate activation of one block of landmarks (bigger blocks are bigger
        # batched matmuls: 128 MB fitted 64 faces 5-14% faster than 8 MB, and bounds the memory)
        self.tile_bytes = 128 << 20
        self.activations = list(data.activations)
        h, w = self.support
        if data.weights[-1].shape[1] != 1:
            raise ValueError(f"CEN experts at scale {data.patch_scale}: the last layer has {data.weights[-1].shape[1]} "
                             "outputs, expected 1 (a response per window position)")
        first = data.weights[0]                                     # (E, out, 1 + h·w), window column-major
        window = first[:, :, 1:].double().reshape(first.shape[0], first.shape[1], w, h).transpose(-1, -2)
        weights = [zero_mean(window).reshape(first.shape[0], first.shape[1], h * w)] + list(data.weights[1:])
        biases = [data.biases[0] + first[:, :, 0]] + list(data.biases[1:])  # the constant-1 input joins the bias
        for k, (weight, bias) in enumerate(zip(weights, biases)):
            self.register_buffer(f"weight_{k}", weight.to(dtype))                   # (E, out, in)
            self.register_buffer(f"bias_{k}", bias.to(dtype))                       # (E, out)

        index = data.expert_index
        mirror = index[data.mirror_views][:, data.mirror_inds]     # (V, L): the mirror expert of each slot
        use_own = index >= 0
        expert_of = torch.where(use_own, index, mirror)
        expert_of = torch.where(data.visibility & (expert_of >= 0), expert_of, torch.full_like(index, -1))
        self.register_buffer("expert_of", expert_of)                               # (V, L), -1: none
        self.register_buffer("flipped", ~use_own & (expert_of >= 0))               # (V, L)
        self.register_buffer("visible", expert_of >= 0)                            # (V, L)
        self.register_buffer("confidence", data.confidence.to(dtype))              # (V, L)
        self.register_buffer("view_centers", data.view_centers.to(dtype))          # (V, 3)
        self._view_layers: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._sparse: dict[tuple, torch.Tensor] = {}

    @property
    def weights(self) -> list[torch.Tensor]:
        """Per layer, (E, out, in) weights of the stacked experts; the first layer's window is read
        row-major, and its filters are zero-mean (they only ever see contrast-normalised windows,
        see :mod:`.windows`)."""
        return [getattr(self, f"weight_{k}") for k in range(len(self.activations))]

    @property
    def biases(self) -> list[torch.Tensor]:
        """Per layer, (E, out) biases (the first layer's includes the constant-1 input's weight)."""
        return [getattr(self, f"bias_{k}") for k in range(len(self.activations))]

    @property
    def num_views(self) -> int:
        return self.visible.shape[0]

    @property
    def num_points(self) -> int:
        return self.visible.shape[1]

    def _apply(self, fn, recurse=True):  # new device or dtype: drop the derived caches
        self._view_layers, self._sparse = {}, {}
        return super()._apply(fn, recurse)

    def products_dtype(self) -> torch.dtype:
        """The dtype the layers' products run in on the experts' device (see ``layer_dtype``)."""
        wanted = self.layer_dtype or self.weight_0.dtype
        if wanted == torch.bfloat16 and not _native_bfloat16(self.weight_0.device.type):
            return self.weight_0.dtype
        return wanted

    def view_layers(self, view: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, (L, out, in) weights and (L, out) biases of each landmark's expert in a view
        (zeros where there is none), in :meth:`products_dtype`; gathered once per view and kept."""
        key = (view, self.weight_0.device, self.weight_0.dtype)
        if key not in self._view_layers:
            ids = self.expert_of[view].clamp(min=0)
            keep = self.visible[view].to(self.weight_0.dtype)
            dtype = self.products_dtype()
            self._view_layers[key] = [((w[ids] * keep[:, None, None]).to(dtype), (b[ids] * keep[:, None]).to(dtype))
                                      for w, b in zip(self.weights, self.biases)]
        return self._view_layers[key]

    def _sparse_maps(self, win: int) -> torch.Tensor:
        """(P_s, win²) interpolation whose rows follow the order of the two strided passes."""
        key = (win, self.weight_0.device, self.weight_0.dtype)
        if key not in self._sparse:
            computed, interpolation = sparse_positions(win)
            evaluated = self._evaluated(win, True, computed.device)
            rows = torch.searchsorted(computed, evaluated)
            assert torch.equal(computed[rows], evaluated)
            self._sparse[key] = interpolation[rows].to(self.weight_0.device, self.weight_0.dtype)
        return self._sparse[key]

    def _evaluated(self, win: int, sparse: bool, device: torch.device) -> torch.Tensor:
        """(P,) row-major indices of the window positions evaluated, in the order of the responses'
        rows: all of them, or (sparse) those of the two stride-2 passes (see :meth:`_sparse_maps`)."""
        grid = torch.arange(win * win, device=device).reshape(win, win)
        return torch.cat([grid[0::2, 1::2].reshape(-1), grid[1::2, 0::2].reshape(-1)]) if sparse else grid.reshape(-1)

    def _block(self, faces: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]], sparse: bool) -> torch.Tensor:
        """(F, l, H, W) areas of l landmarks, their experts' layers → (F, l, P) or (F, l, P_s) responses.

        Layers are (l, out, in) weights and (l, out) biases, shared by the faces, or (F, l, out,
        in) and (F, l, out), each face its own."""
        stats = window_statistics(faces, self.support)
        if layers[0][0].dim() == 4:
            return self._block_per_face(stats, layers, sparse)
        # landmark-major: every evaluated window of every face a column, scaled by its inverse norm,
        # so each layer is one batched matmul over the landmarks (2-2.5x grouped convolutions at
        # 8-64 faces, and the normalisation is folded into the first one). Where MKL multiplies, few
        # columns (one face) are laid out as rows instead: it is then up to 1.6x faster (oneDNN, see
        # .products, is faster on columns: 1.2-2.4x rows at 13-41 columns).
        count, points, height, width = faces.shape
        h, w = self.support
        win = height - h + 1
        device = faces.device
        evaluated = self._evaluated(win, sparse, device)                                          # (P,)
        columns = count * len(evaluated)
        as_rows = columns <= FEW_COLUMNS and not routed_to_onednn(device, layers[0][0].dtype)
        taps = (torch.arange(h, device=device)[:, None] * width + torch.arange(w, device=device)).reshape(-1)
        at = (evaluated // win) * width + evaluated % win                                         # window corners
        index = taps[:, None, None] + torch.arange(count, device=device)[:, None] * (height * width) + at
        if as_rows:
            index = index.permute(1, 2, 0)                                                        # (F, P, h·w)
        windows = stats.centred.transpose(0, 1).reshape(points, -1).index_select(1, index.reshape(-1))
        scale = stats.inverse_norm.flatten(-2)[..., evaluated].transpose(0, 1).reshape(points, columns)   # (l, F·P)
        if as_rows:
            x = windows.view(points, columns, h * w) * scale[..., None]                           # (l, F·P, h·w)
        else:
            x = windows.view(points, h * w, columns) * scale[:, None]                             # (l, h·w, F·P)
        x = x.to(layers[0][0].dtype)
        for k, (weight, bias) in enumerate(layers):
            if as_rows:
                x = self._activate(torch.baddbmm(bias[:, None], x, weight.mT), k)                 # (l, F·P, out_k)
            else:
                x = self._activate(torch.baddbmm(bias[..., None], weight, x), k)                  # (l, out_k, F·P)
        return x.reshape(points, count, len(evaluated)).transpose(0, 1).to(faces.dtype)   # (F, l, P): the one output

    def _block_per_face(self, stats: WindowStatistics, layers: list[tuple[torch.Tensor, torch.Tensor]],
                        sparse: bool) -> torch.Tensor:
        """:meth:`_block` with (F, l, out, in) weights and (F, l, out) biases: each face its own experts."""
        h, w = self.support
        dtype = stats.centred.dtype
        weight, bias = (t.to(dtype) for t in layers[0])     # the first layer a correlation in the areas' dtype
        weight = weight.unflatten(-1, (h, w))
        if sparse:   # positions with x + y odd: (y even, x odd) and (y odd, x even), each a stride-2 pass
            passes = [normalise(stats, correlation(stats.centred, weight, 2, offset), bias, 2, offset)
                      for offset in ((0, 1), (1, 0))]
            x = torch.cat([p.flatten(-2) for p in passes], -1)                      # (F, l, out, P_s)
        else:
            x = normalise(stats, correlation(stats.centred, weight), bias).flatten(-2)   # (F, l, out, P)
        x = self._activate(x, 0).to(layers[-1][0].dtype)
        for k, (weight, bias) in enumerate(layers[1:], start=1):
            x = self._activate(weight @ x + bias[..., None], k)                      # (F, l, out, P)
        return x.flatten(2).to(dtype)

    def _activate(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        act = self.activations[layer]
        return torch.sigmoid(x) if act == SIGMOID else torch.relu(x) if act == RELU else x

    def forward(self, areas: torch.Tensor, view: torch.Tensor, landmarks: torch.Tensor | None = None,
                sparse: bool | None = None) -> PatchResponse:
        """Response maps for a batch of faces.

        On the CPU, landmarks are processed in blocks whose intermediate activations stay under
        ``tile_bytes``; on a GPU and in a static graph all at once.

        Args:
            areas: (B, L, H, W) grey-level areas of interest, H = W = win + 10.
            view: (B,) int64, each face's view index.
            landmarks: (L,) indices of the landmarks the areas belong to (default all, in order).
            sparse: override the module's ``sparse`` setting for this call.
        Returns:
            PatchResponse: maps (B, L, win, win), visible (B, L).
        """
        index = check_inputs(areas, view, self.num_points, self.num_views, landmarks)
        win = response_window(areas, self.support)
        sparse = (self.sparse if sparse is None else sparse) and win >= 3
        widest = max(w.shape[1] for w in self.weights)

        def compute(faces: torch.Tensor, v: int) -> torch.Tensor:
            count, points = faces.shape[:2]
            flip = self.flipped[v, index]
            faces = torch.where(flip[:, None, None], faces.flip(-1), faces)
            layers = self.view_layers(v)
            if landmarks is not None:          # a subset: gather its experts (all landmarks use the cached layers)
                layers = [(weight[index], bias[index]) for weight, bias in layers]
            block = points
            if faces.device.type == "cpu" and self.tile_bytes:
                block = max(1, min(points, self.tile_bytes // (count * win * win * widest * faces.element_size())))
            maps = torch.cat([self._block(faces[:, s:s + block], [(w[s:s + block], b[s:s + block]) for w, b in layers], sparse)
                              for s in range(0, points, block)], 1)
            if sparse:
                maps = maps @ self._sparse_maps(win)
            maps = (maps * self.visible[v, index, None].to(maps.dtype)).reshape(count, points, win, win)
            return torch.where(flip[:, None, None], maps.flip(-1), maps)

        def compute_per_face(faces: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
            def take(table: torch.Tensor) -> torch.Tensor:                        # (V, L) → (F, L)
                return table[views] if landmarks is None else table[views][:, index]

            flip = take(self.flipped)
            faces = torch.where(flip[..., None, None], faces.flip(-1), faces)
            experts = take(self.expert_of).clamp(min=0)       # no expert: any one, its map is zeroed
            dtype = self.products_dtype()
            maps = self._block(faces, [(w[experts].to(dtype), b[experts].to(dtype))
                                       for w, b in zip(self.weights, self.biases)], sparse)
            if sparse:
                maps = maps @ self._sparse_maps(win)
            maps = (maps * take(self.visible)[..., None].to(maps.dtype)).unflatten(-1, (win, win))
            return torch.where(flip[..., None, None], maps.flip(-1), maps)

        with float32_products(areas.device, self.products_dtype()):      # MKL's or oneDNN's, the faster
            maps = per_view(view, areas, (areas.shape[0], len(index), win, win), compute, compute_per_face)
        return PatchResponse(maps, self.visible[view][:, index])


_warned_no_bfloat16: set[str] = set()      # the device types warned about


def _native_bfloat16(device_type: str) -> bool:
    """Whether a device multiplies bfloat16 matrices natively: a CPU with AVX512-BF16 or AMX
    (oneDNN), an NVIDIA GPU from Ampere on, a Mac from macOS 14 on; warns once per device type
    where it does not."""
    try:
        if device_type == "cpu":
            native = torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        elif device_type == "cuda":
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        elif device_type == "mps":
            native = torch.backends.mps.is_macos_or_newer(14, 0)
        else:
            native = True
    except (AttributeError, RuntimeError, TypeError):      # a torch build without the query
        native = False
    if not native and device_type not in _warned_no_bfloat16:
        _warned_no_bfloat16.add(device_type)
        warnings.warn(f"this {device_type} device has no native bfloat16 matrix products (a CPU needs AVX512-BF16 "
                      "or AMX): the CEN experts' layers run in float32, which is faster here", stacklevel=3)
    return native
