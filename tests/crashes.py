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


def hooked_model(spec: str, models, count: str | None = None, die_after: int | None = None,
                 marker: str | None = None, poison: tuple[int, int] | None = None, pause: float = 0.0,
                 **options) -> torch_clnf.LandmarkModel:
    """A model loader for Ray actor tests: the usual model, whose process

    - appends the number of frames of each lockstep it fits to the file ``count`` (one line each;
      the tracker prepares each lockstep's frames once, as a list);
    - dies (``os._exit``) at its ``die_after``-th lockstep, if it is the first actor to create
      the file ``marker`` (one actor dies, the others and its replacements live);
    - dies whenever a frame of height × width ``poison`` comes to it (a video that kills any actor);
    - sleeps ``pause`` seconds before each lockstep (a floor on how fast a video can end).

    Outside a Ray actor (the driver loads it too, to learn the model's name) it never dies.
    """
    import time

    import ray

    model = torch_clnf.load_model(spec, models, **options)
    if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return model
    if die_after is not None:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            die_after = None
    prepare, steps = model.prepare, []

    def hooked(images):
        if not isinstance(images, list):                 # a batch prepared already (model.track's own call)
            return prepare(images)
        steps.append(1)
        time.sleep(pause)
        if die_after is not None and len(steps) >= die_after:
            os._exit(9)
        if poison is not None and any(getattr(image, "shape", (0, 0))[:2] == tuple(poison) for image in images):
            os._exit(9)
        if count is not None:
            line = os.open(count, os.O_CREAT | os.O_APPEND | os.O_WRONLY)
            os.write(line, f"{len(images)}\n".encode())
            os.close(line)
        return prepare(images)

    model.prepare = hooked
    return model
