import shutil

import pytest
import torch

import torch_clnf.weights as weights
from torch_clnf.openface import ModelFileError, OpenFaceModel, read_model


def assert_same(a, b, where="model"):
    """Recursively equal dataclasses / lists / dicts / tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=where)
    elif hasattr(a, "__dataclass_fields__"):
        assert type(a) is type(b), where
        for name in a.__dataclass_fields__:
            assert_same(getattr(a, name), getattr(b, name), f"{where}.{name}")
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def clnf(models_dir):
    return read_model(models_dir / "main_clnf_general.txt")


def test_cache_round_trip(models_dir, tmp_path, clnf):
    target = weights.convert("main_clnf_general.txt", models=models_dir, cache=tmp_path)
    assert target.parent == tmp_path and target.name.startswith("main_clnf_general-") and target.suffix == ".safetensors"
    loaded = weights.load_weights("main_clnf_general.txt", models=models_dir, cache=tmp_path)
    assert isinstance(loaded, OpenFaceModel)
    assert_same(clnf, loaded)
    assert [p.name for p in loaded.parts] == ["inner", "left_eye_28", "right_eye_28"]


def test_second_convert_reuses_the_cache(models_dir, tmp_path):
    first = weights.convert(models_dir / "main_clnf_general.txt", cache=tmp_path)
    stamp = first.stat().st_mtime_ns
    assert weights.convert(models_dir / "main_clnf_general.txt", cache=tmp_path) == first
    assert first.stat().st_mtime_ns == stamp
    assert list(tmp_path.iterdir()) == [first]


def test_changed_source_gives_a_new_conversion(models_dir, tmp_path):
    copy = tmp_path / "models"
    shutil.copytree(models_dir / "model_inner", copy)
    cache = tmp_path / "cache"
    first = weights.convert(copy / "main_clnf_inner.txt", cache=cache)
    pdm = copy / "pdms/pdm_51_inner.txt"
    pdm.chmod(0o644)
    pdm.write_text(pdm.read_text().replace("\n", "\n\n", 5))  # same numbers, other bytes
    second = weights.convert(copy / "main_clnf_inner.txt", cache=cache)
    assert second != first and second.is_file()


def test_damaged_cache_file_is_converted_again(models_dir, tmp_path):
    target = weights.convert("main_clnf_inner.txt", models=models_dir / "model_inner", cache=tmp_path)
    target.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelFileError, match="not a readable converted-weights file"):
        weights.load_weights_file(target)
    model = weights.load_weights("main_clnf_inner.txt", models=models_dir / "model_inner", cache=tmp_path)
    assert model.pdm.num_points == 51


def test_spec_found_through_the_environment(models_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(weights.MODELS_ENV, str(models_dir))
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path))
    assert weights.cache_dir() == tmp_path
    assert weights.resolve_spec("main_clnf_general.txt") == models_dir / "main_clnf_general.txt"
    monkeypatch.delenv(weights.MODELS_ENV)
    with pytest.raises(ModelFileError, match="model spec not found .*set TORCH_CLNF_MODELS"):
        weights.resolve_spec("main_clnf_general.txt")
