"""Ahead-of-time compiled fitting loops (``FitConfig(compile=True)``): AOTInductor packages on disk.

The functions compiled here (the scales of a fit, the parts' refit with the loops of its CalcParams,
the validator's warp) read nothing back on the host; a loop that stops when every face has converged
is a ``while_loop`` inside the graph. Each distinct call of one — its Python arguments,
the shapes (but for the dimensions declared variable, such as an image's height and width), dtypes
and device of its tensors, and the tensors of the model it is given — is exported (``torch.export``)
and compiled by AOTInductor into a package of fused kernels with a C++ launcher: one call instead
of hundreds of tensor operations, each with microseconds of Python and dispatch. Packages are kept
in :func:`package_dir` (the weights cache's ``compiled/``; they hold the model's converted tensors,
so never in git) and loaded by later processes in milliseconds; a new shape compiles once, for
some 10–40 s on a small CPU (``torch-clnf compile`` does it ahead of time). Where compiling fails
(e.g. no C++ compiler) the functions run eagerly, with one warning.

A package's name is a hash of the call and of everything its kernels depend on: the torch version,
the CPU's vector instructions (kernels built for AVX-512 do not run on an AVX2 machine), the device
and the source files of torch_clnf's models, fitting and detection. Packages of another such
environment are removed once unused for :data:`UNUSED_DAYS` days (:func:`prune_packages`).
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import tempfile
import time
import warnings
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import nn

F = TypeVar("F", bound=Callable)

PACKAGE_FORMAT = "2: contiguous inputs"      # part of every package's name: how packages are called
UNUSED_DAYS = 14                             # another environment's package not loaded for this long is pruned
_PACKAGE_NAME = re.compile(r"[a-z0-9_]+-(?:([0-9a-f]{8})-)?[0-9a-f]{32}\.pt2")     # (its environment's tag)
_PARTIAL_NAME = re.compile(r"tmp[A-Za-z0-9_]+\.pt2")        # (a compile's file before its rename)
_directory: Path | None = None
_runners: dict[tuple, Callable] = {}        # call (function, signature) → its loaded package's launcher (tensors in, out)
_compiled: dict[Callable, Callable] = {}
_broken = False
_exact_batches = False        # inside exact_batches(): no batch is cut into parts
_environment: str | None = None
_digests: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()


class CompilingWarning(UserWarning):
    """A fit waits for a package to be compiled (a new shape: once)."""


def package_dir() -> Path:
    """Where compiled packages are kept: the folder :func:`set_package_dir` chose, else
    ``compiled/`` in the default weights cache (:func:`torch_clnf.weights.cache_dir`)."""
    if _directory is None:
        from ..weights import cache_dir      # (the cache's location only; no weights are read here)

        return cache_dir() / "compiled"
    return _directory


def set_package_dir(path: str | Path | None) -> None:
    """Keep compiled packages in ``path`` (None: the default, see :func:`package_dir`);
    :func:`~torch_clnf.load_model` sets its weights cache's ``compiled/``."""
    global _directory
    _directory = None if path is None else Path(path)


def compiling_failed() -> bool:
    """Whether a compilation failed in this process: callers then take their uncompiled path."""
    return _broken


