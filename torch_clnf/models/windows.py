"""What CCNF and CEN experts share: contrast-normalised correlation and per-view grouping.

Both kinds of expert apply weights ``W`` to contrast-normalised windows ``(x − m) / n`` (``m``
the window's mean, ``n`` the L2 norm of ``x − m``, 0 → 1). By linearity ``W·(x − m) = W'·x``
with ``W' = W − mean(W)``, the zero-mean filter, which the experts keep: no window mean is
ever subtracted, and the norms come from box filters. CCNF's few filters per landmark then run
as one grouped convolution over the raw areas (one group per landmark), with no 121-fold
im2col copy of every area; CEN's hundreds of first-layer filters are worth gathering the
windows for one batched matmul (see :mod:`.cen`).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from .sync import static_graph, syncs_cheaply

# CPU, float32: up to this many input values (areas × filters per area), the grouped convolution runs
# as a depthwise one on areas repeated once per filter, which oneDNN computes 1.5-2.5x faster (one to
# six faces' 68 areas of 19x19 and 7 filters each); beyond, some 2-4x slower
DEPTHWISE_MAX_VALUES = 1 << 20


class PatchResponse(NamedTuple):
    """Response maps of a batch of faces.

    Attributes:
        maps: (B, L, win, win), row = y; zero where there is no expert.
        visible: (B, L) bool, whether the landmark has an expert in the face's view.
    """

    maps: torch.Tensor
    visible: torch.Tensor


class WindowStatistics(NamedTuple):
    """Areas centred on their own mean, and each window's inverse norm.

    Attributes:
        centred: (B, C, H, W), each area minus its mean (keeps float32 sums well conditioned).
        inverse_norm: (B, C, win_h, win_w), 1 / ‖window − its mean‖ (1 where the window is flat).
    """

    centred: torch.Tensor
    inverse_norm: torch.Tensor


def box_mean(x: torch.Tensor, support: tuple[int, int]) -> torch.Tensor:
    """(..., H, W) → (..., H - h + 1, W - w + 1) mean of every h × w window.

    Separable sums as two matmuls with 0/1 band matrices: twice as fast on the CPU as summing
    unfolded windows or pooling, and exportable (Core ML has no ``unfold``, onnxruntime no
    float64 pooling)."""
    h, w = support
    return band(x.shape[-2], h, x).transpose(0, 1) @ x @ band(x.shape[-1], w, x) / (h * w)


def band(n: int, k: int, like: torch.Tensor) -> torch.Tensor:
    """(n, n − k + 1) matrix with ones where ``0 ≤ i − j < k``: ``x @ band`` sums every k consecutive columns.

    Made once per size, device and dtype (eight operations, each worth its overhead for one face);
    inside :func:`~torch_clnf.models.sync.fixed_iterations` and while compiling, made afresh (a
    graph being traced)."""
    key = (n, k, like.device, like.dtype)
    kept = not static_graph() and not torch.compiler.is_compiling()     # (a traced tensor is the trace's)
    found = _bands.get(key) if kept else None
    if found is None:
        offset = torch.arange(n, device=like.device)[:, None] - torch.arange(n - k + 1, device=like.device)
        found = ((offset >= 0) & (offset < k)).to(like.dtype)
        if kept:
            _bands[key] = found
    return found


_bands: dict[tuple, torch.Tensor] = {}


def window_statistics(areas: torch.Tensor, support: tuple[int, int]) -> WindowStatistics:
    """Box-filter statistics of every support-sized window of (B, C, H, W) areas."""
    centred = areas - areas.mean((-2, -1), keepdim=True)
    mean = box_mean(centred, support)
    square = box_mean(centred * centred, support)
    norm = torch.sqrt(torch.clamp(square - mean * mean, min=0) * (support[0] * support[1]))
    return WindowStatistics(centred, 1 / torch.where(norm == 0, torch.ones_like(norm), norm))


def zero_mean(weight: torch.Tensor) -> torch.Tensor:
    """(..., h, w) filters minus each one's mean: correlating raw windows with them equals
    correlating the windows minus their means with the original filters."""
    return weight - weight.mean((-2, -1), keepdim=True)


def correlation(centred: torch.Tensor, weight: torch.Tensor, stride: int = 1, offset: tuple[int, int] = (0, 0),
                channels_last: bool = False) -> torch.Tensor:
    """``W · window`` for K filters per area at every window position: one grouped convolution, or
    for filters of each batch entry its own, a gather of every window and a batched matmul. With
    zero-mean filters (:func:`zero_mean`) and :func:`normalise`, the contrast-normalised response.

    Args:
        centred: (B, C, H, W) areas (:attr:`WindowStatistics.centred`).
        weight: (C, K, h, w), row = y; or (B, C, K, h, w), each batch entry its own filters.
        stride, offset: evaluate only positions ``offset + stride · i`` (both axes).
        channels_last: run the grouped convolution on a channels-last copy (faster for few filters
            per group; the depthwise form of few areas, :data:`DEPTHWISE_MAX_VALUES`, needs none).
    Returns:
        (B, C, K, win_h', win_w').
    """
    channels, k, h, w = weight.shape[-4:]
    if weight.dim() == 5 or (static_graph() and weight.dtype == torch.float64):   # onnxruntime: no float64 Conv
        return _per_entry_correlation(centred, weight, stride, offset)
    centred = centred[..., offset[0]:, offset[1]:]
    groups = channels
    if (k > 1 and centred.device.type == "cpu" and centred.dtype == torch.float32 and not static_graph()
            and centred.numel() * k <= DEPTHWISE_MAX_VALUES):
        centred, groups = centred.repeat_interleave(k, 1), channels * k      # depthwise: a filter per group
    elif channels_last:
        centred = centred.contiguous(memory_format=torch.channels_last)
    z = F.conv2d(centred, weight.reshape(channels * k, 1, h, w), stride=stride, groups=groups)
    return z.reshape(z.shape[0], channels, k, *z.shape[-2:])


def normalise(stats: WindowStatistics, z: torch.Tensor, bias: torch.Tensor, stride: int = 1,
              offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """(B, C, K, win_h', win_w') correlations with zero-mean filters (:func:`zero_mean`) →
    ``z / norm + b``, with ``bias`` b of shape (C, K) or (B, C, K)."""
    inverse = stats.inverse_norm[..., offset[0]::stride, offset[1]::stride][..., : z.shape[-2], : z.shape[-1]]
    return z * inverse.unsqueeze(2) + bias[..., None, None]


def _per_entry_correlation(centred: torch.Tensor, weight: torch.Tensor, stride: int,
                           offset: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) areas, (B, C, K, h, w) or shared (C, K, h, w) filters → (B, C, K, win_h', win_w')
    correlations: every window gathered as a (taps, positions) column block (one gather) and one
    batched matmul."""
    height, width = centred.shape[-2:]
    h, w = weight.shape[-2:]
    device = centred.device
    rows = torch.arange(offset[0], height - h + 1, stride, device=device)
    cols = torch.arange(offset[1], width - w + 1, stride, device=device)
    taps = torch.arange(h, device=device)[:, None] * width + torch.arange(w, device=device)       # (h, w)
    index = taps.reshape(-1, 1) + (rows[:, None] * width + cols).reshape(1, -1)                   # (h·w, P)
    columns = centred.flatten(-2).index_select(-1, index.reshape(-1)).unflatten(-1, index.shape)  # (B, C, h·w, P)
    return (weight.flatten(-2) @ columns).unflatten(-1, (len(rows), len(cols)))


