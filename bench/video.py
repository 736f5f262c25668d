"""Video tracking speed: torch_clnf vs OpenFace C++'s per-frame fit times on ../shared/media/default.wmv.

    python bench/video.py [--models DIR] [--device cpu|cuda|mps] [--streams 1 8] [--repeats 3] [--workers W] [--ceclm]

For each number of streams N, N copies of default.wmv are tracked in lockstep (one batch of N
faces per frame). Two timings, each the median of --repeats runs:
  fit    — Tracker.step on frames decoded beforehand (fitting, validation, re-detection), the
           counterpart of the C++ reference's per-frame fit_ms;
  end-to-end — track_videos: decoding in its thread, fitting, CSV rows written.
With --workers W (CPU), also W processes each tracking N copies in lockstep
(track_videos_in_processes: W·N videos), end to end, process start-up included.
With --capture, also CLNF with FitConfig(capture=True) (CUDA graphs; see torch_clnf.fitting.capture).
With --compile, also CLNF with FitConfig(compile=True) (AOTInductor packages; see torch_clnf.models.compiling).
With --ceclm, CE-CLM on full-size synthetic CEN files (real layer shapes, random weights; its
fits are meaningless, so validation is off and every frame is tracked, as the C++ timing was).
With --threads auto 1 2, each thread setting (auto: torch_clnf's choice per call) is timed in
turns, end to end, for each number of streams; --busy K keeps K other processes busy meanwhile
(a shared machine), to see that the default holds up there.
With --segments, one video end to end as a user runs it (`torch-clnf video FILE`, process start to
CSV closed), the default (cut into segments tracked side by side) against --segments 1, in turns:
default.wmv, and a 5-minute 30 frames/s video built from 2015-10-15-15-14.avi played forward and
backward (no cut); the frames fitted twice (warm-ups, margins) and the segmented run's distance to
the sequential one. With --ceclm also, CE-CLM on the 5-minute video (synthetic CEN files,
validation off), segmented, through the Python API.
With --ray, --videos copies of --ray-video (16 of changeLighting.wmv) tracked by --workers W
processes (default 2) and by track_videos_on_ray on a local Ray cluster of W CPUs (W actors), in
turns, --batch N videos in lockstep in each, end to end (processes or actors started, models
loaded, CSVs written); the cluster's own start is timed apart (a cluster runs for many runs).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import functools
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch

import torch_clnf
from torch_clnf.pipelines import FrameReader, Tracker, track_videos, track_videos_in_processes, track_videos_on_ray

from timing import SHARED, ceclm_models, sync

VIDEO = SHARED / "media/default.wmv"
CPP_CLNF_MS = statistics.median(float(r["fit_ms"]) for r in csv.DictReader(open(SHARED / "reference/openface_cpp/video_default.csv")))
CPP_CECLM_MS = 15.4          # the reference README: CE-CLM tracking per frame, same machine type


def fit_fps(model: torch_clnf.LandmarkModel, frames: list, streams: int, repeats: int, device: torch.device) -> float:
    """Frames per second (all streams together) of Tracker.step over pre-decoded frames, median of runs."""
    rates = []
    for _ in range(repeats):
        tracker = Tracker(model, streams)
        sync(device)
        start = time.perf_counter()
        for frame in frames:
            tracker.step([frame] * streams)
        sync(device)
        rates.append(len(frames) * streams / (time.perf_counter() - start))
    return statistics.median(rates)


def end_to_end_fps(model: torch_clnf.LandmarkModel, streams: int, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            outputs = [Path(out) / f"copy{k}" for k in range(streams)]      # one video N times: a CSV each
            summaries = track_videos([VIDEO] * streams, model, out, streams=streams, progress=False, outputs=outputs)
            rates.append(sum(s.frames for s in summaries) / (time.perf_counter() - start))
    return statistics.median(rates)


def processes_fps(models: Path, workers: int, streams: int, repeats: int) -> float:
    """Frames per second of ``workers`` processes, each tracking ``streams`` copies in lockstep, median of runs."""
    load = functools.partial(torch_clnf.load_model, "main_clnf_general.txt", models)
    rates = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            copies = [Path(out) / f"copy{k}{VIDEO.suffix}" for k in range(workers * streams)]
            for copy in copies:                                    # files of their own: a video is tracked once
                shutil.copyfile(VIDEO, copy)
            start = time.perf_counter()
            summaries = track_videos_in_processes(copies, load, workers, out, streams=streams, progress=False,
                                                  threads=1)
            rates.append(sum(s.frames for s in summaries) / (time.perf_counter() - start))
    return statistics.median(rates)


def threads_table(model: torch_clnf.LandmarkModel, args: argparse.Namespace) -> None:
    """End-to-end frames/s of each --threads setting, timed in turns (A, B, C, A, B, C, …)."""
    settings = [None if t == "auto" else int(t) for t in args.threads]
    print(f"{'streams':>7} " + " ".join(f"{'threads ' + (str(t) if t else 'auto'):>11}" for t in settings)
          + f" {'auto / best':>11}")
    for streams in args.streams:
        rates: dict[int | None, list[float]] = {t: [] for t in settings}
        for _ in range(args.repeats):
            for setting in settings:
                model.threads = setting
                rates[setting].append(end_to_end_fps(model, streams, 1))
        medians = {t: statistics.median(r) for t, r in rates.items()}
        auto = medians.get(None)
        ratio = f"{auto / max(medians.values()):11.2f}" if auto is not None else f"{'-':>11}"
        print(f"{streams:7d} " + " ".join(f"{medians[t]:11.1f}" for t in settings) + f" {ratio}", flush=True)
    model.threads = None


@contextlib.contextmanager
def busy_processes(count: int):
    """``count`` other processes that keep a core busy each, for the duration."""
    others = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(1.0 if others else 0)            # seen busy by the free-core measurement
        yield
    finally:
        for other in others:
            other.kill()
            other.wait()


def long_video(folder: Path, minutes: float = 5.0) -> Path:
    """``minutes`` of 2015-10-15-15-14.avi (30 frames/s) played forward, backward, forward… (no cut)."""
    capture = cv2.VideoCapture(str(SHARED / "media/2015-10-15-15-14.avi"))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    wanted = round(minutes * 60 * 30)
    cycle = frames + frames[-2:0:-1]
    path = folder / "five_minutes.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, frames[0].shape[1::-1])
    for k in range(wanted):
        writer.write(cycle[k % len(cycle)])
    writer.release()
    return path


def command_seconds(video: Path, out: Path, models: Path, *options: str) -> tuple[float, int, int]:
    """Wall-clock seconds of ``torch-clnf video VIDEO`` in a new process, start to exit, and the
    frames its summary says were fitted twice and the segments (1 when it says none). ``--force``:
    every repeat tracks the video anew (a run again would skip it as complete)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "torch_clnf.cli", "video", str(video), "--models", str(models),
                           "--out", str(out), "--quiet", "--force", *options], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    found = re.search(r"(\d+) fitted twice by its (\d+) segments", done.stdout)
    return seconds, int(found[1]) if found else 0, int(found[2]) if found else 1


