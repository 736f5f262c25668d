"""What the benchmarks share: timing on any device, and the shared synthetic-CEN tool."""
from __future__ import annotations

import importlib.util
import statistics
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock times measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def median_ms(call: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall-clock milliseconds of ``repeats`` calls, after ``warmup`` calls."""
    return interleaved_median_ms({"call": call}, device, repeats, warmup)["call"]


def interleaved_median_ms(calls: dict[str, Callable[[], object]], device: torch.device, repeats: int,
                          warmup: int = 2) -> dict[str, float]:
    """:func:`median_ms` of several calls timed in turns (A, B, A, B, …), so that a machine whose
    speed drifts slows them alike: their ratio is the side-by-side one."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            sync(device)
            start = time.perf_counter()
            call()
            sync(device)
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(found) for name, found in times.items()}


def synthetic_cen_tool() -> ModuleType:
    """../shared/tools/make_synthetic_cen.py as a module (``write(folder, scale, visibilities())``)."""
    spec = importlib.util.spec_from_file_location("make_synthetic_cen", SHARED / "tools/make_synthetic_cen.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def ceclm_models(folder: Path, models: Path) -> Path:
    """A model folder: OpenFace's files plus full-size synthetic CEN files."""
    for item in models.iterdir():
        if item.name != "patch_experts":
            (folder / item.name).symlink_to(item)
    (folder / "patch_experts").mkdir()
    tool = synthetic_cen_tool()
    for scale in ("0.25", "0.35", "0.50", "1.00"):
        tool.write(folder / "patch_experts", scale, tool.visibilities())
    return folder
