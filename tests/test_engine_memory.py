"""Retained freed memory (refusion.engine.memory) and the torch backend's CPU defaults."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from refusion.engine.backends.torch_backend import TorchBackend

import refusion
from refusion.models import FusionConfig, FusionNet

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocates, touches and frees a 240 MB tensor, then a 200 MB one, and reports the minor page
# faults of each: the second reuses the first one's pages only when freed memory is retained.
# (The second is smaller because an aligned allocation needs a little slack: a freed block of
# exactly the same size may not fit it when small allocations landed right behind the block.)
_PROBE = """
import json, resource, sys
import torch
from refusion.engine.memory import memory_status, retain_freed_memory
ok = retain_freed_memory() if sys.argv[1] == "retain" else False
def faults(n):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(n)
    t.fill_(1.0)
    del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
first, second = faults(60_000_000), faults(50_000_000)
print(json.dumps({"ok": ok, "status": memory_status(), "first": first, "second": second}))
"""


def _probe(mode: str, **env: str) -> dict:
    # Process-wide allocator settings: each case gets its own interpreter.
    cwd = Path(refusion.__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                         check=True, cwd=cwd, env={**os.environ, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt retention is for Linux with glibc")
def test_retained_memory_is_reused_without_page_faults():
    retained = _probe("retain")
    assert retained["ok"] and retained["status"] == "retained"
    assert retained["first"] > 10_000  # 240 MB in 4 KiB (or some 2 MiB) pages
    assert retained["second"] < retained["first"] / 10, retained
    system = _probe("system")
    assert not system["ok"] and system["status"] == "system allocator"
    assert system["second"] > system["first"] / 2, system  # munmap'd, faulted in again


def test_opt_out_by_environment():
    got = _probe("retain", REFUSION_RETAIN_MEMORY="0")
    assert not got["ok"]
    assert got["status"] == "system allocator (REFUSION_RETAIN_MEMORY=0)"


def test_torch_backend_cpu_defaults_and_same_images():
    torch.manual_seed(0)
    net = FusionNet(FusionConfig(dim=8, blocks=1, heads=2)).eval()
    x = np.random.default_rng(0).random((2, 2, 37, 53), dtype=np.float32)
    assert TorchBackend(net, "cpu").retain_memory  # the CPU default (not activated here)
    assert not TorchBackend(net, "cuda").retain_memory
    plain = TorchBackend(net, "cpu", retain_memory=False, inference_form=False, threads=1)
    fast = TorchBackend(net, "cpu", retain_memory=False, threads=1)
    assert fast.inference_form  # CPU default
    threads = torch.get_num_threads()
    try:
        with plain, fast:
            want, got = plain.infer(x), fast.infer(x)
            d = fast.describe()
    finally:
        torch.set_num_threads(threads)
    assert d["inference_form"] is True and d["memory"]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_inference_form_falls_back_for_other_networks():
    class Custom(FusionNet):
        pass

    be = TorchBackend(Custom(FusionConfig(dim=8, blocks=1, heads=2)), "cpu",
                      retain_memory=False, threads=1)
    threads = torch.get_num_threads()
    try:
        with be:
            assert be.infer(np.zeros((1, 2, 8, 8), np.float32)).shape == (1, 1, 8, 8)
            assert be.describe()["inference_form"] is False
    finally:
        torch.set_num_threads(threads)