def landmark_rows(path: Path) -> list:
    import numpy as np

    with open(path) as f:
        return [np.array([[float(r[f"x_{i}"]), float(r[f"y_{i}"])] for i in range(68)]) for r in csv.DictReader(f)]


def segments_table(args: argparse.Namespace) -> None:
    """The --segments benchmark (see the module's docstring)."""
    import numpy as np

    from torch_clnf.pipelines.workers import auto_workers

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        videos = [VIDEO, long_video(folder)]
        print("| video | frames | segments | frames fitted twice | segmented f/s | "
              "sequential f/s | speed-up | median / max frame vs sequential (px) | frames > 0.5 px |")
        print("|---|---|---|---|---|---|---|---|---|")
        for video in videos:
            frames = FrameReader.describe(video)[0]
            times: dict[str, list[float]] = {"segmented": [], "sequential": []}
            twice, segments = [], 1
            for run in range(args.repeats):
                for name, options in (("segmented", ()), ("sequential", ("--segments", "1"))):
                    seconds, refitted, count = command_seconds(video, folder / name, args.models, *options)
                    times[name].append(seconds)
                    if name == "segmented":
                        twice, segments = twice + [refitted], count
            rates = {name: frames / statistics.median(found) for name, found in times.items()}
            segmented, sequential = (landmark_rows(folder / name / f"{video.stem}.csv")
                                     for name in ("segmented", "sequential"))
            d = np.array([np.linalg.norm(a - b, axis=1).mean() for a, b in zip(segmented, sequential)])
            print(f"| {video.name} | {frames} | {segments} | {statistics.median(twice):.0f} "
                  f"| {rates['segmented']:.1f} | {rates['sequential']:.1f} | "
                  f"{rates['segmented'] / rates['sequential']:.2f}x | {np.median(d):.3f} / {d.max():.2f} | "
                  f"{int((d > 0.5).sum())} |", flush=True)
        if args.ceclm:
            with tempfile.TemporaryDirectory() as models, tempfile.TemporaryDirectory() as cache:
                config = dataclasses.replace(torch_clnf.FitConfig(), validate=False)
                load = functools.partial(torch_clnf.load_model, "main_ceclm_general.txt",
                                         ceclm_models(Path(models), args.models), cache=cache, config=config)
                load()                                              # converted once, before the timing
                workers = args.workers or auto_workers([videos[1]])
                start = time.perf_counter()
                (summary,) = track_videos_in_processes([videos[1]], load, workers, folder / "ceclm", progress=False)
                seconds = time.perf_counter() - start
                print(f"\nCE-CLM (synthetic CEN, validation off), {videos[1].name}, {workers} workers, segmented: "
                      f"{summary.frames / seconds:.1f} frames/s ({summary.frames} frames in {seconds:.0f} s)")


