"""FitConfig(compile=True): response maps, NU-RLMS phases and CalcParams from AOTInductor packages
give the eager fit's landmarks, packages kept in the cache are loaded instead of compiled again (also
for images of another size), and a compilation failure falls back to eager iterations with a warning.

Compiled against eager is checked in float64: TorchInductor's fused kernels round differently
from ATen's, and in float32 such differences cross the fit's discontinuities (see
tests/tolerances.py); in float64 they do not, so the two must agree to 1e-6 px on every CPU."""
from __future__ import annotations

from pathlib import Path

import cv2
import pytest
import torch

import torch_clnf
from reference import boxes, rows
from torch_clnf.fitting import FitConfig, PartConfig
from torch_clnf.models import compiling

# one scale, no parts: three packages (the responses, the rigid and non-rigid phases) to compile, a minute or two
CONFIG = dict(window_sizes=(11, 0, 0, 0), refine_hierarchical=False, validate=False)


@pytest.fixture(scope="module")
def sample(media_dir, reference_dir):
    """Two reference images (sample1, sample2), grey, and their recorded boxes."""
    records = rows(reference_dir / "openface_cpp/images_default.csv")[:2]
    images = [cv2.imread(str(media_dir / r["file_or_frame"]), cv2.IMREAD_GRAYSCALE) for r in records]
    return images, boxes(records)


@pytest.mark.parity             # (again with other CPU kernels: packages are named per vector instruction set)
def test_compiled_iterations_match_eager(models_dir, sample, tmp_path, monkeypatch):
    monkeypatch.setattr(compiling, "_runners", {})
    images, face_boxes = sample
    eager = torch_clnf.load_model(models=models_dir, cache=tmp_path, config=FitConfig(**CONFIG), detector=False,
                                  dtype=torch.float64)
    fast = torch_clnf.load_model(models=models_dir, cache=tmp_path, config=FitConfig(compile=True, **CONFIG),
                                 detector=False, dtype=torch.float64)
    expected = eager.fit(images, face_boxes, multi_view=False)
    with pytest.warns(compiling.CompilingWarning, match="compiling the fit's loops for a new shape, once"):
        found = fast.fit(images, face_boxes, multi_view=False)
    assert not compiling._broken
    assert (found.landmarks - expected.landmarks).norm(dim=-1).max() < 1e-6
    assert torch.equal(found.success, expected.success)
    packages = [p.name.split("-")[0] for p in (tmp_path / "compiled").iterdir()]
    assert packages == ["fit_ccnf_scales"]                          # the main fit: one package

    # a new process: the packages are loaded from the cache, nothing is compiled
    monkeypatch.setattr(compiling, "_runners", {})
    monkeypatch.setattr(compiling, "_compile", lambda *args: pytest.fail("compiled again"))
    loaded = fast.fit(images, face_boxes, multi_view=False)
    assert torch.equal(loaded.landmarks, found.landmarks)

    # images of another size: the same packages (their height and width are variables)
    cropped = [image[: image.shape[0] - 7, : image.shape[1] - 12] for image in images]
    found = fast.fit(cropped, face_boxes, multi_view=False)
    expected = eager.fit(cropped, face_boxes, multi_view=False)
    assert (found.landmarks - expected.landmarks).norm(dim=-1).max() < 1e-6


def test_compiled_parts_match_eager(models_dir, sample, tmp_path, monkeypatch):
    """The parts' refit as one package: their CalcParams (a loop in the graph), their rounds
    (stacked eyes: one set of tables for both members' views; padded frames, per-face sigma), the
    face's CalcParams; and the validator's warp."""
    monkeypatch.setattr(compiling, "_runners", {})
    images, face_boxes = sample
    config = dict(CONFIG, refine_hierarchical=True, validate=True)
    eager = torch_clnf.load_model(models=models_dir, cache=tmp_path, config=FitConfig(**config), dtype=torch.float64)
    fast = torch_clnf.load_model(models=models_dir, cache=tmp_path, config=FitConfig(compile=True, **config),
                                 dtype=torch.float64)
    expected = eager.fit(images[:1], face_boxes[:1], multi_view=False)
    with pytest.warns(compiling.CompilingWarning):
        found = fast.fit(images[:1], face_boxes[:1], multi_view=False)
    assert not compiling._broken
    assert (found.landmarks - expected.landmarks).norm(dim=-1).max() < 1e-6
    assert torch.equal(found.confidence, expected.confidence) and bool(found.success.all())
    packages = {p.name.split("-")[0] for p in (tmp_path / "compiled").iterdir()}
    assert packages == {"fit_ccnf_scales", "refit_parts_jointly", "warped_features"}


