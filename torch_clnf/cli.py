"""The ``torch-clnf`` command."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2

from .openface import ModelFileError
from .weights import MODELS_ENV, convert, load_weights_file


def _box(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or values[2] <= 0 or values[3] <= 0:
        raise argparse.ArgumentTypeError(f"expected x,y,width,height with width, height > 0, found {text!r}")
    return values


def _image(args: argparse.Namespace) -> int:
    import torch

    from .fitting import FitConfig
    from .images import read_image
    from .landmark_model import load_model
    from .output import draw_landmarks, write_image_csv

    if not args.box:
        print("torch-clnf: error: give each face's box with --box x,y,w,h (automatic face detection is not "
              "available yet)", file=sys.stderr)
        return 2
    if len(args.box) not in (1, len(args.paths)):
        print(f"torch-clnf: error: {len(args.box)} boxes for {len(args.paths)} images: give one box for all, "
              "or one per image", file=sys.stderr)
        return 2
    images, names = [], []
    for path in args.paths:
        try:
            images.append(read_image(path))
        except ValueError as err:
            print(f"torch-clnf: error: {err}", file=sys.stderr)
            return 2
        names.append(str(path))
    model = load_model(args.model, args.models, device=args.device, config=FitConfig(refine_hierarchical=not args.no_parts))
    boxes = torch.tensor(args.box * len(images) if len(args.box) == 1 else args.box)
    start = time.perf_counter()
    result = model.fit(images, boxes)
    elapsed = time.perf_counter() - start
    for k, name in enumerate(names):
        g = result.params_global[k]
        status = "ok" if bool(result.success[k]) else "FAILED"
        print(f"{name}: {status}, scale {g[0]:.3f}, rotation ({g[1]:+.3f}, {g[2]:+.3f}, {g[3]:+.3f}) rad, "
              f"likelihood {result.likelihood[k]:.3f}")
    print(f"{len(names)} face(s) fitted in {elapsed * 1000:.0f} ms")
    if args.csv:
        write_image_csv(args.csv, result, names)
        print(f"landmarks written to {args.csv}")
    if args.draw:
        for k, (name, image) in enumerate(zip(names, images)):
            target = args.draw if len(names) == 1 else args.draw / f"{Path(name).stem}_landmarks.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), draw_landmarks(image, result, k))
            print(f"drawing written to {target}")
    return 0


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

    image = commands.add_parser("image", help="fit 68 landmarks to faces in images")
    image.add_argument("paths", nargs="+", type=Path, help="image files")
    image.add_argument("--box", type=_box, action="append", help="face box x,y,width,height in pixels: once for all "
                       "images, or once per image in order")
    image.add_argument("--csv", type=Path, help="write OpenFace-style columns to this CSV file")
    image.add_argument("--draw", type=Path, help="write the image with its landmarks here (a folder for several images)")
    image.add_argument("--model", default="main_clnf_general.txt", help="main spec (default: main_clnf_general.txt)")
    image.add_argument("--models", type=Path, help=f"OpenFace model folder (default: ${MODELS_ENV})")
    image.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    image.add_argument("--no-parts", action="store_true", help="skip the hierarchical inner-face and eye models")
    image.set_defaults(run=_image)
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
