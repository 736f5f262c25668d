"""The ``torch-clnf`` command.

Exit status, one rule for every command: 0 all done; 1 some input could not be processed (an
unreadable or damaged file; the others were); 2 nothing was done: the command line is wrong or
names nothing to process (a path that does not exist, an empty folder, outputs that would
overwrite each other); 130 interrupted by Ctrl-C (the rows written so far stay).

Light by design: torch loads only when a command needs it, so ``--help`` answers at once.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .model_files import MODELS_ENV
from .pipelines.segments import WARMUP

DAMAGED, USAGE, INTERRUPTED = 1, 2, 130


class UsageError(Exception):
    """The command line cannot be carried out; nothing was done (exit 2)."""


def _box(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not all(map(math.isfinite, values)) or values[2] <= 0 or values[3] <= 0:
        raise argparse.ArgumentTypeError(f"expected four numbers x,y,width,height with width, height > 0, "
                                         f"found {text!r}")
    return values


def _joined_box_values(argv: list[str]) -> list[str]:
    """``--box -50,-50,100,100`` as ``--box=-50,-50,100,100`` (argparse takes a value that starts
    with ``-`` for an option unless it is one plain negative number)."""
    joined: list[str] = []
    for arg in argv:
        if joined and joined[-1] == "--box" and arg[:1] == "-" and (arg[1:2].isdigit() or arg[1:2] == "."):
            joined[-1] = f"--box={arg}"
        else:
            joined.append(arg)
    return joined


def _existing(paths: list[Path]) -> None:
    """A usage error naming the paths that do not exist."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")


def _at_least_one(**numbers: int | None) -> None:
    small = [name for name, value in numbers.items() if value is not None and value < 1]
    if small:
        raise UsageError(f"{', '.join('--' + n.replace('_', '-') for n in small)} must be at least 1")


def _loader(args: argparse.Namespace) -> functools.partial:
    """The model the options ask for, as a picklable call (worker processes load their own); the
    device checked first, in one line."""
    from .devices import checked_device
    from .fitting import FitConfig
    from .landmark_model import load_model

    try:
        device = str(checked_device(args.device))
    except ValueError as err:
        raise UsageError(str(err)) from None
    config = FitConfig(refine_hierarchical=not args.no_parts, compile=args.compile, capture=args.capture,
                       cen_bfloat16=args.cen_bfloat16)
    return functools.partial(load_model, args.model, args.models, device=device, config=config, threads=args.threads)