def compiled_function(function: F, returns: Callable[[tuple], Any] = tuple,
                      dynamic: dict[int, tuple[int, ...]] | None = None,
                      prepare: Callable[..., None] | None = None) -> F:
    """``function`` run from AOTInductor packages, one per distinct call (compiled on its first
    call, or loaded from :func:`package_dir`); ``returns`` rebuilds its result from the package's
    tuple of tensors (a function returning one tensor gives a tuple of it). ``dynamic`` maps the
    positions of tensor arguments to their dimensions whose sizes are the package's variables
    (e.g. an image's height and width): calls that differ only there share a package. ``prepare``,
    given the call's arguments, makes what the package should hold as constants (caches that the
    function would otherwise compute from traced tensors), just before a package is compiled. Called
    while another compiled function is being traced, ``function`` itself (part of that package);
    after a compilation error anywhere, ``function`` itself, for good."""
    if function not in _compiled:
        variable = dynamic or {}

        def described(args: tuple) -> tuple[Any, list[torch.Tensor], list[nn.Module], list[str], dict]:
            """(template, tensors, modules, signature, variable dimensions) of a call."""
            tensors: list[torch.Tensor] = []
            modules: list[nn.Module] = []
            signature: list[str] = [f"tuple tuple {len(args)}"]
            seen: dict[int, Any] = {}
            dims: dict[int, tuple[int, ...]] = {}          # flat tensor index → its variable dimensions
            items = []
            for position, arg in enumerate(args):
                if position in variable:
                    dims[len(tensors)] = variable[position]
                items.append(_flatten(arg, tensors, modules, signature, seen, variable.get(position, ())))
            return ("tuple", tuple, items), tensors, modules, signature, dims

        def run(*args: Any) -> Any:
            global _broken
            if not _broken and not torch.compiler.is_compiling():      # (called inside a compiled function: inlined)
                template, tensors, modules, signature, dims = described(args)
                try:
                    before = (lambda: prepare(*args)) if prepare is not None else None
                    runner = _runner(function, template, tensors, modules, signature, dims, before)
                except Exception as err:                   # noqa: BLE001 (any export or compiler failure)
                    _broken = True
                    warnings.warn(f"compiling failed, the fit runs uncompiled: {type(err).__name__}: {err}",
                                  RuntimeWarning, stacklevel=2)
                else:
                    return returns(tuple(_launch(runner, tensors)))
            return function(*args)

        def has_package(*args: Any) -> bool:
            """Whether the package of this call is loaded or on disk already (nothing is compiled)."""
            signature = described(args)[3]
            return (function, *signature) in _runners or _package_path(function, signature).is_file()

        run.has_package = has_package                      # type: ignore[attr-defined]
        _compiled[function] = run
    return _compiled[function]


def batch_parts(count: int, whole_ready: Callable[[], bool] = lambda: False) -> list[int]:
    """The batch sizes a compiled call on ``count`` faces runs in. Packages are made per number
    of faces (some 10–40 s each), so a run whose number of faces varies (videos in lockstep that
    end one by one) would wait for a package set of every size: a count that is not a power of
    two runs in power-of-two parts, largest first (7 → [4, 2, 1]), at most log₂ sizes in all —
    unless ``whole_ready()`` says its own package is made already (``torch-clnf compile --batch
    7`` makes it), or inside :func:`exact_batches`: then ``[count]``."""
    if count & (count - 1) == 0 or _exact_batches or whole_ready():
        return [count]
    return [1 << bit for bit in reversed(range(count.bit_length())) if count >> bit & 1]


def consecutive_slices(sizes: list[int]) -> list[slice]:
    """Slices of consecutive blocks of these sizes, from index 0 ([4, 2, 1] → 0:4, 4:6, 6:7)."""
    ends = list(itertools.accumulate(sizes))
    return [slice(end - size, end) for size, end in zip(sizes, ends)]


@contextmanager
def exact_batches() -> Iterator[None]:
    """Compiled calls inside run on their whole batch, whatever its size (so compile its package)."""
    global _exact_batches
    before, _exact_batches = _exact_batches, True
    try:
        yield
    finally:
        _exact_batches = before


