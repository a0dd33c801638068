"""Where computation runs: the number of CPU threads torch uses."""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(threads: int) -> int:
    """Use `threads` torch CPU threads (0 = every available core); call before any torch op."""
    import torch

    threads = threads or available_cores()
    torch.set_num_threads(threads)
    return threads
