"""Float32 batched matrix products on oneDNN's kernels where MKL's are the slower ones.

On x86 CPUs not made by Intel, MKL runs its AVX2 kernels even where the CPU has AVX-512, while
oneDNN runs AVX-512 ones: on an AMD EPYC (Zen 5) a 1024³ float32 product ran at ~105 GFLOP/s
through MKL and ~240 through oneDNN, the CEN experts' layers (68 landmarks, 4 layers) 1.4-2.4×
faster, whole CE-CLM fits 1.2-1.5× (docs/speed.md). torch sends a float32 (batched) product to oneDNN only while
``torch.backends.mkldnn.matmul.fp32_precision`` is ``"bf16"``: a permission to round the operands
to bfloat16, which oneDNN takes only on CPUs with AMX. So :func:`float32_products` grants it only
on a CPU without AMX, and only after a probe product has kept float32 precision here; the
results are then float32 products, only summed in another order.

While granted (for the span of a call), the setting is process-wide; ``torch.
get_float32_matmul_precision()`` called from another thread in that span raises (torch's
"mix of the legacy and new APIs" error).
"""
from __future__ import annotations

import contextlib
import functools
import platform
import threading
from typing import ContextManager

import torch

_STRICT = ("none", "ieee")     # the precision settings that ask for float32 arithmetic
_lock = threading.Lock()
_holders = 0                   # calls inside a grant, all threads
_restore: str | None = None    # the setting found by the first of them (None: it was left alone)


def onednn_beats_mkl(vendor: str, capability: str, machine: str) -> bool:
    """Whether oneDNN's float32 products outrun MKL's on a CPU: x86 with AVX-512 not made by Intel.

    Args:
        vendor: the CPU's vendor string (``AuthenticAMD``, ``GenuineIntel``; "" unknown).
        capability: ATen's CPU capability (``torch.backends.cpu.get_cpu_capability()``).
        machine: ``platform.machine()``.
    """
    return (machine.lower() in ("x86_64", "amd64") and capability.upper().startswith("AVX512")
            and vendor not in ("", "GenuineIntel"))


def cpu_vendor() -> str:
    """The CPU's vendor string, from /proc/cpuinfo (Linux) or the processor name (Windows); "" where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    name = platform.processor()              # Windows: "AMD64 Family 25 Model 17 Stepping 1, AuthenticAMD"
    return name.rsplit(",", 1)[1].strip() if "," in name else ""


@functools.cache
def onednn_float32_products() -> bool:
    """Whether :func:`float32_products` routes CPU float32 products to oneDNN on this machine."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    if not (torch.backends.mkldnn.is_available() and not amx()
            and onednn_beats_mkl(cpu_vendor(), torch.backends.cpu.get_cpu_capability(), platform.machine())):
        return False
    return _probe_keeps_float32()


def _probe_keeps_float32() -> bool:
    """Whether a batched product under the bfloat16 permission keeps float32 precision: products of
    numbers in [0, 1) rounded to bfloat16 are some 1e-4 off, float32 ones some 1e-7. The permission
    is set whatever the user's setting, so that oneDNN's kernel is the one probed."""
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(4, 25, 121, generator=generator)
    b = torch.rand(4, 121, 100, generator=generator)
    exact = torch.bmm(a.double(), b.double())
    with _lock:
        found = torch.backends.mkldnn.matmul.fp32_precision
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        try:
            product = torch.bmm(a, b)
        finally:
            torch.backends.mkldnn.matmul.fp32_precision = found
    return bool((product.double() - exact).abs().max() <= 1e-5 * exact.abs().max())


def _strict_setting() -> bool:
    """Whether nobody has changed the float32 precision of CPU products from float32."""
    mkldnn = torch.backends.mkldnn
    return (mkldnn.matmul.fp32_precision in _STRICT and mkldnn.fp32_precision in _STRICT
            and torch.backends.fp32_precision in _STRICT)


class _OnOneDNN:
    """The grant itself: the first holder (of any thread) sets the permission, the last restores it."""

    def __enter__(self) -> None:
        global _holders, _restore
        with _lock:
            if _holders == 0:
                _restore = torch.backends.mkldnn.matmul.fp32_precision if _strict_setting() else None
                if _restore is not None:
                    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
            _holders += 1

    def __exit__(self, *exc: object) -> None:
        global _holders, _restore
        with _lock:
            _holders -= 1
            if _holders == 0 and _restore is not None:
                torch.backends.mkldnn.matmul.fp32_precision = _restore
                _restore = None


def routed_to_onednn(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether :func:`float32_products` routes products of this device and dtype to oneDNN: CPU
    float32 where :func:`onednn_float32_products`, not while torch compiles, traces or exports."""
    return (device.type == "cpu" and dtype == torch.float32 and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing() and onednn_float32_products())


def float32_products(device: torch.device, dtype: torch.dtype) -> ContextManager[None]:
    """A context in which CPU float32 batched products run on oneDNN where that is faster and keeps
    float32 precision (:func:`routed_to_onednn`); elsewhere a context that changes nothing."""
    return _OnOneDNN() if routed_to_onednn(device, dtype) else contextlib.nullcontext()
