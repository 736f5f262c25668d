"""Readers of OpenFace C++'s reference outputs in ../shared/reference/openface_cpp."""
from __future__ import annotations

import csv
from pathlib import Path

import torch


def rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def boxes(records: list[dict]) -> torch.Tensor:
    """(B, 4) x, y, w, h."""
    return torch.tensor([[float(r[k]) for k in ("box_x", "box_y", "box_w", "box_h")] for r in records])


def landmarks(records: list[dict]) -> torch.Tensor:
    """(B, 68, 2) pixels."""
    return torch.tensor([[[float(r[f"x{i}"]), float(r[f"y{i}"])] for i in range(68)] for r in records], dtype=torch.float64)


def stages(path: Path, points: int = 68) -> tuple[list[dict], dict]:
    """The C++ fit's states of the ``points``-point model, and its response maps keyed (scale, landmark)."""
    states, maps = [], {}
    for line in path.read_text().splitlines():
        f = line.split(",")
        if f[0] == "state" and int(f[2]) == points:
            bar = f.index("|", 13)
            states.append({"phase": f[1], "scale": int(f[3]), "window": int(f[4]), "view": int(f[5]),
                           "global": torch.tensor([[float(v) for v in f[6:12]]], dtype=torch.float64),
                           "local": torch.tensor([[float(v) for v in f[13:bar]]], dtype=torch.float64)})
        elif f[0] == "resp" and int(f[1]) == points:
            rows_, cols = int(f[5]), int(f[6])
            maps[(int(f[2]), int(f[4]))] = torch.tensor([float(v) for v in f[7:]], dtype=torch.float64).reshape(rows_, cols)
    return states, maps
