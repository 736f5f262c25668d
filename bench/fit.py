"""Landmark fitting speed: torch_clnf vs OpenFace C++'s fit times in the reference CSVs.

    python bench/fit.py [--models DIR] [--device cpu|cuda|mps] [--batches 1 8 64] [--repeats 10] [--threads 1 2]
                        [--ceclm [--cen-bfloat16]] [--compile] [--capture] [--parts-alone] [--multi-view]

Fits from the recorded MTCNN boxes of ../shared/media/sample1–6.jpg (CLNF general model, part
models on, single start as the C++ reference); batches repeat those six faces. Image decoding is
excluded on both sides. With --multi-view, instead: per batch (default 1 and 8 faces), the single
start, the default fit from 11 head-rotation hypotheses (the first scale's most likely completed)
and the full 11-hypothesis search (every hypothesis completed), timed in turns, with their time
as a multiple of the single start's. With --ceclm, also CE-CLM on full-size synthetic CEN files (real layer shapes, random
weights) written by ../shared/tools/make_synthetic_cen.py (compiled too with --compile); with --cen-bfloat16
also CE-CLM with its CEN layers in bfloat16 (FitConfig(cen_bfloat16=True)), the two timed in turns. With --parts-alone, also CLNF with every
part group refitted on its own (batches of up to 8 faces otherwise refit all their parts jointly,
torch_clnf.fitting.parts), the two timed in turns, call by call. With --capture, also CLNF with
FitConfig(capture=True) (on CUDA the scales of each batch replayed as CUDA graphs; the first fits of
each batch size capture them, timed apart).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch

import torch_clnf
from torch_clnf import FitConfig
from torch_clnf.fitting import ROTATION_HYPOTHESES

from timing import SHARED, ceclm_models, interleaved_median_ms

REFERENCE = SHARED / "reference/openface_cpp"


def faces(batch: int, device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """``batch`` faces cycling through sample1–6: the grey images used (decoded once), boxes, image index."""
    with open(REFERENCE / "images_default.csv") as f:
        records = list(csv.DictReader(f))
    greys = [torch.from_numpy(cv2.cvtColor(cv2.imread(str(SHARED / "media" / r["file_or_frame"])), cv2.COLOR_BGR2GRAY))
             for r in records]
    boxes = torch.tensor([[float(r[k]) for k in ("box_x", "box_y", "box_w", "box_h")] for r in records])
    pick = torch.arange(batch) % len(records)
    used = min(batch, len(records))
    return greys[:used], boxes[pick].to(device), pick.to(device)


def cpp_median_ms(name: str, column: str = "fit_ms") -> float:
    with open(REFERENCE / name) as f:
        return statistics.median(float(r[column]) for r in csv.DictReader(f))


def run(name: str, model: torch_clnf.LandmarkModel, batches: list[int], device: torch.device, repeats: int,
        cpp_ms: float, threads: list[int | None], parts_alone: bool = False,
        beside: tuple[str, torch_clnf.LandmarkModel] | None = None) -> None:
    """Times ``model``'s fits of each batch size (and thread count); ``beside``: (label, model), another
    model's fits too, in turns with these (a ratio that holds while the machine's speed drifts)."""
    for batch, count in ((b, t) for b in batches for t in threads):
        model.threads = count                                 # None: torch_clnf's choice per call
        greys, boxes, index = faces(batch, device)
        if model.config.compile or model.config.capture:    # compile / capture this batch size's graphs first
            start = time.perf_counter()
            for _ in range(2):
                for compiled in [model] + ([beside[1]] if beside else []):
                    compiled.fit(greys, boxes, image_index=index, multi_view=False)
            print(f"# compiling or capturing for {batch} faces: {time.perf_counter() - start:.0f} s", flush=True)
        joint = model.fitter.joint_parts_max_faces

        def fit(joint_parts_max_faces: int, fitted: torch_clnf.LandmarkModel = model) -> None:
            fitted.fitter.joint_parts_max_faces = joint_parts_max_faces
            fitted.fit(greys, boxes, image_index=index, multi_view=False)

        variants = {name: joint, **({f"{name} parts alone": 0} if parts_alone else {})}
        calls = {label: functools.partial(fit, limit) for label, limit in variants.items()}
        if beside is not None:
            beside[1].threads = count
            calls[beside[0]] = functools.partial(fit, joint, beside[1])
        medians = interleaved_median_ms(calls, device, repeats if batch < 64 else max(3, repeats // 3), warmup=1)
        model.fitter.joint_parts_max_faces = joint
        for label, ms in medians.items():
            per_face = ms / batch
            print(f"{label:18} {device.type:5} {count or 'auto':>7} {batch:5d} {ms:10.1f} {per_face:9.2f} "
                  f"{batch / ms * 1000:9.0f} {cpp_ms:8.1f} {1000 / cpp_ms:8.0f} {cpp_ms / per_face:8.2f}x", flush=True)


def run_multi_view(model: torch_clnf.LandmarkModel, batches: list[int], device: torch.device, repeats: int,
                   threads: list[int | None]) -> None:
    """Single start, the default multi-view fit and the full 11-hypothesis search, side by side. A
    batch of 1 is each of the six faces fitted alone in turn (ms: per fit)."""
    default_config = model.fitter.config
    full_search = dataclasses.replace(default_config, hypotheses_completed=len(ROTATION_HYPOTHESES))
    print(f"{'fit':23} {'dev':5} {'threads':>7} {'faces':>5} {'batch ms':>10} {'ms/face':>9} {'x single':>9}")
    for batch, count in ((b, t) for b in batches for t in threads):
        model.threads = count
        greys, boxes, index = faces(batch if batch > 1 else 6, device)
        fits = [(greys, boxes, index)] if batch > 1 else [([g], boxes[k:k + 1], index[:1] * 0) for k, g in enumerate(greys)]

        def fit(multi_view: bool, config: FitConfig) -> None:
            model.fitter.config = config
            for images, face_boxes, image_index in fits:
                model.fit(images, face_boxes, image_index=image_index, multi_view=multi_view)

        variants = {"single start": (False, default_config), "11 hypotheses (default)": (True, default_config),
                    "11 hypotheses, all": (True, full_search)}
        try:
            medians = interleaved_median_ms({label: functools.partial(fit, *v) for label, v in variants.items()},
                                            device, repeats, warmup=1)
        finally:
            model.fitter.config = default_config
        for label, ms in medians.items():
            ms /= len(fits)
            print(f"{label:23} {device.type:5} {count or 'auto':>7} {batch:5d} {ms:10.1f} {ms / batch:9.2f} "
                  f"{ms / medians['single start'] * len(fits):8.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path(os.environ.get("TORCH_CLNF_MODELS", SHARED / "openface-models")))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", help="faces per fit (default 1 8 64; 1 8 with --multi-view)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", nargs="+", help="torch threads, each batch timed with each (side by side in "
                        "one run): numbers, or auto for torch_clnf's choice per call (the default)")
    parser.add_argument("--ceclm", action="store_true", help="also time CE-CLM on full-size synthetic CEN files")
    parser.add_argument("--cen-bfloat16", action="store_true", help="with --ceclm: also CE-CLM with its CEN layers in "
                        "bfloat16, in turns")
    parser.add_argument("--compile", action="store_true", help="also time CLNF with FitConfig(compile=True), in "
                        "turns with the uncompiled fits")
    parser.add_argument("--capture", action="store_true", help="also time CLNF with FitConfig(capture=True)")
    parser.add_argument("--parts-alone", action="store_true",
                        help="also time CLNF with each part group refitted on its own (no joint part refits)")
    parser.add_argument("--multi-view", action="store_true", help="time the single start against the default fit "
                        "from 11 head-rotation hypotheses and the full 11-hypothesis search (batches 1 and 8 unless "
                        "--batches is given)")
    args = parser.parse_args()
    device = torch.device(args.device)
    threads = [None if t == "auto" else int(t) for t in args.threads or ["auto"]]
    if args.multi_view:
        print(f"# {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, float32, median of "
              f"{args.repeats}, the three fits timed in turns; CLNF general, part models and validator")
        run_multi_view(torch_clnf.load_model("main_clnf_general.txt", args.models, device=device),
                       args.batches or [1, 8], device,
                       args.repeats, threads)
        return
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"float32, median of {args.repeats}; C++ = OpenFace 2.x on the same machine type (reference CSVs)")
    print(f"{'model':18} {'dev':5} {'threads':>7} {'faces':>5} {'batch ms':>10} {'ms/face':>9} {'faces/s':>9} "
          f"{'C++ ms':>8} {'C++ f/s':>8} {'speed-up':>9}")
    cpp_clnf = cpp_median_ms("images_default.csv")
    batches = args.batches or [1, 8, 64]
    eager = torch_clnf.load_model("main_clnf_general.txt", args.models, device=device)
    run("CLNF", eager, batches, device, args.repeats, cpp_clnf, threads, args.parts_alone)
    if args.compile:
        model = torch_clnf.load_model("main_clnf_general.txt", args.models, device=device, config=FitConfig(compile=True))
        run("CLNF compiled", model, batches, device, args.repeats, cpp_clnf, threads, beside=("  eager, in turns", eager))
    if args.capture:
        model = torch_clnf.load_model("main_clnf_general.txt", args.models, device=device, config=FitConfig(capture=True))
        run("CLNF captured", model, batches, device, args.repeats, cpp_clnf, threads)
    if args.ceclm:
        with tempfile.TemporaryDirectory() as folder, tempfile.TemporaryDirectory() as cache:
            models = ceclm_models(Path(folder), args.models)
            model = torch_clnf.load_model("main_ceclm_general.txt", models, device=device, cache=cache,
                                          config=FitConfig(compile=args.compile))
            beside = None
            if args.cen_bfloat16:
                beside = ("  CEN bfloat16, in turns", torch_clnf.load_model(
                    "main_ceclm_general.txt", models, device=device, cache=cache,
                    config=FitConfig(compile=args.compile, cen_bfloat16=True)))
            name = "CE-CLM (synth)" + (" compiled" if args.compile else "")
            run(name, model, batches, device, args.repeats, 29.5, threads, beside=beside)   # C++: 28-31 ms (README)


if __name__ == "__main__":
    sys.exit(main())
