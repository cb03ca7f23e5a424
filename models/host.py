"""Facts about the machine, read without importing torch (cheap in any worker)."""

from __future__ import annotations

import os

__all__ = ["host_available_memory", "process_memory_mb"]


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


def process_memory_mb() -> dict:
    """This process's current and peak RSS (``VmRSS``, ``VmHWM``) and their anonymous and
    file-backed parts (``RssAnon``, ``RssFile``: mapped index pages count there), in MB (Linux)."""
    fields = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    fields[key] = round(int(value.split()[0]) / 1024, 1)
    except OSError:
        pass
    return fields
