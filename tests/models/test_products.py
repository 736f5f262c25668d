"""float32_products: which CPUs route float32 products to oneDNN, their precision, and the setting's bookkeeping."""
import threading

import pytest
import torch

from torch_clnf.models import products

CPU = torch.device("cpu")


@pytest.fixture
def granted(monkeypatch):
    """The route taken whatever this machine is (for the bookkeeping only: no product is computed)."""
    monkeypatch.setattr(products, "onednn_float32_products", lambda: True)
    yield
    assert products._holders == 0 and torch.backends.mkldnn.matmul.fp32_precision == "none"


@pytest.mark.parametrize("vendor, capability, machine, expected", [
    ("AuthenticAMD", "AVX512", "x86_64", True),
    ("AuthenticAMD", "AVX512", "AMD64", True),          # Windows
    ("HygonGenuine", "AVX512", "x86_64", True),
    ("AuthenticAMD", "AVX2", "x86_64", False),          # AVX2 kernels on both sides (or ATEN_CPU_CAPABILITY=avx2)
    ("GenuineIntel", "AVX512", "x86_64", False),        # MKL runs its AVX-512 kernels on Intel's CPUs
    ("", "AVX512", "x86_64", False),                    # unknown vendor
    ("AuthenticAMD", "DEFAULT", "arm64", False),
])
def test_onednn_only_on_avx512_cpus_not_made_by_intel(vendor, capability, machine, expected):
    assert products.onednn_beats_mkl(vendor, capability, machine) is expected


def test_cpu_vendor_from_the_windows_processor_name(monkeypatch):
    def no_proc(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr("builtins.open", no_proc)
    monkeypatch.setattr(products.platform, "processor", lambda: "AMD64 Family 25 Model 17 Stepping 1, AuthenticAMD")
    assert products.cpu_vendor() == "AuthenticAMD"
    monkeypatch.setattr(products.platform, "processor", lambda: "i386")
    assert products.cpu_vendor() == ""


def test_products_inside_are_float32_products():
    """Holds on every machine: the route is taken only where the probe kept float32 precision (some
    1e-7 relative), bfloat16 operands would be some 1e-4 off."""
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(68, 13, 121, generator=generator), torch.randn(68, 121, 300, generator=generator)
    bias = torch.randn(68, 1, 300, generator=generator)
    exact = torch.baddbmm(bias.double(), a.double(), b.double())
    with products.float32_products(CPU, torch.float32):
        routed = torch.baddbmm(bias, a, b)
    torch.testing.assert_close(routed.double(), exact, atol=1e-5 * exact.abs().max().item(), rtol=0)


def test_the_probe_sees_bfloat16_rounding(monkeypatch):
    exact_bmm = torch.bmm

    def rounded_bmm(a, b):
        return exact_bmm(a.bfloat16().float(), b.bfloat16().float()) if a.dtype == torch.float32 else exact_bmm(a, b)

    monkeypatch.setattr(torch, "bmm", rounded_bmm)
    assert not products._probe_keeps_float32()


def test_the_probe_tries_onednn_whatever_the_users_setting(monkeypatch):
    """A user's "tf32" would keep a granted product on MKL: the probe sets the permission itself."""
    exact_bmm, settings = torch.bmm, []

    def recording_bmm(a, b):
        settings.append(torch.backends.mkldnn.matmul.fp32_precision)
        return exact_bmm(a, b)

    monkeypatch.setattr(torch, "bmm", recording_bmm)
    torch.backends.mkldnn.matmul.fp32_precision = "tf32"
    try:
        products._probe_keeps_float32()          # True or False by the CPU (an AMX one would round)
        assert settings[-1] == "bf16" and torch.backends.mkldnn.matmul.fp32_precision == "tf32"
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = "none"


def test_only_cpu_float32_is_routed(granted):
    assert products.routed_to_onednn(CPU, torch.float32)
    assert not products.routed_to_onednn(CPU, torch.float64)
    assert not products.routed_to_onednn(CPU, torch.bfloat16)
    assert not products.routed_to_onednn(torch.device("cuda"), torch.float32)
    with products.float32_products(CPU, torch.float64):
        assert torch.backends.mkldnn.matmul.fp32_precision == "none"


def test_the_setting_is_restored_by_the_last_holder_of_any_thread(granted):
    inside, release, seen = threading.Event(), threading.Event(), []

    def other() -> None:
        with products.float32_products(CPU, torch.float32):
            inside.set()
            release.wait(10)
            seen.append(torch.backends.mkldnn.matmul.fp32_precision)

    with pytest.raises(ValueError):
        with products.float32_products(CPU, torch.float32):
            assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
            thread = threading.Thread(target=other)
            thread.start()
            inside.wait(10)
            raise ValueError("a failing call inside")
    assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"       # the other thread still inside
    release.set()
    thread.join(10)
    assert seen == ["bf16"] and torch.backends.mkldnn.matmul.fp32_precision == "none"


def test_a_precision_set_by_the_user_is_left_alone(granted):
    for setting in ("tf32", "bf16"):
        torch.backends.mkldnn.matmul.fp32_precision = setting
        try:
            with products.float32_products(CPU, torch.float32):
                assert torch.backends.mkldnn.matmul.fp32_precision == setting
            assert torch.backends.mkldnn.matmul.fp32_precision == setting
        finally:
            torch.backends.mkldnn.matmul.fp32_precision = "none"
