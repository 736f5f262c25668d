"""Which head-rotation hypothesis to complete: the first scale's ranking against the full search's.

    python bench/hypotheses.py [--models DIR] [--angles 0 30 -30 45 -45] [--dtype float32|float64]

Every face MTCNN finds in ../shared/media/sample1–6.jpg, each image also turned in the plane by
the given angles (degrees, counter-clockwise; a canvas that holds the whole image). Each face's
11 hypotheses (CLNF general model, no part models) are fitted at the first scale, and, apart,
over all scales (OpenFace's basic search). Per face: the hypothesis of highest likelihood after
the first scale ("first") and after the last ("full"), the full fits of the two compared (max
px between their landmarks: 0 where they are the same hypothesis; small where two hypotheses
reach the same fit), and the full search's margin: its winner's likelihood minus that of the best
hypothesis whose full fit is another one (more than 1 px away from the winner's anywhere). Then
whole fits (part models, validator) per face: single start, the default (fitting.hypotheses: the
first scale's most likely, or the frontal one where nearly as likely, completed; the next where
the validator rejects it), the default as a detected face gets it (with the detector's start from
its five points: "+points") and every hypothesis completed, with their validator confidence and
the max px between the default's landmarks and the full search's; and how often completing the
2 or 3 hypotheses most likely after the first scale would choose the full search's winner.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import cv2
import torch

import torch_clnf
from torch_clnf.fitting import ROTATION_HYPOTHESES

from timing import SHARED

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from rotated import rotated  # noqa: E402

DISTINCT = 1.0          # px: two full fits further apart than this anywhere are different fits
SAME = 0.45             # px: whole fits this close everywhere are the same fit (float32 rounding, tests/tolerances.py)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path(os.environ.get("TORCH_CLNF_MODELS", SHARED / "openface-models")))
    parser.add_argument("--angles", type=float, nargs="+", default=[0, 30, -30, 45, -45])
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    model = torch_clnf.load_model("main_clnf_general.txt", args.models, dtype=dtype, threads=1)
    fitter = model.fitter
    windows = model.config.window_sizes
    first_windows = windows[:1] + (0,) * (len(windows) - 1)
    hypotheses = torch.tensor(ROTATION_HYPOTHESES, dtype=dtype)
    h = len(hypotheses)
    full_search = dataclasses.replace(model.config, hypotheses_completed=h)
    print(f"# CLNF general, {args.dtype}; likelihoods are OpenFace's (higher is better); conf: validator "
          f"confidence of the whole fit (success above 0.725)")
    print(f"{'image':12} {'angle':>5} {'face':>4} {'first':>5} {'full':>5} {'px':>6} {'margin':>7} "
          f"{'top2':>4} {'top3':>4} {'single':>6} {'default':>7} {'+points':>7} {'all 11':>6} {'default-all px':>14}")
    tally = dict.fromkeys(["faces", "same", "same fit", "top2", "top3", "default = all", "single", "default",
                           "+points", "all 11"], 0)
    rows = []
    for path in sorted((SHARED / "media").glob("sample*.jpg")):
        original = cv2.imread(str(path))
        for angle in args.angles:
            image = rotated(original, angle)[0] if angle else original
            batch = model.prepare([image])
            detections = model.detect(batch)[0]
            for k, box in enumerate(detections.boxes):
                g = fitter.pdm.params_from_box(box[None].repeat(h, 1).to(dtype), hypotheses)
                index = torch.zeros(h, dtype=torch.long)
                local = g.new_zeros(h, fitter.pdm.num_modes)
                with torch.inference_mode():
                    first = fitter.fit(batch.padded, index, g, local, first_windows, parts=False)
                    full = fitter.fit(batch.padded, index, g, local, windows, parts=False)
                first_l = torch.where(first.success, first.likelihood, -torch.inf)
                full_l = torch.where(full.success, full.likelihood, -torch.inf)
                ranked = first_l.sort(descending=True, stable=True).indices
                by_first, by_full = int(ranked[0]), int(full_l.argmax())
                apart = (full.landmarks - full.landmarks[by_full]).norm(dim=-1).amax(-1)     # (H,) px
                other = torch.where(apart > DISTINCT, full_l, -torch.inf).max()
                margin = float(full_l[by_full] - other)
                top = [int(ranked[:n][full_l[ranked[:n]].argmax()]) for n in (2, 3)]
                single = model.fit(batch, box[None], multi_view=False)
                default = model.fit(batch, box[None])
                detected = model.fit(batch, box[None], points=detections.points[k:k + 1])
                config, model.fitter.config = model.fitter.config, full_search
                try:
                    every = model.fit(batch, box[None])
                finally:
                    model.fitter.config = config
                gap = float((default.landmarks - every.landmarks).norm(dim=-1).max())
                tally["faces"] += 1
                tally["same"] += by_first == by_full
                tally["same fit"] += float(apart[by_first]) <= DISTINCT
                tally["top2"] += top[0] == by_full or float(apart[top[0]]) <= DISTINCT
                tally["top3"] += top[1] == by_full or float(apart[top[1]]) <= DISTINCT
                tally["default = all"] += gap <= SAME
                for name, result in (("single", single), ("default", default), ("+points", detected), ("all 11", every)):
                    tally[name] += bool(result.success[0])
                confidences = [f"{float(r.confidence[0]):.2f}{'' if bool(r.success[0]) else '!'}"
                               for r in (single, default, detected, every)]
                print(f"{path.name:12} {angle:5.0f} {k:4d} {by_first:5d} {by_full:5d} {float(apart[by_first]):6.2f} "
                      f"{margin:7.2f} {top[0]:4d} {top[1]:4d} {confidences[0]:>6} {confidences[1]:>7} "
                      f"{confidences[2]:>7} {confidences[3]:>6} {gap:14.3f}", flush=True)
                rows.append((margin, gap <= SAME))
    faces = tally["faces"]
    print(f"# {faces} faces ('!': the validator fails the fit). The first scale's most likely hypothesis is the "
          f"full search's winner on {tally['same']} (reaches its fit: {tally['same fit']}); the full search's "
          f"winner is among the 2 most likely on {tally['top2']}, the 3 most likely on {tally['top3']}")
    print(f"# validator success: single start {tally['single']}, default {tally['default']}, with the detector's "
          f"start {tally['+points']}, all 11 completed "
          f"{tally['all 11']}; the default's landmarks equal the full search's (within {SAME} px) on "
          f"{tally['default = all']}")
    missed = sorted(m for m, same in rows if not same)
    print(f"# the full search's margin where the default's fit is another: {', '.join(f'{m:.2f}' for m in missed) or 'none'}")


if __name__ == "__main__":
    sys.exit(main())
