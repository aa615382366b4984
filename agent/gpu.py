"""GPU inventory and load through NVML (pynvml), and the machine's CPU, RAM and disk (psutil).

Without an NVIDIA driver NVML does not initialise: the GPU list is then None (absent), never a
list of zeros, so the control plane can tell "no GPU reading" from "idle GPU".
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import psutil

from core.wire import GpuSample, HostSample

log = logging.getLogger("agent.gpu")

try:
    import pynvml
except ImportError:  # nvidia-ml-py is a dependency, but the agent must run without it
    pynvml = None


class GpuReader:
    def __init__(self) -> None:
        self.available = False
        self.error: str | None = None
        if pynvml is None:
            self.error = "pynvml is not installed"
            return
        try:
            pynvml.nvmlInit()
            self.available = True
        except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
            self.error = f"NVML unavailable: {exc}"

    def close(self) -> None:
        if self.available and pynvml is not None:
            with contextlib.suppress(Exception):
                pynvml.nvmlShutdown()
            self.available = False

    def read(self) -> list[GpuSample] | None:
        """One sample per GPU; None when NVML is unavailable or the GPUs cannot be listed
        (`error` then says why: a GPU fallen off the bus shows up here)."""
        if not self.available or pynvml is None:
            return None
        try:
            count = pynvml.nvmlDeviceGetCount()
        except Exception as exc:
            self.error = f"NVML cannot list the GPUs: {exc}"
            return None
        samples: list[GpuSample] = []
        errors: list[str] = []
        for index in range(count):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            except Exception as exc:  # e.g. NVMLError_GpuIsLost: report the others
                errors.append(f"GPU {index}: {exc}")
                continue
            sample = GpuSample(index=index, name=_read(pynvml.nvmlDeviceGetName, handle))
            if (util := _read(pynvml.nvmlDeviceGetUtilizationRates, handle)) is not None:
                sample.utilization_pct = float(util.gpu)
            if (memory := _read(pynvml.nvmlDeviceGetMemoryInfo, handle)) is not None:
                sample.memory_used_mb = memory.used / 2**20
                sample.memory_total_mb = memory.total / 2**20
            temperature = _read(
                pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU
            )
            if temperature is not None:
                sample.temperature_c = float(temperature)
            if (power := _read(pynvml.nvmlDeviceGetPowerUsage, handle)) is not None:
                sample.power_w = power / 1000.0  # NVML reports milliwatts
            samples.append(sample)
        self.error = "; ".join(errors) or None
        return samples


def _read(function: Any, *args: Any) -> Any:
    """One NVML query; None when this GPU does not support it (e.g. power on some boards)."""
    try:
        value = function(*args)
    except Exception:
        return None
    return value.decode() if isinstance(value, bytes) else value


def read_host(disk_path: Path | None = None) -> HostSample:
    path = disk_path if disk_path is not None and disk_path.exists() else Path("/")
    return HostSample(
        cpu_percent=psutil.cpu_percent(interval=None),
        ram_percent=psutil.virtual_memory().percent,
        disk_percent=psutil.disk_usage(str(path)).percent,
    )