def test_the_parts_settings_name_their_package(models_dir, sample, tmp_path, monkeypatch):
    """The parts' refit reads the parts' configs inside its package: another part setting is
    another package, never the first one's (run uncompiled here, the names recorded)."""
    names = []

    def eager(function, template, tensors, modules, signature, dims, prepare=None):
        if function.__name__ == "refit_parts_jointly":
            names.append("\n".join(signature))
        return lambda inputs: tuple(function(*compiling._rebuild(template, inputs, modules)))

    monkeypatch.setattr(compiling, "_runner", eager)
    images, face_boxes = sample
    for sigma in (1.75, 2.0):
        parts = dict(FitConfig().parts, inner=PartConfig((9,), reg_factor=2.5, sigma=sigma, weight_factor=2.5))
        config = FitConfig(compile=True, **dict(CONFIG, refine_hierarchical=True), parts=parts)
        model = torch_clnf.load_model(models=models_dir, cache=tmp_path, config=config, detector=False)
        model.fit(images[:1], face_boxes[:1], multi_view=False)
    assert len(names) == 2 and names[0] != names[1]


def test_a_batch_is_fitted_in_power_of_two_parts(models_dir, sample, tmp_path, monkeypatch):
    """Packages are made per number of faces, so three faces, whose package is not made, are fitted
    as two and one, each part with its faces' images only (the first part's two are not neighbours
    in the batch: gathered), by the main fit, the parts' refit and the validator's warp alike; the
    landmarks and confidences are those of one eager fit of all three (float64; run uncompiled here,
    the calls recorded). Within ``exact_batches`` (``torch-clnf compile``) the three are one batch."""
    calls = []

    def eager(function, template, tensors, modules, signature, dims, prepare=None):
        def run(inputs):
            args = compiling._rebuild(template, inputs, modules)
            if function.__name__ == "fit_ccnf_scales":
                calls.append((function.__name__, args[1].shape[0], args[3].shape[0]))   # (images, faces)
            elif function.__name__ == "_warped_features":
                calls.append((function.__name__, args[3].shape[0]))                    # (faces)
            return tuple(function(*args))
        return run

    monkeypatch.setattr(compiling, "_runner", eager)
    (first, second), (box_first, box_second) = sample
    images, image_index = [first, second, first], [0, 2, 1]
    face_boxes = torch.stack([box_first, box_first, box_second])
    config = dict(CONFIG, refine_hierarchical=True, validate=True)
    expected = torch_clnf.load_model(models=models_dir, cache=tmp_path, config=FitConfig(**config),
                                     dtype=torch.float64).fit(images, face_boxes, image_index, multi_view=False)
    parted = torch_clnf.load_model(models=models_dir, cache=tmp_path, config=FitConfig(compile=True, **config),
                                   dtype=torch.float64)
    found = parted.fit(images, face_boxes, image_index, multi_view=False)
    assert calls[:2] == [("fit_ccnf_scales", 2, 2), ("fit_ccnf_scales", 1, 1)]
    assert calls[2:] == [("_warped_features", 2), ("_warped_features", 1)]
    assert bool(expected.success.all())
    assert (found.landmarks - expected.landmarks).norm(dim=-1).max() < 1e-6
    assert torch.allclose(found.confidence, expected.confidence, rtol=0, atol=1e-9)

    calls.clear()
    with compiling.exact_batches():
        whole = parted.fit(images, face_boxes, image_index, multi_view=False)
    assert calls == [("fit_ccnf_scales", 3, 3), ("_warped_features", 3)]
    assert (whole.landmarks - expected.landmarks).norm(dim=-1).max() < 1e-6


