"""Which CPUs the listener's associations run on (``listener.cpus``).

A Python process runs Python on one core at a time, and every system call of an association's
thread lets another take the interpreter lock. When those threads are spread over cores, each
hand-off wakes a thread on another core (an inter-processor interrupt, dear in a virtual
machine); on one core it is a plain switch. With four associations on two cores the listener
spent 13-25 % less CPU per instance with its associations kept on one core, at the same rate
(README, ingest benchmark).
"""

from __future__ import annotations

import os
from collections.abc import Collection


def available_cpus() -> frozenset[int]:
    """The CPUs this process may run on."""
    return frozenset(os.sched_getaffinity(0))


def check_cpus(cpus: Collection[int]) -> None:
    """Refuse CPUs this process may not run on.

    Raises
    ------
    ValueError
        Naming the setting and the CPUs that are there.
    """
    missing = set(cpus) - available_cpus()
    if missing:
        raise ValueError(
            f"listener.cpus {sorted(missing)} not available to this process "
            f"(available: {sorted(available_cpus())})"
        )


def pin_this_thread(cpus: Collection[int]) -> None:
    """Run the calling thread, and the threads it starts from now on, on ``cpus`` only."""
    os.sched_setaffinity(0, set(cpus))
