"""Accelerator kinds a run is planned for: memory per device, datasheet bfloat16 peak, devices
per host. Plain numbers (no jax), so the command line can list them."""

from __future__ import annotations

import dataclasses
import re

from flax_distil.errors import FlaxDistilError

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class DeviceKind:
    name: str
    memory: float  # bytes
    peak_flops: float  # dense bfloat16 FLOP/s (datasheet)
    per_host: int  # accelerators per host


DEVICES = {
    "h100-80gb": DeviceKind("NVIDIA H100 80GB", 80 * GIB, 989e12, 8),
    "h200": DeviceKind("NVIDIA H200", 141e9, 989e12, 8),
    "a100-40gb": DeviceKind("NVIDIA A100 40GB", 40 * GIB, 312e12, 8),
    "a100-80gb": DeviceKind("NVIDIA A100 80GB", 80 * GIB, 312e12, 8),
    "v4": DeviceKind("TPU v4", 32 * GIB, 275e12, 4),
    "v5e": DeviceKind("TPU v5e", 16 * GIB, 197e12, 4),
    "v5p": DeviceKind("TPU v5p", 95 * GIB, 459e12, 4),
}


def memory_size(text: str) -> float:
    """Bytes of a size written as 80GiB, 141GB, 16384MiB."""
    match = re.fullmatch(r"\s*([\d.]+)\s*(GiB|GB|MiB|MB)\s*", text)
    if not match:
        raise FlaxDistilError(f"memory size {text!r}: write it as 80GiB, 141GB or 16384MiB")
    units = {"GiB": GIB, "GB": 1e9, "MiB": 2**20, "MB": 1e6}
    return float(match.group(1)) * units[match.group(2)]
