"""The ``neurogate`` command line, in-process, and the log format it configures."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from neurogate import cli
from neurogate.logging import JsonFormatter, TextFormatter
from neurogate.settings import get_settings


@pytest.fixture
def node_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEUROGATE_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # no stray .env
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_db_upgrade_then_studies_lists_nothing(
    node_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["db", "upgrade"]) == 0
    assert (node_env / "neurogate.sqlite").exists()
    assert cli.main(["studies"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{'STUDY INSTANCE UID':<64}  {'STATUS':<9}  REV  SERIES  INSTANCES  LAST RECEIVED"
    ]


def test_unknown_command_is_a_usage_error(node_env: Path) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("neurogate.test", logging.INFO, __file__, 1, "stored", None, None)
    record.__dict__.update(extra)
    return record


def test_log_lines_carry_the_identifiers_passed_in_extra() -> None:
    entry = json.loads(JsonFormatter().format(_record(study="1.2.3", calling_ae="MRI_1")))
    assert entry["message"] == "stored" and entry["level"] == "INFO"
    assert entry["study"] == "1.2.3" and entry["calling_ae"] == "MRI_1"
    text = TextFormatter("%(message)s").format(_record(study="1.2.3"))
    assert text == "stored study=1.2.3"