@contextmanager
def _stop_on_interrupt() -> Iterator[threading.Event]:
    """An event that the first Ctrl-C sets (the run ends after the work under way, keeping what
    it wrote); a second Ctrl-C stops at once."""
    stop = threading.Event()

    def interrupted(signum, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\ntorch-clnf: stopping after the work under way (Ctrl-C again to stop at once)", file=sys.stderr)

    try:
        previous = signal.signal(signal.SIGINT, interrupted)
    except ValueError:                                    # not the main thread: Ctrl-C stays as it is
        previous = None
    try:
        yield stop
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _image(args: argparse.Namespace) -> int:
    from .pipelines import fit_image_files, image_files
    from .pipelines.outputs import output_stems

    _existing(args.paths)
    _at_least_one(batch=args.batch, threads=args.threads, max_faces=args.max_faces)
    if args.min_confidence is not None and not 0 <= args.min_confidence <= 1:
        raise UsageError(f"--min-confidence must be between 0 and 1 (the validator's certainty), "
                         f"found {args.min_confidence:g}")
    files = image_files(args.paths)
    if not files:
        raise UsageError(f"no image files in {', '.join(map(str, args.paths))}")
    if args.box and len(args.box) not in (1, len(files)):
        raise UsageError(f"{len(args.box)} boxes for {len(files)} images: give one box for all, or one per image")
    drawings: list[Path] = []
    if args.draw:
        if len(files) == 1 and not (args.draw.is_dir() or str(args.draw).endswith(("/", os.sep))):
            drawings = [args.draw]
        else:
            try:
                drawings = [Path(f"{stem}_landmarks.png") for stem in output_stems(files, args.draw, ("_landmarks.png",))]
            except ValueError as err:
                raise UsageError(str(err)) from None
    model = _loader(args)()

    import cv2
    import torch

    from .output import ImageCSV, draw_landmarks

    boxes = None if not args.box else torch.tensor(args.box[0] if len(args.box) == 1 else args.box)
    table = ImageCSV(args.csv, model.fitter.pdm.num_points, model.fitter.pdm.num_modes) if args.csv else None
    faces_fitted = faces_left_out = unreadable = done = 0
    start = time.perf_counter()
    with _stop_on_interrupt() as stop:
        try:
            for fit in fit_image_files(model, files, boxes, batch=args.batch, multi_view=not args.single_start,
                                       max_faces=args.max_faces, min_confidence=args.min_confidence):
                done += 1
                name = str(fit.path)
                if fit.faces is None:
                    print(f"torch-clnf: error: {fit.error}", file=sys.stderr)
                    unreadable += 1
                    continue
                if not fit.found:
                    print(f"{name}: no face")
                elif len(fit.faces) < fit.found:
                    print(f"{name}: {fit.found} faces, {len(fit.faces)} kept")
                for k, face_id in enumerate(fit.face_ids.tolist()):
                    g = fit.faces.params_global[k]
                    status = "ok" if bool(fit.faces.success[k]) else "FAILED"
                    label = name if fit.found == 1 else f"{name} face {face_id}"
                    print(f"{label}: {status}, confidence {fit.faces.confidence[k]:.3f}, scale {g[0]:.3f}, "
                          f"rotation ({g[1]:+.3f}, {g[2]:+.3f}, {g[3]:+.3f}) rad")
                faces_fitted += len(fit.faces)
                faces_left_out += fit.found - len(fit.faces)
                if table is not None:
                    table.write(name, fit.faces, fit.face_ids, fit.found)
                if drawings:
                    target = drawings[files.index(fit.path)]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(target), draw_landmarks(fit.image, fit.faces, 0))
                    print(f"drawing written to {target}")
                if stop.is_set():
                    break
        finally:
            if table is not None:
                table.close()
    elapsed = time.perf_counter() - start
    what = "fitted" if args.box else "detected and fitted"
    read = done - unreadable
    left_out = f" ({faces_left_out} more left out by --max-faces / --min-confidence)" if faces_left_out else ""
    print(f"{faces_fitted} face(s) {what} in {read} image(s) in {elapsed:.2f} s ({read / elapsed:.1f} images/s)"
          f"{left_out}")
    if table is not None:
        print(f"landmarks written to {args.csv}")
    if stop.is_set():
        print(f"torch-clnf: interrupted after {done} of {len(files)} image(s)"
              + (f"; their rows are in {args.csv}" if table is not None else ""), file=sys.stderr)
        return INTERRUPTED
    if unreadable:
        print(f"torch-clnf: {unreadable} of {len(files)} image(s) could not be read", file=sys.stderr)
        return DAMAGED
    return 0


