"""The machine a benchmark ran on, written into every result: CPU, cores, GPU, torch version and threads;
and the torch CPU threads a benchmark uses by default."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from shared.config import default_num_threads


def default_threads() -> int:
    """Torch CPU threads for a benchmark: the engines' default (shared.config.default_num_threads)."""
    return default_num_threads()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict:
    info = {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info
