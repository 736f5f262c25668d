"""How many torch threads a call gets: chosen from its work and from the cores other processes leave free.

A fit is thousands of small tensor operations, and torch's threads meet at the end of each one.
For a few faces that costs more than it saves, and on a machine where another process keeps a
core busy, a thread waiting for that core stalls the others at every operation: on a 2-core
machine with one core busy, a CE-CLM fit of one face took 208 ms with one thread and 3,957 ms with
torch's default of two. So, unless told otherwise, each call of the model runs on

- one thread for a fit of fewer than 2 · :data:`FACES_PER_THREAD` faces (tracking, single
  images; a CE-CLM face counts as :data:`CEN_FACE_WORK`) and for face detection in less than
  2 · :data:`PIXELS_PER_THREAD` pixels;
- else a thread per :data:`FACES_PER_THREAD` faces (or :data:`PIXELS_PER_THREAD` pixels), at
  most the cores that other processes leave free (measured from ``/proc/stat`` over the last half
  second), at most :func:`limit_threads`'s limit (worker processes share the free cores);

and torch's own setting is restored afterwards. An explicit count (``load_model(threads=N)``,
``--threads N``, or ``OMP_NUM_THREADS`` / ``TORCH_CLNF_THREADS`` in the environment) is used as given.
"""
from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from typing import Iterator

import torch

# measured on 2 idle cores, 1 against 2 threads: fits of 1 face 1.04x, 4 faces 1.14x, 8 faces
# 1.18-1.3x, 64 faces 1.3x faster with two; MTCNN on a 640x480 frame 1.07x, on 3.8 megapixels 1.6x
FACES_PER_THREAD = 4
PIXELS_PER_THREAD = 1_000_000
# a CE-CLM face counts as this many CLNF faces: its CEN experts are large matrix products (one
# face: 116 ms on one thread, 73 on two; 8 faces 1.5x faster on two)
CEN_FACE_WORK = 8
THREADS_ENV = "TORCH_CLNF_THREADS"
SAMPLE_SECONDS = 0.5          # how old a measurement of the free cores may be
SHORTEST_INTERVAL = 0.1       # seconds a measurement of the free cores spans at least
BUSY_SHARE = 0.2              # a core that other processes use more than this is not free

_limit: int | None = None


def explicit_threads() -> int | None:
    """The thread count the environment asks for (``TORCH_CLNF_THREADS``, else ``OMP_NUM_THREADS``), or None."""
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def limit_threads(count: int | None) -> None:
    """At most ``count`` threads per call in this process from now on (None: no limit); worker
    processes that share a machine's cores set it."""
    global _limit
    _limit = count


def allowed_cores() -> int:
    """The cores this process may run on: its CPU affinity, and a container's CPU quota (cgroup v2 or v1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cores, math.ceil(quota)) if quota else cores)


def _cgroup_quota() -> float | None:
    """CPUs a cgroup quota allows (e.g. 1.5), or None without one."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read())
        period = int(open("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


class CoreMeter:
    """Cores that other processes leave free: the busy time of this process's CPUs (``/proc/stat``)
    minus this process's own CPU time, over the interval since the last measurement.

    Where ``/proc/stat`` does not exist (macOS) the load average stands in for the busy time, and
    where neither does (Windows) every allowed core counts as free.
    """

    def __init__(self) -> None:
        self._start()

    def _start(self) -> None:
        """Begin the first interval now (torch_clnf's meter: at import), so that a process's first
        call, after loading its model, rarely waits for it."""
        self._last: tuple[float, float | None, float] = _sample()   # (wall s, busy CPU s or None, own CPU s)
        self._free: int | None = None
        self._pid = os.getpid()

    def free(self) -> int:
        """Cores free for this process now (at least 1), from a measurement at most
        :data:`SAMPLE_SECONDS` old, over at least :data:`SHORTEST_INTERVAL` (the first call
        waits for what is left of it since the meter was made)."""
        if self._pid != os.getpid():        # a forked child: its own CPU time counts from 0, start again
            self._start()
        if self._free is not None and time.monotonic() - self._last[0] < SAMPLE_SECONDS:
            return self._free
        if self._free is None:
            time.sleep(max(0.0, SHORTEST_INTERVAL - (time.monotonic() - self._last[0])))
        now = _sample()
        wall, own = now[0] - self._last[0], now[2] - self._last[2]
        if now[1] is not None and self._last[1] is not None:
            busy = (now[1] - self._last[1]) / max(wall, 1e-3)
        else:
            busy = _load_average()
        self._last = now
        if busy is None:
            self._free = allowed_cores()
        else:
            others = max(0.0, busy - own / max(wall, 1e-3))                 # cores other processes keep busy
            cpus = len(_cpus())
            self._free = max(1, min(allowed_cores(), cpus - max(0, math.ceil(others - BUSY_SHARE))))
        return self._free


def _cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def _sample() -> tuple[float, float | None, float]:
    """(wall s, busy CPU s of this process's CPUs since boot or None without /proc/stat, this process's CPU s)."""
    times = os.times()
    own = times.user + times.system
    try:
        with open("/proc/stat") as stat:
            lines = stat.read().splitlines()
    except OSError:
        return time.monotonic(), None, own
    cpus, busy = _cpus(), 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            values = [int(v) for v in fields[:8]]
            busy += sum(values) - values[3] - values[4]                      # all but idle and iowait
    return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), own


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


_meter = CoreMeter()


def free_cores() -> int:
    """Cores that other processes leave free for this one (at least 1)."""
    return _meter.free()


def threads_for(faces: int = 0, pixels: int = 0) -> int:
    """Threads for a fit of ``faces`` faces, or a face detection in ``pixels`` pixels (module docstring)."""
    work = max(faces // FACES_PER_THREAD, pixels // PIXELS_PER_THREAD)
    if work < 2:
        return 1
    count = min(work, free_cores())
    return max(1, min(count, _limit) if _limit else count)


def call_threads(requested: int | None, faces: int = 0, pixels: int = 0) -> int | None:
    """The threads a model call runs on: ``requested`` where given; None (torch's setting as it
    is) where the environment sets them (:func:`explicit_threads`); else :func:`threads_for`."""
    if requested:
        return requested
    if explicit_threads() is not None:
        return None
    return threads_for(faces, pixels)


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` within the block and restored after (None: unchanged)."""
    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