def test_packages_get_contiguous_inputs(tmp_path, monkeypatch):
    """A package's kernels read its inputs with the strides it was compiled for: compiled on a
    contiguous tensor, it must also be right when given a strided view (one package for both)."""
    monkeypatch.setattr(compiling, "_runners", {})
    compiling.set_package_dir(tmp_path)
    try:
        def shifted(x):
            return (x + x[:, :1],)

        xyz = torch.arange(24.0).reshape(4, 6)
        strided = xyz[:, ::2]                                          # (4, 3), strides (6, 2)
        run = compiling.compiled_function(shifted)
        with pytest.warns(compiling.CompilingWarning):
            assert torch.equal(run(strided.contiguous())[0], shifted(strided)[0])
        assert torch.equal(run(strided)[0], shifted(strided)[0])
        assert len(list(tmp_path.iterdir())) == 1 and not compiling._broken
    finally:
        compiling.set_package_dir(None)


def test_a_new_process_runs_a_package_without_the_compiler(tmp_path, monkeypatch):
    """Loading a package is the C++ loader's work alone: a process that runs one imports neither
    TorchInductor nor Dynamo (their import and CPU probes cost a tracked video 2.5 s at its start)."""
    import subprocess
    import sys

    monkeypatch.setattr(compiling, "_runners", {})
    compiling.set_package_dir(tmp_path)
    try:
        def halved(x):
            return (x / 2,)

        with pytest.warns(compiling.CompilingWarning):
            compiling.compiled_function(halved)(torch.ones(3))
    finally:
        compiling.set_package_dir(None)
    (package,) = tmp_path.iterdir()
    code = ("import sys, torch\nfrom torch_clnf.models import compiling\n"
            f"(y,) = compiling._load({str(package)!r})([torch.arange(3.0)])\n"
            "print(y.tolist(), 'torch._inductor' in sys.modules, 'torch._dynamo' in sys.modules)")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.split("\n")[-2] == "[0.0, 0.5, 1.0] False False"


def test_a_damaged_package_is_compiled_again(tmp_path, monkeypatch):
    """A truncated package file in the cache is replaced, not a reason to stop compiling."""
    compiled = []

    def compile_fake(call, tensors, path, dims):
        compiled.append(path)
        path.write_bytes(b"package")

    def load_fake(path):
        if Path(path).read_bytes() != b"package":
            raise RuntimeError("not a zip file")
        return lambda tensors: (tensors[0] + 1,)

    monkeypatch.setattr(compiling, "_runners", {})
    monkeypatch.setattr(compiling, "_compile", compile_fake)
    monkeypatch.setattr(compiling, "_load", load_fake)
    compiling.set_package_dir(tmp_path)
    try:
        def plus_one(x):
            return (x + 1,)

        x = torch.zeros(2)
        with pytest.warns(compiling.CompilingWarning):
            assert torch.equal(compiling.compiled_function(plus_one)(x)[0], x + 1)
        (package,) = compiled
        package.write_bytes(b"trunc")                                  # damaged; a new process loads it
        monkeypatch.setattr(compiling, "_runners", {})
        with pytest.warns(compiling.CompilingWarning):
            assert torch.equal(compiling.compiled_function(plus_one)(x)[0], x + 1)
        assert compiled == [package, package] and not compiling._broken
    finally:
        compiling.set_package_dir(None)


def test_a_compilation_failure_runs_eagerly(models_dir, sample, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(compiling, "_runners", {})
    monkeypatch.setattr(compiling, "_broken", False)
    monkeypatch.setattr(compiling, "_compile", fail)
    images, face_boxes = sample
    model = torch_clnf.load_model(models=models_dir, cache=tmp_path, config=FitConfig(compile=True, **CONFIG),
                                  detector=False)
    with pytest.warns(RuntimeWarning, match="compiling failed, the fit runs uncompiled: RuntimeError: no C"), \
            pytest.warns(compiling.CompilingWarning):
        found = model.fit(images[:1], face_boxes[:1], multi_view=False)
    expected = torch_clnf.load_model(models=models_dir, cache=tmp_path, config=FitConfig(**CONFIG),
                                     detector=False).fit(images[:1], face_boxes[:1], multi_view=False)
    # the failed call ran its function uncompiled (each face's experts gathered: float rounding
    # apart), later fits take the uncompiled path itself
    assert (found.landmarks - expected.landmarks).norm(dim=-1).max() < 0.01
    assert torch.equal(model.fit(images[:1], face_boxes[:1], multi_view=False).landmarks, expected.landmarks)
