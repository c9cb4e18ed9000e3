"""``neurogate demo``: a study sent as a modality sends one, against a listener in-process."""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from neurogate import cli, demo
from neurogate.settings import get_settings
from tests.conftest import make_settings
from tests.dicomgen import write_mr_study
from tests.harness import event_reader, running_listener


def test_the_demo_sends_inside_an_mpps_step_so_the_study_completes_at_once(
    tmp_path: Path, sqlite_url: str
) -> None:
    # A quiet period far beyond the test's patience: only the MPPS step can complete it.
    settings = make_settings(tmp_path / "node", sqlite_url, study_quiet_seconds=600)
    study = write_mr_study(tmp_path / "scanner", series=2, slices=3)
    with running_listener(settings) as service:
        reader = event_reader(service._bus)
        host, port = service.address
        demo.check_node(host=host, port=port, called_ae="NEUROGATE")

        sent = demo.send_study(tmp_path / "scanner", host=host, port=port, called_ae="NEUROGATE")

        [event] = reader.wait(1, timeout=20)
    assert (sent.study_instance_uid, sent.instances, sent.series, sent.refused) == (
        study.study_uid,
        6,
        2,
        0,
    )
    assert event.study_instance_uid == study.study_uid
    assert event.trigger == "mpps" and event.instance_count == 6
    assert event.calling_ae_titles == [demo.CALLING_AE_TITLE]


@pytest.fixture
def node_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("NEUROGATE_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    pynetdicom_level = logging.getLogger("pynetdicom").level  # the demo quietens it
    yield tmp_path
    logging.getLogger("pynetdicom").setLevel(pynetdicom_level)
    get_settings.cache_clear()


def test_the_demo_without_a_node_says_how_to_start_one(
    node_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert cli.main(["demo", "--host", "127.0.0.1", "--port", str(port)]) == cli.EX_FAILURE
    err = capsys.readouterr().err
    assert err == (
        f"neurogate: demo: no DICOM node answers at 127.0.0.1:{port}: start one "
        "(./scripts/run, or `.venv/bin/neurogate run`) or give its address with --host/--port\n"
    )
    assert not (node_env / "demo").exists()  # nothing made for a node that is not there


def test_the_demo_without_the_generator_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "models.synthetic.case", None)  # as if nibabel were missing
    with pytest.raises(demo.DemoFailed, match=r"scripts/setup, or .*\[synthetic\]"):
        demo.make_study(tmp_path, seed=0, tumour_type="glioma", voxel_mm=2.0)


def test_the_synthetic_generator_explains_its_options() -> None:
    from models.synthetic.__main__ import build_parser

    parser = build_parser()
    assert parser.prog == "python -m models.synthetic"
    for action in parser._actions:
        assert action.help, action.option_strings
