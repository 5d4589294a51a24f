"""What machine and software a result came from: one description for the report, the performance
stage's fingerprint and the benchmarks."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def software() -> dict:
    import torch

    from . import __version__

    return {
        "release_kit": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }


def summary() -> str:
    """One line for benchmark results: CPU, cores, GPU, Python and torch."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu_model()}, {os.cpu_count()} cores, {gpu}, Python {platform.python_version()}, torch {torch.__version__}"


def available_memory_bytes() -> int | None:
    """Memory the kernel could give this process now without swapping: the least of Linux's MemAvailable
    and the room left under its cgroup's limit (a container's: MemAvailable is the host's, and the container
    is killed at its own limit); elsewhere the free physical pages; None where none is known."""
    known = [room for room in (_meminfo_available(), _cgroup_room()) if room is not None]
    if known:
        return min(known)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# A cgroup's memory limit and use, as a container sees its own: cgroup v2, then v1 (whose "no limit" is a
# number near 2**63).
_CGROUP_MEMORY = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                  ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def _cgroup_room() -> int | None:
    for limit_file, usage_file in _CGROUP_MEMORY:
        try:
            with open(limit_file) as limit, open(usage_file) as usage:
                text, used = limit.read().strip(), int(usage.read().strip())
        except (OSError, ValueError):
            continue
        if text == "max" or int(text) >= 2**60:
            return None
        return max(int(text) - used, 0)
    return None
