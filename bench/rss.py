"""A process's own peak RSS, from the standard library only: a measured child can import it without adding the
benchmarks' imports to what it measures."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """This process's own peak RSS. Linux's ru_maxrss survives exec: a child of a big process (pytest late in a
    suite) starts with its parent's high-water mark, so the per-mm VmHWM is read where there is one."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
