"""Finding OpenFace model files and caching them, converted, as one safetensors file.

The cache file is named after the spec and a hash of every source file's contents, so a
changed model file is converted afresh. Converted weights are OpenFace-derived: they stay in an
ignored folder (``weights/`` of a source checkout, or ``~/.cache/torch_clnf``), never in git.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from . import openface
from .model_files import MODELS_ENV
from .openface import ModelFileError, OpenFaceModel, read_main_spec, read_model

CACHE_ENV = "TORCH_CLNF_CACHE"
FORMAT = "torch_clnf-weights-1"
_TYPES = {cls.__name__: cls for cls in (openface.OpenFaceModel, openface.PartModel, openface.PDMData,
                                         openface.CCNFPatchExperts, openface.CENPatchExperts, openface.EarlyTermination)}


def models_dir() -> Path:
    """Where OpenFace's model files are looked for, and downloaded to: ``$TORCH_CLNF_MODELS``, else
    the per-user data folder (e.g. ``~/.local/share/torch_clnf/openface-2.2.0`` on Linux,
    ``~/Library/Application Support/torch_clnf/openface-2.2.0`` on macOS)."""
    if os.environ.get(MODELS_ENV):
        return Path(os.environ[MODELS_ENV]).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("torch_clnf", appauthor=False)) / "openface-2.2.0"


def resolve_spec(spec: str | Path, models: str | Path | None = None) -> Path:
    """The main spec file: ``spec`` itself if it exists, else ``spec`` inside the model folder.

    The model folder is ``models`` or, when that is None, :func:`models_dir`. When the spec is
    in neither, the error says how to get OpenFace's files (``torch-clnf download-models``).
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path.absolute()
    folder = Path(models).expanduser() if models is not None else models_dir()
    if not path.is_absolute() and (folder / path).is_file():
        return (folder / path).absolute()
    if path.is_absolute():
        raise ModelFileError(path, None, "model spec not found")
    ceclm = " --ceclm" if "ceclm" in path.name else ""
    raise ModelFileError(path, None, f"model spec not found in {folder}. OpenFace's model files are not shipped "
                         f"with torch_clnf (their license forbids it): run `torch-clnf download-models{ceclm}` to "
                         f"fetch them into {models_dir()}, or set {MODELS_ENV} to a folder that holds them, or "
                         "give the folder (--models, or load_model(models=...))")


def cache_dir(cache: str | Path | None = None) -> Path:
    """Where converted weights live: ``cache``, ``$TORCH_CLNF_CACHE``, a checkout's ``weights/``, or ``~/.cache/torch_clnf``."""
    if cache is not None:
        return Path(cache).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    checkout = Path(__file__).resolve().parents[1] / "weights"
    if (checkout / "README.md").is_file():
        return checkout
    return Path.home() / ".cache" / "torch_clnf"


def source_hash(files: list[Path]) -> str:
    """SHA-256 over the files' names (relative to the first file's folder) and contents."""
    digest = hashlib.sha256(FORMAT.encode())
    root = files[0].parent
    for path in files:
        name = os.path.relpath(path, root)
        digest.update(name.encode() + b"\0")
        try:
            with open(path, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 22), b""):
                    digest.update(block)
        except OSError as err:
            raise ModelFileError(path, None, f"cannot be read ({err.strerror})") from None
    return digest.hexdigest()


def _encode(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.contiguous()
        return {"tensor": key}
    if dataclasses.is_dataclass(obj):
        return {"type": type(obj).__name__,
                "fields": {f.name: _encode(getattr(obj, f.name), f"{key}.{f.name}", tensors) for f in dataclasses.fields(obj)}}
    if isinstance(obj, dict):
        return {"dict": [[k, _encode(v, f"{key}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"tuple" if isinstance(obj, tuple) else "list": [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"value": obj}
    raise TypeError(f"cannot cache a {type(obj).__name__} at {key}")


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if "tensor" in node:
        return tensors[node["tensor"]]
    if "type" in node:
        return _TYPES[node["type"]](**{k: _decode(v, tensors) for k, v in node["fields"].items()})
    if "dict" in node:
        return {k: _decode(v, tensors) for k, v in node["dict"]}
    if "list" in node:
        return [_decode(v, tensors) for v in node["list"]]
    if "tuple" in node:
        return tuple(_decode(v, tensors) for v in node["tuple"])
    return node["value"]


def save_weights(model: OpenFaceModel, path: str | Path, sources: list[Path] | None = None) -> None:
    """Write a model to one safetensors file (atomically: a partial file is never left behind)."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(model, "model", tensors)
    metadata = {"format": FORMAT, "structure": json.dumps(structure),
                "sources": json.dumps([str(p) for p in sources or []])}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + f".{os.getpid()}.partial")
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, path)


def load_weights_file(path: str | Path) -> OpenFaceModel:
    """Read a file written by :func:`save_weights`."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ModelFileError(path, None, f"expected a {FORMAT} file, found format {metadata.get('format')!r}")
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        return _decode(json.loads(metadata["structure"]), tensors)
    except ModelFileError:
        raise
    except Exception as err:  # safetensors raises several types for a damaged file
        raise ModelFileError(path, None, f"not a readable converted-weights file ({err})") from None


def convert(spec: str | Path, models: str | Path | None = None, cache: str | Path | None = None,
            force: bool = False) -> Path:
    """Convert a main spec and every file it names into one cached file; returns its path.

    Does nothing but hashing when an up-to-date conversion is already cached.
    """
    main = read_main_spec(resolve_spec(spec, models))
    files = main.files()
    target = cache_dir(cache) / f"{main.path.stem}-{source_hash(files)[:16]}.safetensors"
    if force or not target.is_file():
        save_weights(read_model(main), target, files)
    return target


def load_weights(spec: str | Path, models: str | Path | None = None, cache: str | Path | None = None) -> OpenFaceModel:
    """An OpenFace model, from the cache when the source files are unchanged, else converted now."""
    target = convert(spec, models, cache)
    try:
        return load_weights_file(target)
    except ModelFileError:  # a damaged cache entry: convert again
        return load_weights_file(convert(spec, models, cache, force=True))