def _video(args: argparse.Namespace) -> int:
    from .pipelines import (TrackingConfig, auto_workers, track_videos, track_videos_in_processes, track_videos_on_ray,
                            video_sources)
    from .pipelines.frames import IMAGE_SUFFIXES, VIDEO_SUFFIXES
    from .pipelines.outputs import output_stems
    from .pipelines.videos import output_ends

    _existing(args.paths)
    _at_least_one(batch=args.batch, max_faces=args.max_faces, fit_every=args.fit_every, workers=args.workers,
                  threads=args.threads, segments=args.segments)
    if args.warmup < 0:
        raise UsageError("--warmup must be at least 0")
    empty = [str(p) for p in args.paths
             if p.is_dir() and not any(c.suffix.lower() in VIDEO_SUFFIXES | IMAGE_SUFFIXES for c in p.iterdir())]
    if empty:
        raise UsageError(f"no videos or images in {', '.join(empty)}")
    if args.ray is not None:
        if args.segments not in (None, 1):
            raise UsageError("--segments: with --ray each video is tracked whole by one Ray actor")
        from .pipelines.ray_runs import import_ray
        try:
            import_ray()
        except ImportError as err:
            raise UsageError(str(err)) from None
    sources = video_sources(args.paths)
    try:
        output_stems(sources, args.out, output_ends(args.draw))        # names that collide: nothing done
    except ValueError as err:
        raise UsageError(str(err)) from None
    load = _loader(args)
    model = load()                                        # checks the model files before any worker starts
    tracking = TrackingConfig(max_faces=args.max_faces, fit_every=args.fit_every)
    workers = args.workers
    if workers is None and args.ray is None:
        workers = auto_workers(sources, segments=args.segments) if model.device.type == "cpu" else 1
    with _stop_on_interrupt() as stop:
        try:
            if args.ray is not None:
                del model                                 # each actor loads its own
                summaries = track_videos_on_ray(sources, load, args.out, address=args.ray or None, streams=args.batch,
                                                tracking=tracking, draw=args.draw, progress=not args.quiet, stop=stop,
                                                force=args.force, actors=workers)
            elif workers > 1:
                del model                                 # each worker loads its own
                summaries = track_videos_in_processes(sources, load, workers, args.out, streams=args.batch,
                                                      tracking=tracking, draw=args.draw, progress=not args.quiet,
                                                      threads=args.threads, stop=stop, segments=args.segments,
                                                      warmup=args.warmup, force=args.force)
            else:
                summaries = track_videos(sources, model, args.out, streams=args.batch, tracking=tracking,
                                         draw=args.draw, progress=not args.quiet, stop=stop, segments=args.segments,
                                         warmup=args.warmup, force=args.force)
        except ConnectionError as err:                     # --ray ADDRESS: no cluster there
            if args.ray is None:
                raise
            raise UsageError(f"no Ray cluster at {args.ray or 'this machine'}: {err}") from None
        except KeyboardInterrupt:
            where = args.out if args.out is not None else "beside each video"
            print(f"torch-clnf: interrupted; the rows written so far are in their .csv.part files ({where}); the same "
                  "command again resumes the run", file=sys.stderr)
            return INTERRUPTED
    for summary in summaries:
        print(summary.line())
        if summary.csv is not None:
            where = "rows so far in" if not summary.complete else "landmarks written to"
            print(f"  {where} {summary.csv}")
    if stop.is_set():
        print("torch-clnf: interrupted; each .csv.part above holds the rows of the frames tracked; the same command "
              "again skips the videos done and tracks the others from their start", file=sys.stderr)
        return INTERRUPTED
    return DAMAGED if any(s.problems for s in summaries) else 0


def _convert(args: argparse.Namespace) -> int:
    from .weights import convert, load_weights_file

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


