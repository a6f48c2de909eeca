"""The machine a benchmark ran on, written into every result: CPU, cores, GPU, torch version and threads;
the torch CPU threads a benchmark uses by default; the machine's memory; and the datasheet peaks of the GPUs
the project is lent (for "% of peak" columns)."""

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
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def device_name(device: str) -> str:
    """The card's name on CUDA (torch.cuda.get_device_name), the CPU's model name otherwise."""
    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else _cpu_name()


def total_memory_bytes() -> int:
    """The machine's RAM: MemTotal of /proc/meminfo, else the page count of os.sysconf."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# Datasheet peaks, dense (no sparsity): bf16/fp16 tensor-core TFLOP/s and HBM GB/s. Matched on
# torch.cuda.get_device_name(), most specific first ("NVIDIA H100 PCIe", "NVIDIA H100 80GB HBM3" is the SXM5
# part, "NVIDIA H200"). A card not listed gets no "% of peak" column rather than a guess.
GPU_PEAKS: tuple[tuple[tuple[str, ...], str, float, float], ...] = (
    (("H100", "PCIE"), "H100 PCIe", 756.0, 2000.0),
    (("H100", "NVL"), "H100 NVL", 835.0, 3900.0),
    (("H100", "HBM3"), "H100 SXM", 989.0, 3350.0),
    (("H100", "SXM"), "H100 SXM", 989.0, 3350.0),
    (("H200", "NVL"), "H200 NVL", 835.0, 4800.0),
    (("H200",), "H200", 989.0, 4800.0),
)


def gpu_peaks(name: str | None) -> dict | None:
    """{"card", "tflops_16bit", "hbm_gbps"} for a card in GPU_PEAKS (by torch's device name), else None."""
    upper = (name or "").upper()
    for needles, card, tflops, gbps in GPU_PEAKS:
        if all(n in upper for n in needles):
            return {"card": card, "device_name": name, "tflops_16bit": tflops, "hbm_gbps": gbps,
                    "source": "datasheet, dense bf16/fp16 tensor cores; HBM bandwidth"}
    return None
