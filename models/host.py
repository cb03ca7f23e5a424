"""Facts about the machine, read without importing torch (cheap in any worker)."""

from __future__ import annotations

import os

__all__ = ["host_available_memory"]


def host_available_memory() -> int:
    """Bytes of this machine's memory available to new allocations (Linux ``MemAvailable``, else
    the free physical pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