def _compile(args: argparse.Namespace) -> int:
    import numpy as np

    from .fitting import FitConfig
    from .landmark_model import load_model
    from .models.compiling import UNUSED_DAYS, exact_batches, package_dir

    start = time.perf_counter()
    model = load_model(args.model, args.models, device=args.device, cache=args.cache, detector=not args.no_validator,
                       config=FitConfig(compile=True, refine_hierarchical=not args.no_parts))
    before = set(package_dir().glob("*.pt2"))
    # any image and box give every shape a fit of that many faces takes (the iterations run their full count)
    rng = np.random.default_rng(0)
    image = (rng.random((480, 640)) * 255).astype(np.uint8)
    # the detector's five points (eyes, nose, mouth corners) in that box: a video's first frame starts
    # one more hypothesis from them, a batch of 12 per face
    points = np.array([[290, 220], [350, 220], [320, 260], [295, 300], [345, 300]], np.float32)
    for faces in args.batch:
        boxes = np.tile(np.array([[200.0, 120.0, 240.0, 240.0]], np.float32), (faces, 1))
        with exact_batches():             # this many faces, not power-of-two parts (made for the sizes not asked)
            for multi_view in (False, True):
                fitted = model.fit([image] * faces, boxes, multi_view=multi_view)
            model.fit([image] * faces, boxes, multi_view=True, points=np.tile(points, (faces, 1, 1)))
            model.track([image] * faces, fitted)                 # (as many videos in lockstep)
        print(f"{faces} face(s): fit from boxes (single start, 11 head rotations, and 12 with the detector's "
              "points) and tracking compiled")
    after = set(package_dir().glob("*.pt2"))
    print(f"{len(after - before)} new packages in {package_dir()} ({time.perf_counter() - start:.0f} s); fits with "
          "--compile (FitConfig(compile=True)) load them in milliseconds")
    if before - after:
        print(f"{len(before - after)} files removed: packages of other torch_clnf or torch versions unused for "
              f"{UNUSED_DAYS} days, partial files of killed compiles")
    return 0


def _download(args: argparse.Namespace) -> int:
    from .download import (ACCEPT_ENV, LICENSE_SUMMARY, DownloadError, download_models, license_accepted_by_environment,
                           model_files)
    from .weights import models_dir

    target = args.dir if args.dir is not None else models_dir()
    accepted = args.accept_license or license_accepted_by_environment()
    if not accepted:
        print(LICENSE_SUMMARY)
        try:
            answer = input("Type YES to accept OpenFace's license and download its model files: ")
        except EOFError:
            answer = ""
        if answer.strip() != "YES":
            print(f"torch-clnf: license not accepted, nothing downloaded (for unattended use: --accept-license or "
                  f"{ACCEPT_ENV}=YES)", file=sys.stderr)
            return 1
    files = model_files(args.ceclm)
    size = sum(f.size for f in files) / 1e6
    print(f"{len(files)} files ({size:.0f} MB) into {target}")
    try:
        download_models(target, ceclm=args.ceclm, accept_license=True, mirror=args.mirror, progress=not args.quiet)
    except DownloadError as err:
        print(f"torch-clnf: error: {err}", file=sys.stderr)
        return 1
    unchecked = [f.path for f in files if f.sha256 is None]
    if unchecked:
        print(f"checked by size only (no published SHA-256): {', '.join(unchecked)}")
    where = "" if args.dir is None else f" with --models {target} (or {MODELS_ENV}={target})"
    print(f"done: every file checked; load_model() and the commands find them{where}")
    return 0


