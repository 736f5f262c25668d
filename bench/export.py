"""Exported graphs on onnxruntime vs the same torch modules on the CPU: the expert pass and the whole fit.

    python bench/export.py [--models DIR] [--batches 1 64] [--repeats 7] [--iterations 5] [--threads N] [--no-fit]

Expert pass: all 68 landmarks at window 11 (CCNF: OpenFace's 0.25-scale general experts; CEN: a
full-size synthetic 0.25-scale file from ../shared/tools/make_synthetic_cen.py, sparse as
CE-CLM runs it), areas of random grey levels, faces cycling through the 7 views. Whole fit: the
CLNF general model from the recorded boxes of sample1–6.jpg (cycled), windows 11/9/7, no part
models, ``--iterations`` per phase. torch runs its normal path (early exits, faces grouped by
view); onnxruntime the exported static graph (every iteration, each face gathering its view's
weights), with as many threads as torch. Exports go to a temporary folder. Prints median
milliseconds per call.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # the export package of this checkout

from export.modules import ExpertGraph, FitGraph, load_fitter
from export.onnx import export_graph, run, session
from fit import faces
from timing import SHARED, median_ms, synthetic_cen_tool
from torch_clnf.fitting import FitConfig
from torch_clnf.fitting.sampling import MARGIN
from torch_clnf.models import CENExperts
from torch_clnf.openface import read_cen

CPU = torch.device("cpu")


def row(name: str, batch: int, torch_ms: float, onnx_ms: float) -> None:
    print(f"{name:22} {batch:5d} {torch_ms:10.1f} {onnx_ms:10.1f} {torch_ms / onnx_ms:8.2f}x {batch / onnx_ms * 1000:9.0f}",
          flush=True)


def bench_experts(name: str, graph: ExpertGraph, folder: Path, batches: list[int], repeats: int, threads: int) -> None:
    onnx = session(export_graph(graph, folder / f"{name}.onnx"), threads)
    for batch in batches:
        areas = torch.rand(batch, graph.experts.num_points, graph.area, graph.area) * 255
        view = torch.arange(batch) % graph.experts.num_views

        @torch.inference_mode()
        def eager():
            graph.experts(areas, view)

        reps = repeats if batch < 64 else max(3, repeats // 2)
        row(name, batch, median_ms(eager, CPU, reps), median_ms(lambda: run(onnx, areas, view), CPU, reps))


def bench_fit(fitter, folder: Path, batches: list[int], repeats: int, threads: int) -> None:
    graph = FitGraph(fitter, (11, 9, 7))
    onnx = session(export_graph(graph, folder / "fit.onnx"), threads)
    for batch in batches:
        greys, boxes, index = faces(batch, CPU)
        height, width = max(g.shape[0] for g in greys), max(g.shape[1] for g in greys)
        padded = torch.zeros(len(greys), height + 2 * MARGIN, width + 2 * MARGIN)
        for k, grey in enumerate(greys):
            padded[k, MARGIN: MARGIN + grey.shape[0], MARGIN: MARGIN + grey.shape[1]] = grey
        g = fitter.pdm.params_from_box(boxes)
        p = g.new_zeros(batch, fitter.pdm.num_modes)

        @torch.inference_mode()
        def eager():
            fitter.fit(padded, index, g, p, graph.window_sizes, parts=False)

        reps = repeats if batch < 64 else max(3, repeats // 2)
        row(f"fit CLNF, {fitter.config.iterations} it/phase", batch, median_ms(eager, CPU, reps, warmup=1),
            median_ms(lambda: run(onnx, padded, index, g, p), CPU, reps, warmup=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path(os.environ.get("TORCH_CLNF_MODELS", SHARED / "openface-models")))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=FitConfig.iterations, help="NU-RLMS iterations per phase")
    parser.add_argument("--threads", type=int, help="threads of torch and of onnxruntime (default torch's)")
    parser.add_argument("--no-fit", action="store_true", help="time the expert pass only (the fit's export takes minutes)")
    args = parser.parse_args()
    import onnxruntime

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}, {threads} threads each, float32, median of {args.repeats} "
          f"(64 faces: of {max(3, args.repeats // 2)})")
    print(f"{'graph':22} {'faces':>5} {'torch ms':>10} {'ORT ms':>10} {'ORT gain':>9} {'ORT f/s':>9}")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        fitter = load_fitter("main_clnf_general.txt", args.models, FitConfig(iterations=args.iterations), folder / "cache")
        bench_experts("CCNF 0.25, w11", ExpertGraph(fitter.experts[0], 11), folder, args.batches, args.repeats, threads)
        tool = synthetic_cen_tool()
        path, _ = tool.write(folder, "0.25", tool.visibilities())
        cen = CENExperts(read_cen(Path(path)), sparse=True)
        bench_experts("CEN 0.25, w11, sparse", ExpertGraph(cen, 11), folder, args.batches, args.repeats, threads)
        if not args.no_fit:
            bench_fit(fitter, folder, args.batches, args.repeats, threads)


if __name__ == "__main__":
    sys.exit(main())
