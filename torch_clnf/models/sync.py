"""When the host may read values back from the device without stalling it."""
from __future__ import annotations

import torch


def syncs_cheaply(tensor: torch.Tensor) -> bool:
    """Whether reading a value of ``tensor`` on the host is cheap (CPU), or stalls a GPU queue.

    Early exits (a loop stopping when every face has converged) are taken only where this is
    true; on GPUs the loops run their full count with the finished faces masked, which gives
    the same results.
    """
    return tensor.device.type == "cpu"
