"""Response maps of all 68 landmarks (window 11): batched vs a per-landmark loop over the same module.

    python bench/experts.py [--models DIR] [--device cpu|cuda|mps] [--batches 1 8 64] [--repeats 7]

CCNF uses OpenFace's real 0.25-scale general experts; CEN uses a full-size synthetic 0.25-scale
file written by ../shared/tools/make_synthetic_cen.py (real layer shapes 122→300→100→50→1,
random weights). Prints median milliseconds per call and the batched / loop speed ratio.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

from torch_clnf.models import CCNFExperts, CENExperts
from torch_clnf.openface import read_ccnf, read_cen

from timing import SHARED, median_ms, synthetic_cen_tool

WINDOW = 11


def synthetic_cen(folder: Path) -> Path:
    """The full-size synthetic 0.25-scale CEN file, written with the shared tool."""
    tool = synthetic_cen_tool()
    path, _ = tool.write(folder, "0.25", tool.visibilities())
    return Path(path)


def run(name: str, module: torch.nn.Module, batches: list[int], device: torch.device, repeats: int,
        **options) -> list[tuple]:
    rows = []
    points = module.num_points
    for batch in batches:
        areas = torch.rand(batch, points, WINDOW + 10, WINDOW + 10, device=device) * 255
        view = torch.zeros(batch, dtype=torch.long, device=device)
        index = [torch.tensor([i], device=device) for i in range(points)]

        @torch.inference_mode()
        def batched():
            module(areas, view, **options)

        @torch.inference_mode()
        def loop():
            for i in range(points):
                module(areas[:, i:i + 1], view, landmarks=index[i], **options)

        reps = max(3, repeats if batch <= 8 else repeats // 2)
        fast, slow = median_ms(batched, device, reps), median_ms(loop, device, reps)
        rows.append((name, device.type, batch, fast, slow, slow / fast, batch / fast * 1000))
        print(f"{name:12} {device.type:5} {batch:4d} {fast:10.2f} {slow:10.2f} {slow / fast:7.1f}x {batch / fast * 1000:10.0f}",
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path(os.environ.get("TORCH_CLNF_MODELS", SHARED / "openface-models")))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, window {WINDOW}, 68 landmarks, float32, median of {args.repeats}")
    print(f"{'experts':12} {'dev':5} {'B':>4} {'batched ms':>10} {'loop ms':>10} {'ratio':>8} {'faces/s':>10}")
    ccnf = CCNFExperts(read_ccnf(args.models / "patch_experts/ccnf_patches_0.25_general.txt")).to(device)
    run("CCNF 0.25", ccnf, args.batches, device, args.repeats)
    with tempfile.TemporaryDirectory() as folder:
        cen_data = read_cen(synthetic_cen(Path(folder)))
    cen = CENExperts(cen_data).to(device)
    run("CEN 0.25", cen, args.batches, device, args.repeats)
    run("CEN sparse", cen, args.batches, device, args.repeats, sparse=True)


if __name__ == "__main__":
    sys.exit(main())
