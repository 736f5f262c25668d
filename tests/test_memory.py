"""keep_freed_memory: large tensors served from malloc's heap, and the ways to turn it off."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from torch_clnf import memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# a 64 MB tensor allocated and freed, then glibc's count of bytes in mmapped blocks (mallinfo2().hblkhd)
PROBE = """
import ctypes, sys, torch
from torch_clnf.memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
tensor = torch.ones(16 * 2 ** 20)
mapped = libc.mallinfo2().hblkhd
print(applied, mapped >= tensor.nbytes)
"""


def probe(mode: str, **env: str) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                          env={**os.environ, **env})
    return done.stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_large_tensors_come_from_the_heap():
    assert probe("default") == "False True"          # glibc's default: a fresh mapping per large block
    assert probe("keep") == "True False"


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_the_environment_turns_it_off():
    assert probe("keep", TORCH_CLNF_KEEP_FREED_MEMORY="0") == "False True"


def test_elsewhere_it_changes_nothing(monkeypatch):
    monkeypatch.setattr(memory, "_applied", False)
    monkeypatch.setattr(memory.platform, "system", lambda: "Darwin")
    assert memory.keep_freed_memory() is False


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_load_model_applies_it_for_the_cpu(models_dir):
    script = ("import sys, torch_clnf; from torch_clnf import memory; "
              "torch_clnf.load_model('main_clnf_general.txt', sys.argv[1], detector=False); print(memory._applied)")
    done = subprocess.run([sys.executable, "-c", script, str(models_dir)], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"
