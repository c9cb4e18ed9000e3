"""The engine seam (``LISTENER__ENGINE``): stock on pynetdicom's public API, fast when its pins
match, auto falling back to stock with one warning, fast refusing to start without them."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from pynetdicom.transport import ThreadedAssociationServer

from dicom_listener import reactor
from dicom_listener.engines import EngineUnavailable, choose_engine
from neurogate.cli import service_problems
from tests.conftest import make_settings
from tests.dicomgen import write_mr_study
from tests.harness import REPO, event_reader, requires_fast_engine, running_listener, storescu
from tests.test_listener import dataset_bytes, stored_path

FALLBACK = "fast listener engine unavailable, running the stock engine"


@pytest.fixture
def other_pynetdicom(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pynetdicom release the fast engine was not derived from."""
    monkeypatch.setattr(reactor, "SUPPORTED_PYNETDICOM", "3.0.0")


@pytest.mark.parametrize("chunked_receive", [True, False], ids=["chunked", "in-memory"])
def test_the_stock_engine_stores_byte_for_byte_on_pynetdicoms_own_server(
    tmp_path: Path, sqlite_url: str, chunked_receive: bool
) -> None:
    settings = make_settings(
        tmp_path / "node", sqlite_url, engine="stock", chunked_receive=chunked_receive
    )
    study = write_mr_study(tmp_path / "scanner", series=2, slices=3)
    with running_listener(settings) as service:
        assert service.engine == "stock"
        # pynetdicom's own server and associations, nothing of the fast engine's
        assert type(service._server) is ThreadedAssociationServer
        reader = event_reader(service._bus)
        result = storescu(service.address[1], study.files)
        assert result.returncode == 0, result.stderr
        (event,) = reader.wait(1)
    assert event.instance_count == len(study.files)
    for source in study.files:
        assert dataset_bytes(stored_path(settings, source)) == dataset_bytes(source)
    assert list(settings.storage_root.joinpath("tmp").iterdir()) == []


def test_auto_runs_stock_with_one_warning_when_the_fast_pins_differ(
    tmp_path: Path, sqlite_url: str, other_pynetdicom: None, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path / "node", sqlite_url, engine="auto")
    study = write_mr_study(tmp_path / "scanner", series=1, slices=2)
    with (
        caplog.at_level(logging.WARNING, logger="dicom_listener"),
        running_listener(settings) as service,
    ):
        assert service.engine == "stock"
        assert type(service._server) is ThreadedAssociationServer
        assert storescu(service.address[1], study.files).returncode == 0
    warnings = [r for r in caplog.records if r.getMessage() == FALLBACK]
    assert len(warnings) == 1
    assert "3.0.0" in str(warnings[0].__dict__["reason"])
    for source in study.files:
        assert dataset_bytes(stored_path(settings, source)) == dataset_bytes(source)


def test_fast_refuses_to_start_when_its_pins_differ(
    tmp_path: Path, sqlite_url: str, other_pynetdicom: None
) -> None:
    settings = make_settings(tmp_path / "node", sqlite_url, engine="fast")
    (problem,) = [p for p in service_problems(settings, ["listener"]) if "ENGINE" in p.variable]
    assert problem.variable == "NEUROGATE_LISTENER__ENGINE"
    assert "3.0.0" in problem.message
    with pytest.raises(EngineUnavailable, match="LISTENER__ENGINE=fast"):
        choose_engine(settings.listener.engine)


@requires_fast_engine
def test_auto_runs_fast_when_its_pins_match(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(tmp_path / "node", sqlite_url, engine="auto")
    with running_listener(settings) as service:
        assert service.engine == "fast"
        assert type(service._server) is not ThreadedAssociationServer


def test_the_listener_imports_nothing_of_the_fast_engine_until_it_runs() -> None:
    code = (
        "import sys, dicom_listener.service, dicom_listener.scp;"
        "print(sorted(m for m in sys.modules if m.startswith('dicom_listener.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    loaded = result.stdout
    assert "dicom_listener.scp" in loaded
    for fast in ("reactor", "fast_store", "dimse_fast"):
        assert f"dicom_listener.{fast}'" not in loaded
