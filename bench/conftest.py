"""Benchmarks (pytest-benchmark): `pytest bench --benchmark-only`. Speed is reported here and
never asserted in tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# Benchmarks reuse the test helpers (generated images, ../shared lookup).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


@pytest.fixture(autouse=True, scope="session")
def _threads() -> None:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record the libraries, native build, GPU and load with the results, so that a report
    made later (or elsewhere) from the JSON describes the machine that measured them
    (pytest-benchmark asks when it saves, at the end: the load average includes the run)."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    from report import machine

    machine_info["refusion"] = machine()