def ray_table(args: argparse.Namespace) -> None:
    """The --ray benchmark (see the module's docstring)."""
    import ray

    workers = args.workers or 2
    load = functools.partial(torch_clnf.load_model, "main_clnf_general.txt", args.models)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        copies = [folder / f"copy{k:02d}{args.ray_video.suffix}" for k in range(args.videos)]
        for copy in copies:
            shutil.copyfile(args.ray_video, copy)
        frames = 0                                                  # as the runs decode them
        start = time.perf_counter()
        ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, _node_ip_address="127.0.0.1")
        cluster = time.perf_counter() - start
        runs = {
            f"{workers} worker processes": lambda out: track_videos_in_processes(
                copies, load, workers, out, streams=args.batch, progress=False, threads=1),
            f"Ray, {workers} actors": lambda out: track_videos_on_ray(
                copies, load, out, streams=args.batch, progress=False, actors=workers),
        }
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        try:
            for repeat in range(args.repeats):
                for name, run in runs.items():
                    out = folder / f"out{repeat}_{len(seconds[name])}_{name.split()[0]}"
                    begin = time.perf_counter()
                    summaries = run(out)
                    seconds[name].append(time.perf_counter() - begin)
                    assert not any(s.problems for s in summaries) and all(s.complete for s in summaries), summaries
                    assert frames in (0, sum(s.frames for s in summaries))
                    frames = sum(s.frames for s in summaries)
        finally:
            ray.shutdown()
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; {len(copies)} copies of "
          f"{args.ray_video.name} ({frames} frames), {args.batch} in lockstep per process or actor, median of "
          f"{args.repeats}; the local Ray cluster started in {cluster:.1f} s (not counted)")
    print("| run | seconds | frames/s | frames/s per core | vs worker processes |")
    print("|---|---|---|---|---|")
    base = None
    for name, found in seconds.items():
        rate = frames / statistics.median(found)
        base = base or rate
        print(f"| {name} | {statistics.median(found):.1f} | {rate:.1f} | {rate / workers:.1f} | {rate / base:.2f}x |",
              flush=True)


