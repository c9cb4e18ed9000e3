"""Kill the listener mid-study (SIGKILL, no clean shutdown), restart it, finish sending."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from neurogate.bus import open_bus
from neurogate.storage import InstanceStore, StoreOutcome
from tests.conftest import free_port, make_settings
from tests.dicomgen import write_mr_study
from tests.harness import (
    ListenerProcess,
    event_reader,
    running_listener,
    storescu,
    study_row,
    wait_for,
)

pytestmark = pytest.mark.dcmtk


def test_killed_mid_study_the_study_completes_once_with_every_instance(
    tmp_path: Path, database_url: str
) -> None:
    # The quiet period must outlast the restart: the resumed timer counts from the newest file,
    # and a study quiet for 2 s by the time a loaded machine has restarted the listener is
    # complete, by design, before the rest arrives (it then reopens as revision 2).
    settings = make_settings(
        tmp_path / "node", database_url, port=free_port(), study_quiet_seconds=10.0
    )
    study = write_mr_study(tmp_path / "scanner", series=3, slices=5)
    first, rest = study.files[:7], study.files[7:]
    listener = ListenerProcess(settings, tmp_path / "listener.log")
    bus = open_bus(settings.bus, settings.embedded_bus_path)
    reader = event_reader(bus)
    try:
        listener.start()
        assert storescu(settings.listener.port, first).returncode == 0
        listener.kill()
        row = study_row(settings, study.study_uid)
        assert row is not None and row.status == "receiving"

        listener.start()
        assert storescu(settings.listener.port, rest).returncode == 0
        (event,) = reader.wait(1, timeout=60)
        assert listener.terminate() == 0
    finally:
        if listener.proc and listener.proc.poll() is None:
            listener.kill()

    assert event.study_instance_uid == study.study_uid
    assert event.revision == 1
    assert event.instance_count == 15
    assert [s.instance_count for s in event.series] == [5, 5, 5]
    assert reader.drain(timeout_s=0.5) == [event]
    bus.close()


def test_a_study_interrupted_by_a_crash_completes_after_restart_without_more_data(
    tmp_path: Path, sqlite_url: str
) -> None:
    settings = make_settings(
        tmp_path / "node", sqlite_url, port=free_port(), study_quiet_seconds=2.0
    )
    study = write_mr_study(tmp_path / "scanner", series=1, slices=4)
    listener = ListenerProcess(settings, tmp_path / "listener.log")
    bus = open_bus(settings.bus, settings.embedded_bus_path)
    reader = event_reader(bus)
    try:
        listener.start()
        assert storescu(settings.listener.port, study.files).returncode == 0
        listener.kill()
        listener.start()
        (event,) = reader.wait(1, timeout=60)
        wait_for(lambda: (row := study_row(settings, study.study_uid)) and row.status == "complete")
        listener.terminate()
    finally:
        if listener.proc and listener.proc.poll() is None:
            listener.kill()
    assert event.instance_count == 4
    bus.close()


def test_an_instance_stored_but_not_recorded_before_a_crash_completes_its_study_when_resent(
    tmp_path: Path, sqlite_url: str
) -> None:
    """The window between an instance's file being published and its study being recorded: a
    listener that dies there never answered, so the sender resends an
    instance the store already holds. Its study must still be received and announced."""
    settings = make_settings(tmp_path / "node", sqlite_url, study_quiet_seconds=1.0)
    (source,) = write_mr_study(tmp_path / "scanner", series=1, slices=1).files
    ds = dcmread(source, stop_before_pixels=True)
    store = InstanceStore(settings.storage_root)
    tmp = store.tmp_dir / "crashed.part"
    tmp.write_bytes(source.read_bytes())
    outcome = store.commit(tmp, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert outcome is StoreOutcome.STORED
    with running_listener(settings) as service:
        reader = event_reader(service._bus)
        assert storescu(service.address[1], [source]).returncode == 0
        (event,) = reader.wait(1, timeout=30)
    assert event.study_instance_uid == ds.StudyInstanceUID and event.instance_count == 1
