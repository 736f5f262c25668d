"""The ``torch-clnf`` command."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .openface import ModelFileError
from .weights import MODELS_ENV, convert, load_weights_file


def _convert(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    target = convert(args.spec, args.models, args.cache, force=args.force)
    model = load_weights_file(target)
    kind = "CE-CLM (CEN)" if model.cen else "CLNF (CCNF)"
    scales = ", ".join(f"{e.patch_scale:g}" for e in model.experts)
    parts = ", ".join(p.name for p in model.parts) or "none"
    print(f"{model.name}: {kind}, {model.pdm.num_points} landmarks, {model.pdm.num_modes} modes, "
          f"patch scales {scales}, parts {parts}")
    print(f"cached in {target} ({target.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - start:.2f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torch-clnf", description="OpenFace CLNF / CE-CLM landmark fitting in PyTorch.")
    commands = parser.add_subparsers(dest="command", required=True)
    conv = commands.add_parser("convert", help="convert an OpenFace model spec and the files it names into the weights cache")
    conv.add_argument("spec", help="main spec, e.g. main_clnf_general.txt (a path, or a name inside --models)")
    conv.add_argument("--models", type=Path, help=f"OpenFace model folder (default: ${MODELS_ENV})")
    conv.add_argument("--cache", type=Path, help="cache folder (default: $TORCH_CLNF_CACHE, a checkout's weights/, or ~/.cache/torch_clnf)")
    conv.add_argument("--force", action="store_true", help="convert again even if an up-to-date conversion is cached")
    conv.set_defaults(run=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ModelFileError as err:
        print(f"torch-clnf: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