def report(name: str, model: torch_clnf.LandmarkModel, args: argparse.Namespace, cpp_ms: float, end_to_end: bool) -> None:
    frames = [f.image for f in FrameReader(VIDEO)][: args.frames]
    device = torch.device(args.device)
    for streams in args.streams:
        if model.config.compile:                   # compile (or load) this batch size's packages first
            start = time.perf_counter()
            fit_fps(model, frames[:5], streams, 1, device)
            print(f"# compiling for {streams} stream(s): {time.perf_counter() - start:.0f} s", flush=True)
        fps = fit_fps(model, frames, streams, args.repeats, device)
        e2e = f"{end_to_end_fps(model, streams, args.repeats):9.1f}" if end_to_end else f"{'-':>9}"
        print(f"{name:16} {device.type:5} {streams:7d} {fps:9.1f} {e2e} {1000 / cpp_ms:8.1f} "
              f"{fps * cpp_ms / 1000:8.2f}x", flush=True)
        if end_to_end and args.workers > 1 and device.type == "cpu":
            e2e = processes_fps(args.models, args.workers, streams, args.repeats)
            label = f"{name}, {args.workers} procs"
            print(f"{label:16} {device.type:5} {streams:5d}x{args.workers} {'-':>9} {e2e:9.1f} {1000 / cpp_ms:8.1f} "
                  f"{e2e * cpp_ms / 1000:8.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path(os.environ.get("TORCH_CLNF_MODELS", SHARED / "openface-models")))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=None, help="track only the first N frames")
    parser.add_argument("--workers", type=int, default=0, help="also W worker processes (end to end)")
    parser.add_argument("--fit-only", action="store_true", help="skip the end-to-end (track_videos) timing")
    parser.add_argument("--ceclm", action="store_true")
    parser.add_argument("--capture", action="store_true", help="also CLNF with FitConfig(capture=True) (CUDA graphs)")
    parser.add_argument("--compile", action="store_true", help="also CLNF with FitConfig(compile=True) (its packages "
                        "compiled or loaded first, not timed)")
    parser.add_argument("--threads", nargs="+", help="thread settings to compare end to end: auto and/or numbers")
    parser.add_argument("--busy", type=int, default=0, help="other processes keeping a core busy each meanwhile")
    parser.add_argument("--segments", action="store_true", help="one video end to end: segmented against "
                        "--segments 1 (see above)")
    parser.add_argument("--ray", action="store_true", help="Ray actors against worker processes (see above)")
    parser.add_argument("--videos", type=int, default=16, help="with --ray: copies of --ray-video")
    parser.add_argument("--ray-video", type=Path, default=SHARED / "media/changeLighting.wmv")
    parser.add_argument("--batch", type=int, default=8, help="with --ray: videos in lockstep per process or actor")
    args = parser.parse_args()
    if args.segments:
        segments_table(args)
        return
    if args.ray:
        ray_table(args)
        return
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"default.wmv, median of {args.repeats}; C++ = OpenFace 2.x per-frame fit time on the same machine type")
    print(f"{'model':16} {'dev':5} {'streams':>7} {'fit f/s':>9} {'e2e f/s':>9} {'C++ f/s':>8} {'vs C++':>9}")
    model = torch_clnf.load_model("main_clnf_general.txt", args.models, device=args.device)
    if args.threads:
        print(f"# end to end, {args.busy} other busy process(es) beside it")
        with busy_processes(args.busy):
            threads_table(model, args)
        return
    report("CLNF", model, args, CPP_CLNF_MS, end_to_end=not args.fit_only)
    if args.capture:
        captured = torch_clnf.load_model("main_clnf_general.txt", args.models, device=args.device,
                                         config=torch_clnf.FitConfig(capture=True))
        report("CLNF captured", captured, args, CPP_CLNF_MS, end_to_end=not args.fit_only)
    if args.compile:
        compiled = torch_clnf.load_model("main_clnf_general.txt", args.models, device=args.device,
                                         config=torch_clnf.FitConfig(compile=True))
        report("CLNF compiled", compiled, args, CPP_CLNF_MS, end_to_end=not args.fit_only)
    if args.ceclm:
        with tempfile.TemporaryDirectory() as folder, tempfile.TemporaryDirectory() as cache:
            config = dataclasses.replace(torch_clnf.FitConfig(), validate=False)
            model = torch_clnf.load_model("main_ceclm_general.txt", ceclm_models(Path(folder), args.models),
                                          device=args.device, cache=cache, config=config)
            report("CE-CLM (synth)", model, args, CPP_CECLM_MS, end_to_end=False)


if __name__ == "__main__":
    sys.exit(main())
