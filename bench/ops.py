"""Tensor operations per fit: the per-operation overhead that bounds one face and one video.

    python bench/ops.py [--models DIR] [--names 12]

Counts every ATen call (views too: they cost dispatcher time as well) of a one-face CLNF fit from
a box (single start, parts and validator), one tracked frame, an 8-face fit and a CE-CLM one-face fit (small
synthetic CEN files: the count does not depend on the layers' sizes), in total, by stage and by
operation name. Counts are deterministic: a noise-free proxy for the time of small batches, which
tests/test_operation_counts.py holds under a budget.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import torch_clnf

SHARED = Path(__file__).resolve().parents[2] / "shared"

# (module, attribute, stage): the functions whose operations are counted to a stage (the innermost wins)
STAGES = [
    ("torch_clnf.fitting.fitter", "sample_areas", "sampling"),
    ("torch_clnf.fitting.fitter", "align_similarity", "sampling"),
    ("torch_clnf.models.ccnf", "CCNFExperts.forward", "experts"),
    ("torch_clnf.models.cen", "CENExperts.forward", "experts"),
    ("torch_clnf.fitting.rlms", "nu_rlms", "NU-RLMS"),
    ("torch_clnf.models.pdm", "PointDistributionModel.params_from_landmarks", "CalcParams"),
    ("torch_clnf.fitting.fitter", "ModelFitter.refine_parts", "parts (set-up, write-back)"),
    ("torch_clnf.detect.validator", "DetectionValidator.score", "validator"),
    ("torch_clnf.models.compiling", "_launch", "inside compiled packages"),
]


class OpCounter(TorchDispatchMode):
    """Counts ATen calls by name and by the stage being run (:data:`STAGES`)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.by_name: collections.Counter = collections.Counter()
        self.by_stage: collections.Counter = collections.Counter()
        self.stage: list[str] = ["other (images, start, result)"]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.total += 1
        self.by_name[str(func.overloadpacket).removeprefix("aten.")] += 1
        self.by_stage[self.stage[-1]] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def staged(counter: OpCounter) -> Iterator[None]:
    """While counting, each function of :data:`STAGES` pushes its stage (NU-RLMS by phase kind)."""
    import importlib

    undo = []
    for module_name, attribute, stage in STAGES:
        module = importlib.import_module(module_name)
        owner, name = (module, attribute) if "." not in attribute else (getattr(module, attribute.split(".")[0]),
                                                                         attribute.split(".")[1])
        original = getattr(owner, name)

        def wrapped(*args, _original: Callable = original, _stage: str = stage, **kwargs):
            if _stage == "NU-RLMS":
                rigid = args[4] if len(args) > 4 else kwargs.get("rigid")
                _stage = f"NU-RLMS {'rigid' if rigid else 'non-rigid'}"
            counter.stage.append(_stage)
            try:
                return _original(*args, **kwargs)
            finally:
                counter.stage.pop()

        setattr(owner, name, wrapped)
        undo.append((owner, name, original))
    try:
        with counter:
            yield
    finally:
        for owner, name, original in undo:
            setattr(owner, name, original)


def count(call: Callable[[], object]) -> OpCounter:
    counter = OpCounter()
    with staged(counter):
        call()
    return counter


def report(title: str, counter: OpCounter, names: int) -> None:
    print(f"\n## {title}: {counter.total:,} operations\n")
    print("| stage | operations |\n|---|---|")
    for stage, n in counter.by_stage.most_common():
        print(f"| {stage} | {n:,} |")
    print("\nmost frequent: " + ", ".join(f"{name} {n}" for name, n in counter.by_name.most_common(names)))


def workloads(models: Path, compile: bool = False, only: str = "") -> dict[str, Callable[[], object]]:
    """The counted calls, each warmed up once (first-use set-up is not counted); ``compile``: with
    ``FitConfig(compile=True)`` (the packages' fused kernels are not ATen operations; what they call
    into ATen, their matrix products and Cholesky factorisations, counts as "inside compiled packages");
    ``only``: the workloads whose title contains it."""
    config = torch_clnf.FitConfig(compile=compile)
    row = next(csv.DictReader(open(SHARED / "reference/openface_cpp/images_default.csv")))
    image = cv2.imread(str(SHARED / "media" / row["file_or_frame"]))
    box = np.array([[float(row[k]) for k in ("box_x", "box_y", "box_w", "box_h")]], np.float32)
    model = torch_clnf.load_model(models=models, config=config)
    result = model.fit([image], box, multi_view=False)
    calls = {"one face, fit from a box (CLNF, parts, validator)": lambda: model.fit([image], box, multi_view=False),
             "one tracked frame": lambda: model.track([image], result),
             "8 faces, fit from boxes": lambda: model.fit([image], np.repeat(box, 8, 0), image_index=[0] * 8,
                                                          multi_view=False)}
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from openface_files import write_cen_file

    folder = Path(tempfile.mkdtemp())
    for item in models.iterdir():
        if item.name not in ("patch_experts", "early_term_cen_of.txt"):
            (folder / item.name).symlink_to(item)
    (folder / "patch_experts").mkdir()
    for k, scale in enumerate(("0.25", "0.35", "0.50", "1.00")):           # 3 views, as tests/test_ceclm.py
        write_cen_file(folder / "patch_experts" / f"cen_patches_{scale}_of.dat", hidden=(24, 12), scale=float(scale),
                       seed=k)
    (folder / "early_term_cen_of.txt").write_text("1 1 1\n0 0 0\n-1 -1 -1\n")
    ceclm = torch_clnf.load_model("main_ceclm_general.txt", models=folder, cache=folder / "cache", config=config)
    calls["one face, fit from a box (CE-CLM)"] = lambda: ceclm.fit([image], box, multi_view=False)
    calls = {title: call for title, call in calls.items() if only in title}
    for call in calls.values():
        call()
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=Path(os.environ.get("TORCH_CLNF_MODELS", SHARED / "openface-models")))
    parser.add_argument("--names", type=int, default=12, help="operation names listed per workload")
    parser.add_argument("--compile", action="store_true", help="fits with FitConfig(compile=True): the operations "
                        "issued around the compiled packages and those the packages call into ATen (the first run "
                        "compiles them)")
    parser.add_argument("--only", default="", help="the workloads whose title contains this, e.g. 'one face'")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for title, call in workloads(args.models, args.compile, args.only).items():
        report(title, count(call), args.names)


if __name__ == "__main__":
    main()