COMMANDS = ("compile", "convert", "download-models", "image", "video")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torch-clnf", description="OpenFace CLNF / CE-CLM landmark fitting in PyTorch.")
    commands = parser.add_subparsers(dest="command", required=True)
    conv = commands.add_parser("convert", help="convert an OpenFace model spec and the files it names into the weights cache")
    conv.add_argument("spec", help="main spec, e.g. main_clnf_general.txt (a path, or a name inside --models)")
    conv.add_argument("--models", type=Path, help=f"OpenFace model folder (default: ${MODELS_ENV})")
    conv.add_argument("--cache", type=Path, help="cache folder (default: $TORCH_CLNF_CACHE, a checkout's weights/, or ~/.cache/torch_clnf)")
    conv.add_argument("--force", action="store_true", help="convert again even if an up-to-date conversion is cached")
    conv.set_defaults(run=_convert)

    comp = commands.add_parser("compile", help="compile the fitting loops ahead of time for --compile (AOTInductor "
                               "packages in the weights cache: minutes once, then loaded in milliseconds)")
    comp.add_argument("--model", default="main_clnf_general.txt", help="main spec (default: main_clnf_general.txt)")
    comp.add_argument("--models", type=Path, help=f"OpenFace model folder (default: ${MODELS_ENV})")
    comp.add_argument("--cache", type=Path, help="cache folder (default: $TORCH_CLNF_CACHE, a checkout's weights/, "
                      "or ~/.cache/torch_clnf)")
    comp.add_argument("--device", default="cpu", help="cpu or cuda")
    comp.add_argument("--batch", type=int, nargs="+", default=[1], help="faces per fit to compile for (default: 1, "
                      "one image or one video at a time; each a set of packages: a number of faces without its own "
                      "runs in power-of-two parts, 7 faces as 4, 2 and 1, about a tenth slower)")
    comp.add_argument("--no-parts", action="store_true", help="for fits without the part models")
    comp.add_argument("--no-validator", action="store_true", help="without the detection validator")
    comp.set_defaults(run=_compile)

    down = commands.add_parser("download-models", help="download OpenFace's model files (asks you to accept "
                               "OpenFace's license) from its official sources, checked against their SHA-256")
    down.add_argument("--dir", type=Path, help=f"where to put them (default: ${MODELS_ENV}, else a per-user data "
                      "folder, where the other commands look)")
    down.add_argument("--ceclm", action="store_true", help="also CE-CLM's files (its four CEN expert files: 430 MB)")
    down.add_argument("--accept-license", action="store_true", help="accept OpenFace's license without asking "
                      "(or set TORCH_CLNF_ACCEPT_LICENSE=YES)")
    down.add_argument("--mirror", help="a base URL serving OpenFace's model folder instead of its official sources "
                      "(default: $TORCH_CLNF_MODELS_URL)")
    down.add_argument("--quiet", action="store_true", help="no progress bar")
    down.set_defaults(run=_download)

    image = commands.add_parser("image", help="fit 68 landmarks to faces in images")
    image.add_argument("paths", nargs="+", type=Path, help="image files, or folders of them (every image file in "
                       "a folder, in name order)")
    image.add_argument("--box", type=_box, action="append", help="face box x,y,width,height in pixels: once for all "
                       "images, or once per image in order (default: every face the MTCNN detector finds)")
    image.add_argument("--csv", type=Path, help="write OpenFace-style columns to this CSV file")
    image.add_argument("--draw", type=Path, help="write the image with its landmarks and head-pose axes here "
                       "(a folder for several images)")
    image.add_argument("--batch", type=int, default=16, help="images read and fitted together (default 16; more is "
                       "faster per face and takes more memory; a batch holds at most 33.5 megapixels, each image "
                       "counted at the batch's largest height and width; a larger image is fitted alone)")
    image.add_argument("--single-start", action="store_true", help="fit each face from one start (rotation 0), "
                       "OpenFace's default and the mode checked against its C++, instead of from 11 head rotations "
                       "and the detector's five points (the default: fits tilted and turned faces; 1.4-1.5x the "
                       "time of one start)")
    image.add_argument("--max-faces", type=int, help="keep the K most confident faces of each image (default: all)")
    image.add_argument("--min-confidence", type=float, help="keep the faces whose validator confidence is at least "
                       "this (0-1; default: all; a fit succeeds above 0.725)")
    _model_options(image)
    image.set_defaults(run=_image)

    video = commands.add_parser("video", help="track the face in videos (or image folders): one CSV per video")
    video.add_argument("paths", nargs="+", type=Path, help="video files, folders of videos, or folders of images "
                       "(one image sequence each)")
    video.add_argument("--out", type=Path, help="folder for the CSVs (default: beside each video)")
    video.add_argument("--batch", type=int, default=8, help="videos tracked in lockstep, one batch of faces per frame "
                       "(default 8)")
    video.add_argument("--max-faces", type=int, default=1, help="faces tracked per video (default 1, as OpenFace's "
                       "FeatureExtraction; more: OpenFace's multi-face tracking)")
    video.add_argument("--fit-every", type=int, default=1, help="fit every Nth frame, blending the frames between "
                       "(default 1: every frame; see bench/knobs.py for the accuracy cost)")
    video.add_argument("--draw", action="store_true", help="also write <name>_landmarks.avi with the landmarks and "
                       "head-pose axes drawn")
    video.add_argument("--workers", type=int, help="processes sharing the videos, each tracking its share in "
                       "lockstep on its own CPU core(s) (default: one per CPU core, at most one per video and per 500 "
                       "frames; 1 on a GPU)")
    video.add_argument("--segments", type=int, help="cut each video file (or image folder) into this many "
                       "segments, tracked side by side and written as one CSV in frame order (default: as many as "
                       "keep every stream of every worker busy; 1: from start to end in one stream, as OpenFace)")
    video.add_argument("--warmup", type=int, default=WARMUP, help=f"frames a segment tracks before its first, so "
                       f"that its track has converged to the one before (default {WARMUP})")
    video.add_argument("--force", action="store_true", help="track every video again (default: skip the videos that "
                       "an earlier run with the same options completed, as its torch_clnf_runs.jsonl in the output "
                       "folder records, and track the others from their start)")
    video.add_argument("--ray", nargs="?", const="", metavar="ADDRESS", help="track on a Ray cluster (pip install "
                       "'torch_clnf[ray]'): ADDRESS 'auto' for the cluster running on this machine (ray start), an "
                       "address, or none for a local one; one actor per GPU of the cluster, else per CPU core "
                       "(--workers: that many), each video whole on one; --out must be a folder every node sees")
    video.add_argument("--quiet", action="store_true", help="no progress bar")
    _model_options(video)
    video.set_defaults(run=_video)
    return parser


