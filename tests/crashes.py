"""A model loader for worker-process tests: in the worker process named ``torch-clnf worker 1`` the
model's process dies (``os._exit``) at its ``after``-th tracking call, as a process killed by the
system would; elsewhere it is the usual model. Importable by spawned workers (tests/ is on their path)."""
from __future__ import annotations

import multiprocessing
import os

import torch_clnf


def dying_worker_model(spec: str, models, after: int, **options) -> torch_clnf.LandmarkModel:
    model = torch_clnf.load_model(spec, models, **options)
    if multiprocessing.current_process().name != "torch-clnf worker 1":
        return model
    track, calls = model.track, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) >= after:
            os._exit(9)
        return track(*args, **kwargs)

    model.track = dying
    return model


def failing_worker_model(spec: str, models, **options) -> torch_clnf.LandmarkModel:
    """The usual model, except in a worker process, where loading it fails."""
    if multiprocessing.current_process().name.startswith("torch-clnf worker"):
        raise FileNotFoundError("no model in a worker")
    return torch_clnf.load_model(spec, models, **options)