def _launch(runner: Callable, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Run a loaded package (a function of its own, so that ``bench/ops.py`` counts what the
    packages call into ATen apart from what Python issues)."""
    return runner(tensors)


def _runner(function: Callable, template: Any, tensors: list[torch.Tensor], modules: list[nn.Module],
            signature: list[str], dims: dict[int, tuple[int, ...]], prepare: Callable[[], None] | None = None
            ) -> Callable:
    """The loaded package of this call: from memory, from disk, or compiled now (``prepare``
    called first) and saved."""
    call = (function, *signature)         # (all the package's name hashes but the environment, fixed per process)
    runner = _runners.get(call)
    if runner is None:
        path = _package_path(function, signature)
        if path.is_file():
            try:
                runner = _load(path)
            except Exception:                              # noqa: BLE001 (a damaged file: compiled again)
                path.unlink(missing_ok=True)
            else:
                _mark_used(path)
        if runner is None:
            warnings.warn(f"compiling the fit's loops for a new shape, once (10-40 s each on a small CPU); kept in "
                          f"{path.parent}", CompilingWarning, stacklevel=4)
            if prepare is not None:
                prepare()
            _compile(_Call(function, template, modules), tuple(tensors), path, dims)
            runner = _load(path)
            prune_packages(path.parent)
        _runners[call] = runner
    return runner


def _load(path: Path) -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
    """The launcher of the package ``path`` (tensors in, tensors out), by AOTInductor's C++ loader
    alone: ``torch._inductor.aoti_load_package`` would first import the compiler (1.4 s) and test
    the CPU's vector instructions by compiling probes (1 s), which the package's name already
    settles (:func:`_environment_key`)."""
    return torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1).boxed_run


def _package_path(function: Callable, signature: list[str]) -> Path:
    """Where the package of a call of ``function`` (its arguments described by ``signature``) is
    kept: named after the function, the environment's tag and a hash of both."""
    name = hashlib.sha256("\n".join([_environment_key(), function.__module__, function.__qualname__, *signature])
                          .encode()).hexdigest()[:32]
    return package_dir() / f"{function.__name__.strip('_')}-{_environment_tag()}-{name}.pt2"


def prune_packages(folder: str | Path | None = None, unused_days: float = UNUSED_DAYS) -> tuple[int, int]:
    """Remove from ``folder`` (default :func:`package_dir`) the packages made for another
    environment (older torch_clnf sources, another torch, CPU or Python: see
    :func:`_environment_key`) that no process has loaded for ``unused_days`` days, and compiles'
    partial files a day old (left by a killed process); called whenever a package is made, so that
    the cache does not only grow. This environment's packages are kept, and only files named as
    this module names them are touched. Returns the number of files removed and their bytes."""
    folder = Path(folder) if folder is not None else package_dir()
    now, ours = time.time(), _environment_tag()
    removed, freed = 0, 0
    for path in folder.glob("*.pt2") if folder.is_dir() else ():
        package, partial = _PACKAGE_NAME.fullmatch(path.name), _PARTIAL_NAME.fullmatch(path.name)
        try:
            info = path.stat()
            age = now - info.st_mtime
            if (package and package[1] != ours and age > unused_days * 86400) or (partial and age > 86400):
                path.unlink()
                removed, freed = removed + 1, freed + info.st_size
        except OSError:                        # (removed by another process meanwhile, or not ours to remove)
            continue
    return removed, freed


def _mark_used(path: Path) -> None:
    """Set a loaded package's modification time to now (:func:`prune_packages` keeps it)."""
    try:
        os.utime(path)
    except OSError:                            # (a read-only cache: nothing is pruned there either)
        pass


def _compile(call: nn.Module, tensors: tuple[torch.Tensor, ...], path: Path, dims: dict[int, tuple[int, ...]]) -> None:
    """Export ``call`` on ``tensors`` (``dims``: the variable dimensions of some) and compile it
    into the package ``path`` (written whole, then renamed: processes compiling the same package
    at once each leave a complete file)."""
    _cache_per_cpu_capability()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".pt2", dir=path.parent)
    os.close(handle)
    inductor_log = logging.getLogger("torch._inductor")
    level = inductor_log.level
    try:
        with warnings.catch_warnings():        # (the compiler's notes to torch's developers, not to users)
            warnings.simplefilter("ignore")
            inductor_log.setLevel(logging.ERROR)
            variable = tuple({d: torch.export.Dim.DYNAMIC for d in dims[k]} if k in dims else None
                             for k in range(len(tensors)))
            program = torch.export.export(call, tensors, dynamic_shapes=(variable,) if dims else None, strict=False)
            torch._inductor.aoti_compile_and_package(program, package_path=temporary)
        os.replace(temporary, path)
    finally:
        inductor_log.setLevel(level)
        if os.path.exists(temporary):
            os.remove(temporary)


class _Call(nn.Module):
    """``function`` on the arguments ``template`` describes, its tensors given flat (the module
    arguments held, their tensors compiled into the package); returns a flat tuple of tensors."""

    def __init__(self, function: Callable, template: Any, modules: list[nn.Module]) -> None:
        super().__init__()
        self.function, self.template = function, template
        self.held = nn.ModuleList(modules)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        result = self.function(*_rebuild(self.template, tensors, list(self.held)))
        return (result,) if isinstance(result, torch.Tensor) else tuple(result)


