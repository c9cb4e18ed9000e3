"""``listener.cpus``: the CPUs the associations' threads, or the receiver processes, run on."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from tests.conftest import make_settings
from tests.harness import running_listener, wait_for

CPUS = sorted(os.sched_getaffinity(0))
pytestmark = pytest.mark.skipif(len(CPUS) < 2, reason="pinned and unpinned look alike on one CPU")


def test_an_associations_threads_run_on_the_cpu_named_and_nothing_else_moves(
    tmp_path: Path, sqlite_url: str
) -> None:
    cpu = CPUS[-1]
    settings = make_settings(tmp_path / "node", sqlite_url, cpus=[cpu])
    with running_listener(settings) as service:
        assert service._server is not None
        server = service._server
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(MRImageStorage)
        requestor = ae.associate("127.0.0.1", service.address[1], ae_title="NEUROGATE")
        try:
            assert requestor.is_established
            wait_for(lambda: len(server.active_associations) == 1, timeout=10)
            (acceptor,) = server.active_associations
            pinned = {
                "association": os.sched_getaffinity(acceptor.native_id),
                "its network thread": os.sched_getaffinity(acceptor.dul.native_id),
            }
            # The sender's threads here, and this process's own, were started elsewhere
            elsewhere = {
                "requestor": os.sched_getaffinity(requestor.native_id),
                "main thread": os.sched_getaffinity(threading.main_thread().native_id),
            }
        finally:
            requestor.release()

    assert pinned == {"association": {cpu}, "its network thread": {cpu}}
    assert elsewhere == {"requestor": set(CPUS), "main thread": set(CPUS)}


def test_each_receiver_process_runs_on_its_cpu(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(tmp_path / "node", sqlite_url, processes=2, cpus=CPUS[:2])
    with running_listener(settings) as service:
        assert service.receivers is not None
        pids = service.receivers.pids()
        placed = {index: os.sched_getaffinity(pid) for index, pid in pids.items()}

    assert placed == {0: {CPUS[0]}, 1: {CPUS[1]}}


def test_a_cpu_this_process_may_not_use_is_refused_at_start(
    tmp_path: Path, sqlite_url: str
) -> None:
    settings = make_settings(tmp_path / "node", sqlite_url, cpus=[CPUS[-1] + 1000])
    with (
        pytest.raises(ValueError, match=r"listener.cpus \[\d+\] not available"),
        running_listener(settings),
    ):
        pass
