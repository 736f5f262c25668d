"""How far float32 rounding alone moves OpenFace's fit: the bounds of the float32 parity tests.

    python bench/float32_sensitivity.py [--models DIR] [--trials 16] [--frames 288]

OpenFace's fit is not a smooth function of its input. Area positions are rounded to 1/32 pixel
(OpenCV's fixed-point ``warpAffine``) and the mean-shift KDE is centred on a 0.1-pixel grid, so a
change of one unit in the last place (ulp) of the start can flip a rounding, change a response
map, and move the landmarks that depend on it by a tenth of a pixel or more. Another CPU's
kernels (AVX2 or AVX-512, MKL's Intel or AMD paths), another library (onnxruntime) or another
batch composition are such changes. This script measures the effect directly: each trial starts
the same float32 fits from start params multiplied by ``1 + u``, u uniform within ±2 ulp, and reports,
per image, the largest distance to the unperturbed fit over the trials (and the largest
per-image median). The parity tests' float32 bounds are twice these; their exactness bounds are
checked in float64, where rounding is 2^29 times finer and never reaches a discontinuity.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

import torch_clnf
from torch_clnf.fitting import FitConfig
from torch_clnf.fitting.sampling import MARGIN
from torch_clnf.images import prepare_images

from timing import SHARED

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import boxes, rows  # noqa: E402

ULP = 2.0 ** -23


def perturbed(values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``values`` times ``1 + u``, u uniform in ±2 ulp of float32."""
    return values * (1 + (torch.rand(values.shape, generator=generator, dtype=torch.float64) * 2 - 1) * 2 * ULP)


def image_spread(fitter, padded: torch.Tensor, start: torch.Tensor, windows: tuple[int, ...], parts: bool,
                 trials: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images,) the largest max and the largest median distance, px, of ``trials`` fits from
    perturbed start params to the fit from ``start`` (B, 6), one face per image."""
    index = torch.arange(len(start))

    def fit(g: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            g = g.float()
            return fitter.fit(padded, index, g, g.new_zeros(len(g), fitter.pdm.num_modes), windows,
                              parts=parts).landmarks.double()

    base = fit(start)
    generator = torch.Generator().manual_seed(0)
    largest, median = torch.zeros(len(start)), torch.zeros(len(start))
    for _ in range(trials):
        d = (fit(perturbed(start, generator)) - base).norm(dim=-1)
        largest = torch.maximum(largest, d.amax(1))
        median = torch.maximum(median, d.median(1).values)
    return largest, median


def track_spread(model: torch_clnf.LandmarkModel, video: Path, box: torch.Tensor, frames: int,
                 trials: int) -> dict[str, float]:
    """Per-frame mean distances of tracks started from perturbed boxes to the plain track."""
    from torch_clnf.pipelines import FrameReader

    images = [f.image for f, _ in zip(FrameReader(video), range(frames))]

    def track(start: torch.Tensor) -> torch.Tensor:
        result = model.fit(images[:1], start.float(), multi_view=True)
        found = [result.landmarks[0]]
        for image in images[1:]:
            result = model.track([image], result)
            found.append(result.landmarks[0])
        return torch.stack(found).double()

    base = track(box)
    generator = torch.Generator().manual_seed(0)
    worst_frame = largest = median = 0.0
    for _ in range(trials):
        d = (track(perturbed(box, generator)) - base).norm(dim=-1)
        worst_frame = max(worst_frame, float(d.mean(1).max()))
        largest = max(largest, float(d.max()))
        median = max(median, float(d.median()))
    return {"median": median, "worst frame's mean": worst_frame, "max": largest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=os.environ.get("TORCH_CLNF_MODELS", SHARED / "openface-models"))
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--frames", type=int, default=288, help="frames of default.wmv tracked per trial")
    args = parser.parse_args()
    torch.set_num_threads(1)
    records = rows(SHARED / "reference/openface_cpp/images_default.csv")
    model = torch_clnf.load_model(models=args.models)
    padded = prepare_images([SHARED / "media" / r["file_or_frame"] for r in records], margin=MARGIN).padded
    start = model.fitter.pdm.params_from_box(boxes(records)).double()
    print(f"CPU kernels: {torch.backends.cpu.get_cpu_capability()}; {args.trials} trials of ±2 ulp starts\n")
    print("| fit (max / median px) | " + " | ".join(r["file_or_frame"].removesuffix(".jpg") for r in records) + " |")
    print("|---|" + "---|" * len(records))
    short = torch_clnf.load_model(models=args.models, config=FitConfig(iterations=1), detector=False)
    for name, fitter, windows, parts in (
            ("full fit, part models", model.fitter, model.config.window_sizes, True),
            ("full fit, no part models", model.fitter, model.config.window_sizes, False),
            ("windows 11, 9; 1 iteration, no parts (the ONNX test)", short.fitter, (11, 9), False)):
        largest, median = image_spread(fitter, padded, start, windows, parts, args.trials)
        print(f"| {name} | " + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in zip(largest, median)) + " |")
    first = rows(SHARED / "reference/openface_cpp/video_default.csv")[:1]
    spread = track_spread(model, SHARED / "media/default.wmv", boxes(first).double(), args.frames, max(1, args.trials // 4))
    print(f"\ntracking default.wmv ({args.frames} frames, {max(1, args.trials // 4)} trials): "
          + ", ".join(f"{k} {v:.3f}" for k, v in spread.items()) + " px")


if __name__ == "__main__":
    main()
