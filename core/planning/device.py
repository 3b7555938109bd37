"""How much memory a run may use: the device's free memory, capped by TUNESERVE_DEVICE_MEMORY_GIB.

Nothing here touches CUDA at import; `measure` does, in the process that trains or serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIB = 2**30


@dataclass(frozen=True)
class DeviceMemory:
    kind: str                # "cuda" or "cpu"
    name: str                # "NVIDIA H200", "cpu", or "a GPU of 8 GiB" for a plan asked of a size
    free_bytes: int
    total_bytes: int
    cap_bytes: int | None    # TUNESERVE_DEVICE_MEMORY_GIB (or the size asked of `tuneserve plan`)
    bf16: bool               # the GPU computes in bf16 (Ampere and newer); False on the CPU

    @property
    def budget_bytes(self) -> int:
        return min(self.free_bytes, self.cap_bytes) if self.cap_bytes is not None else self.free_bytes

    def describe(self) -> str:
        where = "this GPU" if self.kind == "cuda" else "this machine"
        text = f"{where} has {self.budget_bytes / GIB:.1f} GiB free"
        if self.cap_bytes is not None and self.cap_bytes < self.free_bytes:
            text += f" to use (TUNESERVE_DEVICE_MEMORY_GIB caps it; {self.free_bytes / GIB:.1f} GiB are free)"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "free_gib": round(self.free_bytes / GIB, 2),
                "total_gib": round(self.total_bytes / GIB, 2),
                "cap_gib": round(self.cap_bytes / GIB, 2) if self.cap_bytes is not None else None,
                "budget_gib": round(self.budget_bytes / GIB, 2), "bf16": self.bf16}


def gpu_of_size(memory_gib: float, *, bf16: bool = True) -> DeviceMemory:
    """A GPU that does not exist here: what `tuneserve plan --gpu-memory N` plans for."""
    size = int(memory_gib * GIB)
    return DeviceMemory(kind="cuda", name=f"a GPU with {memory_gib:g} GiB", free_bytes=size, total_bytes=size,
                        cap_bytes=None, bf16=bf16)


def measure(device: Any, cap_gib: float | None) -> DeviceMemory:
    """The free memory of a torch.device now, under the cap."""
    import torch

    cap = int(cap_gib * GIB) if cap_gib is not None else None
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return DeviceMemory(kind="cuda", name=torch.cuda.get_device_name(device), free_bytes=int(free),
                            total_bytes=int(total), cap_bytes=cap, bf16=torch.cuda.is_bf16_supported())
    available, total = _cpu_memory()
    return DeviceMemory(kind="cpu", name="cpu", free_bytes=available, total_bytes=total, cap_bytes=cap,
                        bf16=False)


def apply_memory_cap(device: Any, cap_gib: float | None) -> None:
    """Make the cap binding on CUDA: the caching allocator raises OutOfMemoryError past it, so a
    worker and the API's /predict can share one GPU. (On the CPU the cap is only planned for.)"""
    import torch

    if cap_gib is None or device.type != "cuda":
        return
    _, total = torch.cuda.mem_get_info(device)
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * GIB / total), device)


def _cpu_memory() -> tuple[int, int]:
    """(available, total) bytes of RAM: /proc/meminfo where there is one (Linux)."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        fields = {}
        for line in meminfo.read_text().splitlines():
            key, _, value = line.partition(":")
            parts = value.split()
            if parts and parts[0].isdigit():
                fields[key] = int(parts[0]) * 1024  # kB
        if "MemAvailable" in fields and "MemTotal" in fields:
            return fields["MemAvailable"], fields["MemTotal"]
    import os

    pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return pages * size, pages * size
