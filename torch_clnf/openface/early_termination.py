"""Reader for CE-CLM's early-termination file (``early_term_cen_of.txt``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .text import TextReader


@dataclass
class EarlyTermination:
    """Per-view logistic early termination of CE-CLM: (V,) weights, biases and cutoffs, float64."""

    weights: torch.Tensor
    biases: torch.Tensor
    cutoffs: torch.Tensor


def read_early_termination(path: str | Path, num_views: int) -> EarlyTermination:
    """Read ``num_views`` weights, then biases, then cutoffs."""
    reader = TextReader(path)
    values = [[reader.float(f"{name} of view {v}") for v in range(num_views)] for name in ("weight", "bias", "cutoff")]
    if not reader.at_end():
        raise reader.error(f"expected end of file after {3 * num_views} numbers")
    w, b, c = (torch.tensor(row, dtype=torch.float64) for row in values)
    return EarlyTermination(w, b, c)
