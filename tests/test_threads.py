"""torch threads chosen per call: one for a few faces, more only for large work and free cores."""
import pytest
import torch

import torch_clnf
from torch_clnf import threads


@pytest.fixture
def auto(monkeypatch):
    """No thread count from the environment: the choice is torch_clnf's."""
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_limit", None)


def test_a_few_faces_take_one_thread_and_large_work_the_free_cores(auto, monkeypatch):
    monkeypatch.setattr(threads, "free_cores", lambda: 3)
    assert [threads.threads_for(faces=n) for n in (1, 4, 7, 8, 12, 64)] == [1, 1, 1, 2, 3, 3]
    assert threads.threads_for(pixels=640 * 480) == 1 and threads.threads_for(pixels=4_000_000) == 3
    monkeypatch.setattr(threads, "free_cores", lambda: 1)              # another process keeps the other cores busy
    assert threads.threads_for(faces=64) == 1
    monkeypatch.setattr(threads, "free_cores", lambda: 8)
    threads.limit_threads(2)                                           # a worker process's share
    assert threads.threads_for(faces=64) == 2


def test_explicit_counts_win(auto, monkeypatch):
    assert threads.call_threads(3, faces=1) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.call_threads(None, faces=64) is None                 # torch's own setting, from the variable
    monkeypatch.setenv(threads.THREADS_ENV, "5")
    assert threads.explicit_threads() == 5


def test_free_cores_are_the_cores_others_leave(auto, monkeypatch):
    """From /proc/stat's busy time minus this process's own: 1.5 cores busy elsewhere on 4 → 2 free."""
    assert 1 <= threads.free_cores() <= threads.allowed_cores()
    samples = iter([(0.0, 100.0, 10.0), (1.0, 102.0, 10.5)])            # (wall, busy CPU s, own CPU s)
    monkeypatch.setattr(threads, "_sample", lambda: next(samples))
    meter = threads.CoreMeter()
    monkeypatch.setattr(threads, "_cpus", lambda: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "allowed_cores", lambda: 4)
    monkeypatch.setattr(threads.time, "sleep", lambda seconds: None)
    assert meter.free() == 2
    # a forked child measures afresh, its own CPU time counting from 0 (1 core busy, half of it its
    # own: 3 free; against the parent's last sample, its own time would seem negative: 1 free)
    samples = iter([(5.0, 110.0, 0.0), (6.0, 111.0, 0.5)])
    monkeypatch.setattr(threads.os, "getpid", lambda: -1)
    assert meter.free() == 3


def test_a_model_call_sets_its_threads_and_restores_torchs(auto, models_dir, media_dir, tmp_path, monkeypatch):
    model = torch_clnf.load_model(models=models_dir, cache=tmp_path, detector=False)
    seen = []
    fit = model.fitter.fit

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return fit(*args, **kwargs)

    monkeypatch.setattr(model.fitter, "fit", recording)
    monkeypatch.setattr(threads, "free_cores", lambda: 2)
    before = torch.get_num_threads()
    box = torch.tensor([[110.0, 110.0, 180.0, 170.0]])
    model.fit([media_dir / "sample1.jpg"], box, multi_view=False)
    model.fit([media_dir / "sample1.jpg"], box.repeat(8, 1), image_index=[0] * 8, multi_view=False)
    model.threads = 1
    model.fit([media_dir / "sample1.jpg"], box.repeat(8, 1), image_index=[0] * 8, multi_view=False)
    assert seen == [1, 2, 1] and torch.get_num_threads() == before
