"""Speed knobs of tracking: frames/s and landmark distance to OpenFace C++ for each option.

    python bench/knobs.py [--models DIR] [--device cpu] [--videos default changeLighting]

Each option changes one setting from OpenFace's defaults (FitConfig / TrackingConfig); every
video in ../shared/media with a C++ reference is tracked from its first frame (MTCNN, then
tracking, one stream). Distances are per landmark to the C++ landmarks of the same frame, over
all frames of all videos: median, mean, 95th percentile, and the worst frame's mean. "compile"
first tracks three frames of each video to compile its graphs, and prints how long that took.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import torch_clnf
from torch_clnf.pipelines import FrameReader, Tracker, TrackingConfig
from torch_clnf.pipelines.tracker import blend

from timing import SHARED

OPTIONS = {                          # name → (FitConfig changes, TrackingConfig changes)
    "OpenFace defaults": ({}, {}),
    "fit_every=2": ({}, {"fit_every": 2}),
    "fit_every=3": ({}, {"fit_every": 3}),
    "iterations=3": ({"iterations": 3}, {}),
    "iterations=2": ({"iterations": 2}, {}),
    "convergence=0.1 px": ({"convergence": 0.1}, {}),
    "convergence=0.5 px": ({"convergence": 0.5}, {}),
    "windows (0, 0, 7, 0)": ({"tracking_window_sizes": (0, 0, 7, 0)}, {}),
    "windows (0, 7, 7, 0)": ({"tracking_window_sizes": (0, 7, 7, 0)}, {}),
    "adaptive (0, 0, 7, 0)": ({}, {"adaptive_windows": (0, 0, 7, 0)}),
    "no part models": ({"refine_hierarchical": False}, {}),
    "compile": ({"compile": True}, {}),
}


def reference(video: str) -> np.ndarray:
    with open(SHARED / f"reference/openface_cpp/video_{video}.csv") as f:
        rows = list(csv.DictReader(f))
    return np.array([[[float(r[f"x{i}"]), float(r[f"y{i}"])] for i in range(68)] for r in rows])


def track(model: torch_clnf.LandmarkModel, config: TrackingConfig, frames: list) -> tuple[np.ndarray, float]:
    """(frames, 68, 2) landmarks (skipped frames blended between fits, as track_videos writes them), seconds."""
    tracker = Tracker(model, 1, config)
    results, held = [], []
    start = time.perf_counter()
    for frame in frames:
        (fit,) = tracker.step([frame])[0]
        if fit.skipped:
            held.append(fit.result)
            continue
        last = results[-1] if results else None
        for j, _ in enumerate(held):
            results.append(blend(last, fit.result, (j + 1) / (len(held) + 1)))
        held = []
        results.append(fit.result)
    seconds = time.perf_counter() - start
    results += held
    return np.stack([r.landmarks[0].double().cpu().numpy() for r in results]), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path(os.environ.get("TORCH_CLNF_MODELS", SHARED / "openface-models")))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--videos", nargs="+", default=["default", "changeLighting"])
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), help="names of the options to run")
    args = parser.parse_args()
    videos = {name: [f.image for f in FrameReader(SHARED / f"media/{name}.wmv")] for name in args.videos}
    truth = {name: reference(name) for name in args.videos}
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.device}; "
          f"videos {', '.join(args.videos)} ({sum(map(len, videos.values()))} frames), one stream")
    print(f"{'option':24} {'f/s':>7} {'speed':>6} {'median px':>10} {'mean px':>8} {'p95 px':>7} {'worst frame':>12}")
    base_fps = None
    for name in args.options:
        fit_changes, tracking_changes = OPTIONS[name]
        config = dataclasses.replace(torch_clnf.FitConfig(), **fit_changes)
        model = torch_clnf.load_model("main_clnf_general.txt", args.models, device=args.device, config=config)
        if config.compile:                # compile (or load from the disk cache) every graph first
            start = time.perf_counter()
            for images in videos.values():
                track(model, TrackingConfig(**tracking_changes), images[:3])
            print(f"{'':24} (compiling: {time.perf_counter() - start:.0f} s, not counted)", flush=True)
        distances, frames, seconds = [], 0, 0.0
        for video, images in videos.items():
            landmarks, spent = track(model, TrackingConfig(**tracking_changes), images)
            n = min(len(landmarks), len(truth[video]))
            distances.append(np.linalg.norm(landmarks[:n] - truth[video][:n], axis=-1))
            frames, seconds = frames + len(images), seconds + spent
        d = np.concatenate(distances)
        fps = frames / seconds
        base_fps = base_fps or fps
        print(f"{name:24} {fps:7.1f} {fps / base_fps:5.2f}x {np.median(d):10.3f} {d.mean():8.3f} "
              f"{np.percentile(d, 95):7.3f} {d.mean(1).max():12.3f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
