"""GPU readings: absent without NVML (this machine), converted to the wire's units with it.

No NVIDIA GPU exists here, so the second test hands the reader a stand-in for the NVML bindings
with a GPU's raw answers (bytes, milliwatts) and one query a board does not support.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import agent.gpu as gpu
from agent.gpu import GpuReader, read_host


class NvmlError(Exception):
    pass


class StandInNvml:
    NVML_TEMPERATURE_GPU = 0

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int:
        return 3

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index == 2:
            raise NvmlError("GPU is lost")
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=37 + handle, memory=10)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(used=20 * 2**30, total=80 * 2**30, free=60 * 2**30)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return 61

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        if handle == 1:
            raise NvmlError("Not Supported")
        return 312_500  # milliwatts


def test_without_an_nvidia_driver_gpus_are_absent_not_zero() -> None:
    reader = GpuReader()
    assert reader.read() is None
    assert reader.error
    reader.close()


def test_nvml_answers_are_converted_and_unsupported_ones_left_absent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gpu, "pynvml", StandInNvml())
    reader = GpuReader()
    samples = reader.read()
    assert samples is not None and len(samples) == 2  # of 3
    first, second = samples
    assert first.name == "NVIDIA H100 80GB HBM3" and first.utilization_pct == 37
    assert first.memory_used_mb == 20480 and first.memory_total_mb == 81920
    assert first.temperature_c == 61 and first.power_w == 312.5
    assert second.power_w is None  # not supported on this board: absent, not 0 W
    assert reader.error == "GPU 2: GPU is lost"  # the third GPU fell off the bus


def test_host_figures_cover_the_cache_volume(tmp_path: Path) -> None:
    host = read_host(tmp_path)
    assert host.ram_percent is not None and 0 < host.ram_percent <= 100
    assert host.disk_percent is not None and 0 <= host.disk_percent <= 100
    missing = read_host(tmp_path / "not-created-yet")  # before the volume is mounted
    assert missing.disk_percent is not None
