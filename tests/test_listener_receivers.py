"""Receiver processes: associations spread over processes, one tracker, nothing lost to a crash."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dicom_listener.service import ListenerService
from dicom_listener.status import Status
from tests.conftest import make_settings
from tests.dicomgen import write_mr_study
from tests.harness import echo, event_reader, running_listener, storescu, wait_for

pytestmark = pytest.mark.dcmtk


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _dataset(path: Path) -> bytes:
    """What storescu sends of a file: the data set after the file meta."""
    data = path.read_bytes()
    return data[144 + int.from_bytes(data[140:144], "little") :]


def _stored(service: ListenerService) -> list[Path]:
    return sorted(service.store.root.joinpath("studies").rglob("*.dcm"))


def test_associations_are_spread_over_receivers_reporting_to_one_tracker(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path / "node", database_url, processes=2)
    study = write_mr_study(tmp_path / "scanner", series=4, slices=6, size=64)
    with running_listener(settings) as service:
        assert service.receivers is not None
        pids = list(service.receivers.pids().values())
        reader = event_reader(service._bus)
        port = service.address[1]
        # One association per series, two at a time, as two scanners might send
        with ThreadPoolExecutor(2) as pool:
            results = list(
                pool.map(lambda uid: storescu(port, study.series_files(uid)), study.series_uids)
            )
        assert [r.returncode for r in results] == [0] * 4
        (event,) = reader.wait(1, timeout=30)
        per_receiver = service.receivers.instances()
        stored = {p.name: p for p in _stored(service)}

    # Every instance byte for byte, counted once, in one event for the study
    assert len(stored) == len(study.files) == 24
    for source in study.files:
        path = next(p for p in stored.values() if p.read_bytes().endswith(_dataset(source)))
        assert path.read_bytes()[-len(_dataset(source)) :] == _dataset(source)
    assert event.study_instance_uid == study.study_uid and event.instance_count == 24
    assert sorted(s.instance_count for s in event.series) == [6, 6, 6, 6]
    # Both receivers served associations (handed out in turn), and both have stopped
    assert sorted(per_receiver.values()) == [12, 12]
    wait_for(lambda: not any(_alive(pid) for pid in pids), timeout=30)


def test_a_receiver_killed_mid_study_is_replaced_and_the_study_completes_whole(
    tmp_path: Path, sqlite_url: str
) -> None:
    # Long enough a quiet period to cover the restart (delayed: the receiver dies young)
    settings = make_settings(tmp_path / "node", sqlite_url, processes=2, study_quiet_seconds=10)
    study = write_mr_study(tmp_path / "scanner", series=2, slices=5, size=64)
    first, second = study.series_uids
    with running_listener(settings) as service:
        assert service.receivers is not None
        reader = event_reader(service._bus)
        port = service.address[1]
        assert storescu(port, study.series_files(first)).returncode == 0
        victim, pid = next(iter(service.receivers.pids().items()))
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: service.receivers.pids()[victim] != pid, timeout=30)  # type: ignore[union-attr]
        wait_for(lambda: echo(port) == Status.SUCCESS, timeout=30)
        # The rest of the study, over as many associations as there are receivers
        for path in study.series_files(second):
            assert storescu(port, [path]).returncode == 0
        (event,) = reader.wait(1, timeout=60)
        restarts = service.receivers.restarts
        leftovers = list(service.store.tmp_dir.iterdir())

    assert restarts == 1
    assert event.instance_count == 10 and len(event.series) == 2
    assert leftovers == []
