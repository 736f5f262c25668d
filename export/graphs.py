"""Which graphs an export writes for a model, and where (shared by the ONNX and Core ML exports)."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from torch_clnf.fitting import FitConfig, ModelFitter
from torch_clnf.weights import MODELS_ENV, cache_dir

from .modules import ExpertGraph, FitGraph, load_fitter

WHAT = ("experts", "fit", "all")


def default_folder() -> Path:
    """``export/`` in the converted-weights cache (a checkout's ignored ``weights/``, or ``~/.cache/torch_clnf``)."""
    return cache_dir() / "export"


def graphs(fitter: ModelFitter, name: str, what: str = "all",
           window_sizes: tuple[int, ...] | None = None) -> dict[str, nn.Module]:
    """File stem → module to export: every scale's experts at its window size, and/or the whole fit.

    Args:
        fitter: from :func:`export.modules.load_fitter`.
        name: the model's name, the stems' prefix (e.g. ``main_clnf_general``).
        what: ``experts``, ``fit`` or ``all``.
        window_sizes: per scale (default the fitter's, OpenFace's 11, 9, 7, 5; 0 skips a scale).
    """
    windows = tuple(window_sizes or fitter.config.window_sizes)[: len(fitter.experts)]
    out: dict[str, nn.Module] = {}
    if what in ("experts", "all"):
        for experts, window in zip(fitter.experts, windows):
            if window:
                out[f"{name}_experts_{experts.patch_scale:g}_w{window}"] = ExpertGraph(experts, window)
    if what in ("fit", "all"):
        out[f"{name}_fit_i{fitter.config.iterations}"] = FitGraph(fitter, windows)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options both exports share."""
    parser.add_argument("--model", default="main_clnf_general.txt",
                        help="main spec (default main_clnf_general.txt; main_ceclm_general.txt for CE-CLM)")
    parser.add_argument("--models", type=Path, help=f"OpenFace model folder (default: ${MODELS_ENV})")
    parser.add_argument("--cache", type=Path, help="converted-weights cache (default: $TORCH_CLNF_CACHE, a checkout's "
                        "weights/, or ~/.cache/torch_clnf)")
    parser.add_argument("--out", type=Path, help="output folder (default: weights/export of a checkout, "
                        "else ~/.cache/torch_clnf/export; the files hold OpenFace-derived weights)")
    parser.add_argument("--what", choices=WHAT, default="all", help="the experts of every scale, the whole fit, or both")
    parser.add_argument("--iterations", type=int, default=FitConfig.iterations,
                        help="NU-RLMS iterations of each phase in the exported fit (default OpenFace's 5)")
    parser.add_argument("--windows", type=int, nargs="+", help="window size per scale (default 11 9 7 5; 0 skips a scale)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="precision of the exported graphs (float64: for parity checks and servers; file names "
                        "end in _f64; ONNX only, Core ML computes in float32 at most)")


def from_arguments(args: argparse.Namespace) -> tuple[dict[str, nn.Module], Path]:
    """The graphs the parsed options ask for, and the output folder (created)."""
    dtype = getattr(torch, getattr(args, "dtype", "float32"))
    fitter = load_fitter(args.model, args.models, FitConfig(iterations=args.iterations), args.cache, dtype)
    name = Path(str(args.model)).stem + ("_f64" if dtype == torch.float64 else "")
    folder = args.out or default_folder()
    folder.mkdir(parents=True, exist_ok=True)
    return graphs(fitter, name, args.what, tuple(args.windows) if args.windows else None), folder