def response_window(areas: torch.Tensor, support: tuple[int, int]) -> int:
    """The (square) response-window size that (B, L, H, W) areas give with this support."""
    win_h, win_w = areas.shape[-2] - support[0] + 1, areas.shape[-1] - support[1] + 1
    if win_h != win_w or win_h < 1:
        raise ValueError(f"areas of {areas.shape[-2]}x{areas.shape[-1]} pixels give a {win_h}x{win_w} response window; "
                         f"expected square areas larger than the {support[0]}x{support[1]} support")
    return win_h


def check_inputs(areas: torch.Tensor, view: torch.Tensor, num_points: int, num_views: int,
                 landmarks: torch.Tensor | None) -> torch.Tensor:
    """Validate (B, L, H, W) areas and (B,) views; returns the (L,) landmark indices."""
    if areas.dim() != 4:
        raise ValueError(f"areas: expected (B, L, H, W), found shape {tuple(areas.shape)}")
    if view.shape != areas.shape[:1]:
        raise ValueError(f"view: expected shape ({areas.shape[0]},), one view per face, found {tuple(view.shape)}")
    if view.numel() and syncs_cheaply(view) and not (0 <= int(view.min()) and int(view.max()) < num_views):
        raise ValueError(f"view: expected indices in [0, {num_views}), found {view.tolist()}")
    if landmarks is None:
        if areas.shape[1] != num_points:
            raise ValueError(f"areas: expected {num_points} landmarks, found {areas.shape[1]} (pass `landmarks` for a subset)")
        return torch.arange(num_points, device=areas.device)
    if landmarks.shape != areas.shape[1:2]:
        raise ValueError(f"landmarks: expected {areas.shape[1]} indices, found shape {tuple(landmarks.shape)}")
    return landmarks.to(areas.device)


def per_view(view: torch.Tensor, areas: torch.Tensor, out_shape: tuple[int, ...],
             compute: Callable[[torch.Tensor, int], torch.Tensor],
             compute_per_face: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Run ``compute(areas_of_faces_in_view, view)`` once per distinct view and gather the results.

    A batch of faces in one view is one call; faces are never looped over one by one. The
    faces are grouped by sorting on their view, with one read of the per-view counts. Inside
    :func:`~torch_clnf.models.sync.fixed_iterations` (no host reads) it is one call of
    ``compute_per_face(areas, view)`` instead, which selects each face's view inside the graph.

    The result is contiguous: NU-RLMS reads the maps every iteration, and a permuted layout
    (an einsum's) would be copied each time (half the time of an iteration of 64 faces).
    """
    if static_graph():
        return compute_per_face(areas, view).contiguous()
    counts = torch.bincount(view, minlength=1).tolist()
    present = [v for v, c in enumerate(counts) if c]
    if len(present) == 1:
        return compute(areas, present[0]).contiguous()
    order = torch.argsort(view, stable=True)
    out = areas.new_empty(out_shape)
    start = 0
    for v, count in enumerate(counts):
        if count:
            faces = order[start: start + count]
            out[faces] = compute(areas[faces], v)
            start += count
    return out
