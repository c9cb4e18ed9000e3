"""What the listener's log says about associations: why one was rejected, and what each
association brought when it ended. In-process peers (pynetdicom), no dcmtk."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config

from dicom_listener.service import ListenerService
from dicom_listener.status import Status
from neurogate.settings import Settings
from tests.conftest import make_settings
from tests.dicomgen import write_mr_study
from tests.harness import running_listener, wait_for

VERIFICATION = "1.2.840.10008.1.1"


@pytest.fixture(params=["fast-store", "pynetdicom-store"])
def settings(request: pytest.FixtureRequest, tmp_path: Path, sqlite_url: str) -> Settings:
    return make_settings(
        tmp_path / "node",
        sqlite_url,
        fast_store=request.param == "fast-store",
        allowed_calling_ae_titles=["SCANNER"],
    )


@pytest.fixture
def listener(settings: Settings, caplog: pytest.LogCaptureFixture) -> Iterator[ListenerService]:
    caplog.set_level(logging.INFO, logger="dicom_listener.scp")
    with running_listener(settings) as service:
        yield service


def _records(caplog: pytest.LogCaptureFixture, prefix: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(prefix)]


def _associate(port: int, *, calling: str = "SCANNER", called: str = "NEUROGATE"):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=calling)
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4", ExplicitVRLittleEndian)  # MR
    return ae.associate("127.0.0.1", port, ae_title=called)


def test_a_rejection_is_logged_with_its_reason_and_both_ae_titles(
    listener: ListenerService, caplog: pytest.LogCaptureFixture
) -> None:
    port = listener.address[1]
    assert _associate(port, calling="ECHOSCU").is_rejected
    assert _associate(port, called="SOMEONE").is_rejected

    wait_for(lambda: len(_records(caplog, "association rejected")) == 2 or None)
    logged = [
        (r.getMessage(), r.result, r.calling_ae, r.called_ae, r.our_ae)  # type: ignore[attr-defined]
        for r in _records(caplog, "association rejected")
    ]
    assert logged == [
        (
            "association rejected: calling AE title not recognised",
            "permanent",
            "ECHOSCU",
            "NEUROGATE",
            "NEUROGATE",
        ),
        (
            "association rejected: called AE title not recognised",
            "permanent",
            "SCANNER",
            "SOMEONE",
            "NEUROGATE",
        ),
    ]
    for record in _records(caplog, "association rejected"):
        assert record.peer.startswith("127.0.0.1:")  # type: ignore[attr-defined]
        assert record.levelno == logging.WARNING


def test_the_association_limit_is_logged_as_a_transient_rejection(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dicom_listener.scp")
    settings = make_settings(tmp_path / "node", sqlite_url, max_associations=1)
    with running_listener(settings) as service:
        held = _associate(service.address[1], calling="HOLDER")
        assert held.is_established
        assert _associate(service.address[1]).is_rejected
        held.release()
        [record] = wait_for(lambda: _records(caplog, "association rejected") or None)
    assert record.getMessage() == "association rejected: local limit exceeded"
    assert (record.result, record.calling_ae, record.called_ae) == (  # type: ignore[attr-defined]
        "transient",
        "SCANNER",
        "NEUROGATE",
    )


def test_each_association_end_is_logged_with_what_it_brought(
    tmp_path: Path, listener: ListenerService, caplog: pytest.LogCaptureFixture
) -> None:
    port = listener.address[1]
    study = write_mr_study(tmp_path / "scanner", series=1, slices=2)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(study.files[0].read_bytes()[:-700])

    first = _associate(port)
    for path in study.files:
        assert first.send_c_store(dcmread(path)).Status == Status.SUCCESS
    first.release()
    ended = wait_for(lambda: _records(caplog, "association released") or None)

    second = _associate(port)
    for path in study.files:  # the same instances again
        assert second.send_c_store(dcmread(path)).Status == Status.SUCCESS
    previous, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        assert second.send_c_store(truncated).Status == Status.CANNOT_UNDERSTAND
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    second.abort()
    wait_for(lambda: _records(caplog, "association aborted") or None)

    [ended] = _records(caplog, "association released")
    [aborted] = _records(caplog, "association aborted")
    counts = ("instances", "stored", "duplicates", "conflicts", "refused", "calling_ae")
    assert {k: getattr(ended, k) for k in counts} == {
        "instances": 2,
        "stored": 2,
        "duplicates": 0,
        "conflicts": 0,
        "refused": 0,
        "calling_ae": "SCANNER",
    }
    assert {k: getattr(aborted, k) for k in counts} == {
        "instances": 2,
        "stored": 0,
        "duplicates": 2,
        "conflicts": 0,
        "refused": 1,
        "calling_ae": "SCANNER",
    }
    assert ended.levelno == logging.INFO and aborted.levelno == logging.WARNING
