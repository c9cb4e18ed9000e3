"""The largest PDU the listener advertises: engine-independent (both engines' AE uses it)."""

from __future__ import annotations

import contextlib
import resource
from pathlib import Path

# The largest P-DATA-TF PDU accepted, whatever MAX_PDU_SIZE says (and the largest advertised)
PDU_CEILING = 16 << 20
# Never advertised smaller than this (pynetdicom's own default is 16382)
MIN_PDU_SIZE = 16 << 10
# A PDU being read is held about twice: its buffer, and the PDU it is appended to
_PDU_COPIES = 2


def memory_limit_bytes() -> int | None:
    """The memory this process may use, if limited: its address-space limit (``RLIMIT_AS``) or
    its cgroup's ``memory.max``, whichever is lower; ``None`` when neither is set."""
    limits = []
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft)
    with contextlib.suppress(OSError, ValueError):
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if text != "max":
            limits.append(int(text))
    return min(limits) if limits else None


def accepted_pdu_size(configured: int, max_associations: int) -> int:
    """The largest P-DATA-TF PDU the listener advertises and accepts.

    ``configured`` (``MAX_PDU_SIZE``; 0: no wish of its own), never more than ``PDU_CEILING``,
    nor more than a share of the process's memory limit that leaves every association room
    for a PDU being read and a copy of it, with half the memory left for everything else.
    """
    size = min(configured or PDU_CEILING, PDU_CEILING)
    memory = memory_limit_bytes()
    if memory is not None:
        size = min(size, memory // (2 * _PDU_COPIES * max(max_associations, 1)))
    return max(size, MIN_PDU_SIZE)
