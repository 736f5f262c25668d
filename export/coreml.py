"""Core ML export (``.mlpackage``, ML program) of the patch experts and the whole fit, with coremltools.

    python -m export.coreml [--model main_clnf_general.txt] [--models DIR] [--out DIR] [--what experts|fit|all]
                            [--iterations 5] [--windows 11 9 7]

coremltools converts the torch program (``torch.export``, the same modules as the ONNX export,
:mod:`export.modules`); it has no ONNX frontend. float32 throughout (``compute_precision``
FLOAT32: the fit's fixed-point sampling and linear solves need it, so Core ML runs it on the CPU
or GPU, not the float16 Neural Engine). Core ML has no int64 and no bool outputs: ``view`` and
``image_index`` are int32 inputs, ``visible`` a float32 (0 or 1) output, and the fit's flat pixel
indices must stay below 2³¹ (images × (H + 4) × (W + 4)). The files hold OpenFace-derived
weights (OpenFace's license applies): they go to ``weights/export`` or ``--out``.
"""
from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .graphs import add_arguments, from_arguments
from .modules import ExpertGraph, FitGraph, trace

DEPLOYMENT_TARGET = "macOS15"            # ML program with the ops used here (also iOS18)


def _register_missing_ops() -> None:
    """Converters for the ops of these graphs that coremltools 9 lacks (it was tested up to torch 2.7)."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY as registry
    from coremltools.converters.mil.mil import types

    def alias(context, node):                                     # a view: the value itself
        context.add(_get_inputs(context, node)[0], torch_name=node.name)

    def isfinite(context, node):                                  # x − x is 0 unless x is ±inf or NaN
        x = _get_inputs(context, node)[0]
        context.add(mb.equal(x=mb.sub(x=x, y=x), y=np.float32(0), name=node.name))

    def lerp(context, node):                                      # torch's two-sided formula
        a, b, w = _get_inputs(context, node)[:3]
        diff = mb.sub(x=b, y=a)
        low = mb.add(x=a, y=mb.mul(x=w, y=diff))
        high = mb.sub(x=b, y=mb.mul(x=diff, y=mb.sub(x=np.float32(1), y=w)))
        context.add(mb.select(cond=mb.less(x=w, y=np.float32(0.5)), a=low, b=high, name=node.name))

    def diag(context, node):                                      # (k,) → (k, k)
        x = _get_inputs(context, node)[0]
        eye = np.eye(x.shape[0], dtype=np.float32)
        context.add(mb.mul(x=mb.expand_dims(x=x, axes=[-1]), y=eye, name=node.name))

    def floor_mod(x, divisor: int, name: str):
        return mb.sub(x=x, y=mb.mul(x=mb.floor_div(x=x, y=np.int32(divisor)), y=np.int32(divisor)), name=name)

    def rshift(context, node):                                    # by a constant k: floor division by 2^k
        x, k = _get_inputs(context, node)[:2]
        context.add(mb.floor_div(x=x, y=np.int32(2 ** int(k.val)), name=node.name))

    def bitwise_and(context, node):                               # bools; or integers & (2^k − 1): x mod 2^k
        x, y = _get_inputs(context, node)[:2]
        if types.is_bool(x.dtype) and types.is_bool(y.dtype):
            context.add(mb.logical_and(x=x, y=y, name=node.name))
            return
        mask = int(y.val)
        if y.val is None or mask & (mask + 1):
            raise NotImplementedError("integer & is converted for constant masks 2^k − 1 only")
        context.add(floor_mod(x, mask + 1, node.name))

    def bitwise_or(context, node):                                # bools
        x, y = _get_inputs(context, node)[:2]
        context.add(mb.logical_or(x=x, y=y, name=node.name))

    for name, func in (("alias", alias), ("isfinite", isfinite), ("lerp", lerp), ("diag", diag)):
        if name not in registry.name_to_func_mapping:
            registry.set_func_by_name(func, name)
    # ``aten.__and__.Tensor`` etc.: coremltools checks that ``__and__`` is known, then converts with
    # the function it finds under ``and`` (there a bool-only one, which this one extends)
    for name, func in (("rshift", rshift), ("and", bitwise_and), ("or", bitwise_or)):
        registry.set_func_by_name(func, f"__{name}__")
        registry.set_func_by_name(func, name)


def convert_graph(graph: ExpertGraph | FitGraph, path: str | Path,
                  program: torch.export.ExportedProgram | None = None) -> Path:
    """Convert an :class:`ExpertGraph` or :class:`FitGraph` to an ``.mlpackage``.

    Inputs keep the graph's names and dynamic sizes (faces, images, image size); outputs are
    named as in the ONNX export.

    Args:
        program: the graph's :func:`~export.modules.trace`, when already made (e.g. for ONNX too).
    """
    import coremltools as ct

    _register_missing_ops()
    program = program if program is not None else trace(graph)
    quiet = logging.getLogger("coremltools")
    level = quiet.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quiet.setLevel(logging.ERROR)                   # its note that bool ``visible`` becomes float32
        try:
            model = ct.convert(program.run_decompositions({}), convert_to="mlprogram",
                               outputs=[ct.TensorType(name=name) for name in graph.outputs],
                               compute_precision=ct.precision.FLOAT32,
                               minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET))
        finally:
            quiet.setLevel(level)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(path))
    return path


def describe(path: str | Path) -> dict[str, dict[str, tuple[str, tuple[int | None, ...]]]]:
    """Inputs and outputs of a saved package, read back with coremltools' spec API (its ML program):
    ``{"inputs": {name: (dtype, shape)}, "outputs": {name: (dtype, shape)}}``, dtype as Core ML
    names it (``FLOAT32``, ``INT32``), None for a dynamic size."""
    import coremltools as ct
    from coremltools.proto import MIL_pb2

    spec = ct.utils.load_spec(str(path))
    function = spec.mlProgram.functions["main"]
    block = function.block_specializations[function.opset]
    types = {value.name: value.type.tensorType for value in function.inputs}
    types.update({out.name: out.type.tensorType for op in block.operations for out in op.outputs})

    def entry(tensor) -> tuple[str, tuple[int | None, ...]]:
        sizes = tuple(d.constant.size if d.WhichOneof("dimension") == "constant" else None for d in tensor.dimensions)
        return MIL_pb2.DataType.Name(tensor.dataType), sizes

    return {"inputs": {value.name: entry(value.type.tensorType) for value in function.inputs},
            "outputs": {name: entry(types[name]) for name in block.outputs}}


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m export.coreml", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.dtype != "float32":
        parser.error("Core ML computes in float32 at most: --dtype float64 is for the ONNX export")
    graphs, folder = from_arguments(args)
    for stem, graph in graphs.items():
        start = time.perf_counter()
        path = convert_graph(graph, folder / f"{stem}.mlpackage")
        io = describe(path)
        print(f"{path} ({time.perf_counter() - start:.0f} s): inputs "
              + ", ".join(f"{k} {v[0]}{list(v[1])}" for k, v in io["inputs"].items()) + "; outputs "
              + ", ".join(f"{k} {v[0]}{list(v[1])}" for k, v in io["outputs"].items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
