"""The compiled packages' folder: packages of another environment (older sources, another torch or
CPU) are pruned once unused for a while, this environment's are kept, a loaded package counts as
used, and nothing but the packages' own files is ever removed."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from torch_clnf.models import compiling

DAY = 86400.0


def _file(folder: Path, name: str, age_days: float) -> Path:
    path = folder / name
    path.write_bytes(b"x" * 100)
    stamp = time.time() - age_days * DAY
    os.utime(path, (stamp, stamp))
    return path


def test_prune_removes_other_environments_unused_packages_only(tmp_path):
    ours = compiling._environment_tag()
    other = "0" * 8 if ours != "0" * 8 else "1" * 8
    digest = "a" * 32
    kept = [
        _file(tmp_path, f"fit_ccnf_scales-{ours}-{digest}.pt2", 400),           # this environment: never pruned
        _file(tmp_path, f"fit_ccnf_scales-{other}-{digest}.pt2", 3),            # another, recently used
        _file(tmp_path, "tmpab12cd_x.pt2", 0.5),                                # a compile under way
        _file(tmp_path, "my_model.pt2", 400),                                   # not a package's name
        _file(tmp_path, f"notes-{other}-{digest}.txt", 400),
    ]
    removed = [
        _file(tmp_path, f"refit_parts_jointly-{other}-{digest}.pt2", 20),
        _file(tmp_path, f"calc_params-{digest}.pt2", 20),                       # the untagged names of before
        _file(tmp_path, "tmpzz91k2aa.pt2", 2),                                  # a killed compile's partial file
    ]
    assert compiling.prune_packages(tmp_path) == (3, 300)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in removed)
    assert compiling.prune_packages(tmp_path / "missing") == (0, 0)


def test_a_loaded_package_counts_as_used(tmp_path, monkeypatch):
    """Loading a package from disk sets its time: a package in use is never the oldest."""
    monkeypatch.setattr(compiling, "_runners", {})
    monkeypatch.setattr(compiling, "_directory", tmp_path)

    def doubled(x):
        return (2 * x,)

    x = torch.ones(3)
    template, tensors, modules, signature = ("tuple", tuple, [None]), [x], [], ["tensor (3,) float32"]
    path = compiling._package_path(doubled, signature)
    assert path.parent == tmp_path and compiling._PACKAGE_NAME.fullmatch(path.name)
    _file(tmp_path, path.name, 30)
    monkeypatch.setattr(compiling, "_load", lambda p: lambda inputs: [2 * inputs[0]])
    runner = compiling._runner(doubled, template, tensors, modules, signature, {})
    assert torch.equal(runner([x])[0], 2 * x)
    assert time.time() - path.stat().st_mtime < 60


def test_prepare_runs_only_before_a_package_is_compiled(tmp_path, monkeypatch):
    """``prepare`` makes what a package keeps as constants: once, before compiling; a loaded
    package (this process or a later one) does not need it."""
    prepared, compiled = [], []

    def compile_fake(call, tensors, path, dims):
        compiled.append(len(prepared))                     # prepared before it was compiled
        path.write_bytes(b"package")

    monkeypatch.setattr(compiling, "_runners", {})
    monkeypatch.setattr(compiling, "_directory", tmp_path)
    monkeypatch.setattr(compiling, "_compile", compile_fake)
    monkeypatch.setattr(compiling, "_load", lambda path: lambda inputs: [inputs[0] * 3])

    def tripled(x, factor):
        return (x * factor,)

    run = compiling.compiled_function(tripled, prepare=lambda x, factor: prepared.append(factor))
    x = torch.ones(2)
    with pytest.warns(compiling.CompilingWarning):
        assert torch.equal(run(x, 3)[0], 3 * x)
    assert torch.equal(run(x, 3)[0], 3 * x)
    monkeypatch.setattr(compiling, "_runners", {})          # a new process: loaded from the folder
    assert torch.equal(run(x, 3)[0], 3 * x)
    assert prepared == [3] and compiled == [1]


def test_a_batch_runs_whole_where_its_package_is_made(tmp_path, monkeypatch):
    """``has_package`` says whether a call's package is loaded or on disk (a new process finds
    the file), without compiling; ``batch_parts`` then keeps the batch whole, else cuts a number of
    faces that is not a power of two into power-of-two parts."""
    monkeypatch.setattr(compiling, "_runners", {})
    monkeypatch.setattr(compiling, "_compile", lambda call, tensors, path, dims: path.write_bytes(b"package"))
    monkeypatch.setattr(compiling, "_load", lambda path: lambda tensors: (tensors[0] * 3,))
    compiling.set_package_dir(tmp_path)
    try:
        def tripled(x):
            return (x * 3,)

        run = compiling.compiled_function(tripled)
        assert not run.has_package(torch.ones(7, 2)) and not list(tmp_path.iterdir())
        with pytest.warns(compiling.CompilingWarning):
            run(torch.ones(7, 2))
        assert run.has_package(torch.zeros(7, 2)) and not run.has_package(torch.zeros(6, 2))
        monkeypatch.setattr(compiling, "_runners", {})                     # a new process: the file on disk
        assert run.has_package(torch.zeros(7, 2))
        assert compiling.batch_parts(7, lambda: run.has_package(torch.zeros(7, 2))) == [7]
        assert compiling.batch_parts(6, lambda: run.has_package(torch.zeros(6, 2))) == [4, 2]
    finally:
        compiling.set_package_dir(None)
    assert compiling.batch_parts(11) == [8, 2, 1] and compiling.batch_parts(8) == [8]
    assert compiling.batch_parts(1) == [1] and compiling.batch_parts(0) == [0]
    assert compiling.consecutive_slices([4, 2, 1]) == [slice(0, 4), slice(4, 6), slice(6, 7)]
    with compiling.exact_batches():
        assert compiling.batch_parts(11) == [11]
    assert compiling.batch_parts(11) == [8, 2, 1]
