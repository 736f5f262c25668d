"""ONNX export of the patch experts and the whole fit (``torch.onnx.export(..., dynamo=True)``), checked with onnxruntime.

    python -m export.onnx [--model main_clnf_general.txt] [--models DIR] [--out DIR] [--what experts|fit|all]
                          [--iterations 5] [--windows 11 9 7] [--image IMG --box x,y,w,h]

Writes one ``.onnx`` file per graph (see :mod:`export.graphs`), checks every expert graph against
torch on random areas, and the fit on ``--image`` from ``--box`` when given. The files hold
OpenFace-derived weights (OpenFace's license applies): they go to ``weights/export`` or ``--out``.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .graphs import add_arguments, from_arguments
from .modules import ExpertGraph, FitGraph, trace


def export_graph(graph: ExpertGraph | FitGraph, path: str | Path,
                 program: torch.export.ExportedProgram | None = None) -> Path:
    """Export an :class:`ExpertGraph` or :class:`FitGraph` to one self-contained ``.onnx`` file
    (dynamic batch of faces; for the fit also dynamic image count and size).

    Args:
        program: the graph's :func:`~export.modules.trace`, when already made (e.g. for Core ML too).
    """
    path = Path(path)
    program = program if program is not None else trace(graph)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=list(graph.inputs),
                                         output_names=list(graph.outputs), optimize=False, verbose=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_program.save(path, external_data=False)
    return path


def session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session for an exported file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3                         # errors only (not its constant-folding notes)
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(session, *inputs: torch.Tensor) -> list[torch.Tensor]:
    """Run a session on torch tensors (in the graph's input order); outputs as torch tensors."""
    names = [i.name for i in session.get_inputs()]
    outputs = session.run(None, {name: x.detach().cpu().numpy() for name, x in zip(names, inputs)})
    return [torch.from_numpy(np.asarray(o)) for o in outputs]


def compare(graph: nn.Module, session, inputs: tuple[torch.Tensor, ...]) -> list[float]:
    """Per float output, the largest |onnxruntime − torch| (the torch graph run eagerly)."""
    with torch.inference_mode():
        expected = graph(*inputs)
    found = run(session, *inputs)
    return [float((f - e).abs().max()) if e.is_floating_point() else float((f != e).sum())
            for f, e in zip(found, expected)]


def _box(text: str) -> list[float]:
    values = [float(v) for v in text.split(",")]
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected x,y,width,height, found {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.onnx", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--image", type=Path, help="check the exported fit on this image ...")
    parser.add_argument("--box", type=_box, help="... from this face box x,y,width,height (pixels)")
    args = parser.parse_args(argv)
    graphs, folder = from_arguments(args)
    for stem, graph in graphs.items():
        start = time.perf_counter()
        path = export_graph(graph, folder / f"{stem}.onnx")
        print(f"{path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - start:.0f} s)", flush=True)
        if isinstance(graph, ExpertGraph):
            diff = compare(graph, session(path), graph.example_inputs(batch=3, seed=1))
            print(f"  onnxruntime vs torch, 3 faces of random areas: maps {diff[0]:.2g}, visible {diff[1]:.0f} differ")
        elif args.image is not None and args.box is not None:
            from torch_clnf.images import prepare_images

            padded = prepare_images([args.image], margin=2).padded
            g = graph.fitter.pdm.params_from_box(torch.tensor([args.box]))
            inputs = (padded, torch.zeros(1, dtype=torch.long), g, g.new_zeros(1, graph.fitter.pdm.num_modes))
            diff = compare(graph, session(path), inputs)
            print(f"  onnxruntime vs torch on {args.image.name}: landmarks {diff[0]:.2g} px, params {max(diff[1:3]):.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