def _flatten(value: Any, tensors: list[torch.Tensor], modules: list[nn.Module], signature: list[str],
             seen: dict[int, Any], variable: tuple[int, ...] = ()) -> Any:
    """A template of ``value`` (tuples, named tuples, plain objects, modules, tensors and Python
    values), its tensors and modules appended to the lists (each object once) and described in
    ``signature`` (a tensor's ``variable`` dimensions by a ``*``, not their size). An object's
    attributes named with a leading underscore are caches: dropped."""
    if id(value) in seen:
        return seen[id(value)]
    if isinstance(value, torch.Tensor):
        found = seen[id(value)] = ("tensor", len(tensors))
        # contiguous: a package's kernels read its inputs with the strides it was compiled for (a
        # package compiled on contiguous landmarks read a strided view of them 1,300 px off)
        tensors.append(value.contiguous())
        shape = tuple("*" if d in variable else size for d, size in enumerate(value.shape))
        signature.append(f"tensor {shape} {value.dtype} {value.device.type}")
    elif isinstance(value, nn.Module):
        found = seen[id(value)] = ("module", len(modules))
        modules.append(value)
        signature.append(f"module {type(value).__qualname__} {_digest(value)}")
    elif _plain(value):                        # (a value, or a tuple of them, however nested: one entry)
        signature.append(repr(value))
        found = ("value", value)
    elif isinstance(value, tuple):
        signature.append(f"tuple {type(value).__qualname__} {len(value)}")
        found = ("tuple", type(value), [_flatten(v, tensors, modules, signature, seen) for v in value])
    else:
        public = {k: v for k, v in vars(value).items() if not k.startswith("_")}
        signature.append(f"object {type(value).__qualname__} {sorted(public)}")
        found = ("object", type(value), {k: _flatten(v, tensors, modules, signature, seen) for k, v in public.items()},
                 [k for k in vars(value) if k.startswith("_")])
    return found


def _plain(value: Any) -> bool:
    """Whether ``value`` is a Python value (None, bool, number, string, dtype) or a plain tuple of them."""
    return (value is None or isinstance(value, (bool, int, float, str, torch.dtype))
            or (type(value) is tuple and all(_plain(v) for v in value)))


def _rebuild(template: Any, tensors: tuple[torch.Tensor, ...], modules: list[nn.Module]) -> Any:
    """The arguments ``template`` describes, with these tensors and modules."""
    kind = template[0]
    if kind == "tensor":
        return tensors[template[1]]
    if kind == "module":
        return modules[template[1]]
    if kind == "value":
        return template[1]
    if kind == "tuple":
        items = [_rebuild(t, tensors, modules) for t in template[2]]
        return template[1](*items) if hasattr(template[1], "_fields") else template[1](items)
    rebuilt = object.__new__(template[1])
    vars(rebuilt).update({k: _rebuild(t, tensors, modules) for k, t in template[2].items()},
                         **dict.fromkeys(template[3]))
    return rebuilt


def _digest(module: nn.Module) -> str:
    """A hash of a module's buffers and parameters (names, shapes, dtypes, values), made once per module."""
    found = _digests.get(module)
    if found is None:
        hashed = hashlib.sha256()
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            hashed.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
            hashed.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        found = _digests[module] = hashed.hexdigest()
    return found


def _environment_key() -> str:
    """What every package's kernels depend on besides the call: torch, the CPU's vector
    instructions, Python and the sources of what they run, the models, the fitting and the
    validator (hashed once per process)."""
    global _environment
    if _environment is None:
        import platform

        from ..weights import source_hash

        package = Path(__file__).resolve().parents[1]
        sources = [*package.glob("models/*.py"), *package.glob("fitting/*.py"), *package.glob("detect/*.py")]
        sources = sorted(s for s in sources if s.name != "compiling.py")          # (this file: not in a package)
        _environment = " ".join([PACKAGE_FORMAT, torch.__version__, torch.backends.cpu.get_cpu_capability(),
                                 platform.machine(), platform.python_version(), source_hash(sources)])
    return _environment


def _environment_tag() -> str:
    """8 hex digits of :func:`_environment_key`, in every package's file name (see :func:`prune_packages`)."""
    return hashlib.sha256(_environment_key().encode()).hexdigest()[:8]


def _cache_per_cpu_capability() -> None:
    """TorchInductor's own cache folder (its intermediate kernels), one per ``ATEN_CPU_CAPABILITY``:
    it does not tell them apart (torch 2.13), and kernels it cached under one setting gave NaN
    landmarks when loaded under another. Unless the user chose a folder (importing torch._dynamo
    sets the variable to the default folder, which is not a choice)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    if os.environ.get("TORCHINDUCTOR_CACHE_DIR", default_cache_dir()) != default_cache_dir():
        return
    capability = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower() or "default"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(default_cache_dir(), f"cpu-{capability}")