def _model_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--model", default="main_clnf_general.txt", help="main spec (default: main_clnf_general.txt; "
                         "main_ceclm_general.txt for CE-CLM)")
    command.add_argument("--models", type=Path, help=f"OpenFace model folder (default: ${MODELS_ENV}, else where "
                         "download-models puts them)")
    command.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    command.add_argument("--no-parts", action="store_true", help="skip the hierarchical inner-face and eye models")
    command.add_argument("--threads", type=int, help="torch threads per process (default: chosen per call: one "
                         "for a few faces, more for large batches where cores are free; see torch_clnf.threads)")
    command.add_argument("--compile", action="store_true", help="run the fit from compiled packages: "
                         "2-2.7x faster for one face or video on a CPU; each new shape compiles once, for minutes "
                         "(see `torch-clnf compile`), later runs load it from the weights cache")
    command.add_argument("--capture", action="store_true", help="on CUDA, fit each batch as captured CUDA graphs "
                         "(batches padded to powers of two; see torch_clnf.fitting.capture); no faster elsewhere")
    command.add_argument("--cen-bfloat16", action="store_true", help="CE-CLM: its CEN experts' layers in bfloat16, "
                         "1.3-2x faster on CPUs with AVX512-BF16 or AMX, landmarks some 0.002-0.05 px from "
                         "float32's (docs/speed.md)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-") and Path(argv[0]).is_dir():
        argv = ["video"] + argv                          # `torch-clnf FOLDER`: every video in it
    args = build_parser().parse_args(_joined_box_values(argv))
    # FFmpeg's own messages would break through the progress bar: the damage they report is in
    # the summaries (set OPENCV_FFMPEG_LOGLEVEL=16 to see them)
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    show = warnings.showwarning
    warnings.showwarning = lambda message, *rest, **kw: print(f"torch-clnf: warning: {message}", file=sys.stderr)
    try:
        return args.run(args)
    except UsageError as err:
        print(f"torch-clnf: error: {err}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print("torch-clnf: interrupted", file=sys.stderr)
        return INTERRUPTED
    except ValueError as err:
        from .openface import ModelFileError

        if not isinstance(err, ModelFileError):
            raise
        print(f"torch-clnf: error: {err}", file=sys.stderr)
        return USAGE
    finally:
        warnings.showwarning = show


if __name__ == "__main__":
    sys.exit(main())
