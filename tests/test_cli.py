"""The ``neurogate`` command line, in-process, and the log format it configures."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from api.security import PasswordHasher
from neurogate import cli
from neurogate.db import create_db_engine, session_factory
from neurogate.db.models import User
from neurogate.logging import JsonFormatter, TextFormatter, configure_logging
from neurogate.settings import get_settings


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """configure_logging changes process-wide state; later tests get it back as it was."""
    root = logging.getLogger()
    names = ("alembic.runtime.plugins", "highdicom", "pynetdicom", "kafka")
    handlers, level = root.handlers[:], root.level
    levels = {n: logging.getLogger(n).level for n in names}
    routine_filters = logging.getLogger("alembic.runtime.migration").filters[:]
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)
    logging.getLogger("alembic.runtime.migration").filters[:] = routine_filters


@pytest.fixture
def node_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restored_logging: None) -> Path:
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


def test_db_upgrade_then_studies_lists_nothing_and_names_the_database(
    node_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["db", "upgrade"]) == 0
    capsys.readouterr()
    assert cli.main(["studies"]) == 0
    assert capsys.readouterr().err == f"database: sqlite {node_env / 'neurogate.sqlite'}\n"


@pytest.mark.parametrize("command", [["studies"], ["users", "create-admin", "root"]])
def test_commands_that_read_state_refuse_to_create_a_database(
    node_env: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    elsewhere = node_env / "elsewhere"
    elsewhere.mkdir()
    os.chdir(elsewhere)  # the node's data dir is relative, as by default: var/ of the cwd
    os.environ["NEUROGATE_DATA_DIR"] = "var"
    get_settings.cache_clear()

    assert cli.main(command) == cli.EX_FAILURE

    err = capsys.readouterr().err
    assert err.startswith(f"neurogate: no database at sqlite {elsewhere}/var/neurogate.sqlite")
    assert "NEUROGATE_DATA_DIR=var" in err and "neurogate db upgrade" in err
    assert not (elsewhere / "var").exists()


def test_studies_refuses_a_database_without_the_schema(
    node_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sqlite3.connect(node_env / "neurogate.sqlite").close()  # an empty file
    assert cli.main(["studies"]) == cli.EX_FAILURE
    assert "holds no NeuroGate schema" in capsys.readouterr().err


def test_invalid_settings_are_one_line_per_variable_before_anything_starts(
    node_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEUROGATE_API__ADMIN_PASSWORD", "short-pw")
    monkeypatch.setenv("NEUROGATE_LISTENER__PORT", "eleven")
    monkeypatch.setenv("NEUROGATE_EXPORT__DESTINATIONS", '[{"name": "pacs"')
    monkeypatch.setattr(cli, "cmd_services", _must_not_run)
    get_settings.cache_clear()

    assert cli.main(["run"]) == cli.EX_CONFIG

    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0] == "neurogate: the settings are not valid (environment or .env):"
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["NEUROGATE_EXPORT__DESTINATIONS"]
    monkeypatch.delenv("NEUROGATE_EXPORT__DESTINATIONS")
    get_settings.cache_clear()

    assert cli.main(["run"]) == cli.EX_CONFIG

    lines = capsys.readouterr().err.splitlines()
    assert sorted(line.split(":")[0].strip() for line in lines[1:]) == [
        "NEUROGATE_API__ADMIN_PASSWORD",
        "NEUROGATE_LISTENER__PORT",
    ]
    assert "at least 10 characters" in err + "\n".join(lines)
    assert "short-pw" not in "\n".join(lines)  # secrets are never echoed
    assert "Traceback" not in err


def test_unknown_and_removed_settings_are_refused_before_anything_starts(
    node_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEUROGATE_LISTENER__PORTT", "11113")
    monkeypatch.setenv("NEUROGATE_LISTENER__PORT", "eleven")  # and a value that does not parse
    monkeypatch.setenv("NEUROGATE_TEST_POSTGRES_URL", "postgresql://elsewhere/x")  # left alone
    monkeypatch.setenv("NEUROGATE_OHIF_DIR", str(node_env))
    (node_env / ".env").write_text("NEUROGATE_LISTENER__PROCESSES=2\nPOSTGRES_PASSWORD=x\n")
    monkeypatch.setattr(cli, "cmd_services", _must_not_run)
    get_settings.cache_clear()

    assert cli.main(["listener"]) == cli.EX_CONFIG

    err = capsys.readouterr().err
    assert err.splitlines() == [
        "neurogate: the settings are not valid (environment or .env):",
        "  NEUROGATE_LISTENER__PORTT: not a setting; did you mean NEUROGATE_LISTENER__PORT?",
        "  NEUROGATE_LISTENER__PROCESSES (in .env): removed on 2026-12-03 with the receiver "
        "processes, which measured no gain (README, Benchmarks: Engines); unset it",
        "  NEUROGATE_LISTENER__PORT: Input should be a valid integer, unable to parse string as "
        "an integer (got 'eleven')",
    ]
    monkeypatch.delenv("NEUROGATE_LISTENER__PORTT")
    monkeypatch.delenv("NEUROGATE_LISTENER__PORT")
    (node_env / ".env").write_text("POSTGRES_PASSWORD=x\n")  # compose's, not the node's
    get_settings.cache_clear()

    assert cli.main(["db", "upgrade"]) == 0


def test_what_would_stop_a_service_is_reported_before_it_starts(
    node_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEUROGATE_PROFILE", "production")
    monkeypatch.setenv("NEUROGATE_MODELS__SEGMENTATION", str(node_env / "missing.toml"))
    monkeypatch.setattr(cli, "cmd_services", _must_not_run)
    get_settings.cache_clear()

    assert cli.main(["api"]) == cli.EX_CONFIG
    assert (
        capsys.readouterr()
        .err.splitlines()[1]
        .startswith("  NEUROGATE_API__JWT_SECRET: must be set to at least 32 characters")
    )
    assert cli.main(["worker"]) == cli.EX_CONFIG
    assert capsys.readouterr().err.splitlines()[1:] == [
        f"  NEUROGATE_MODELS__SEGMENTATION: no file {node_env / 'missing.toml'}"
    ]


def test_a_worker_refuses_to_start_where_it_cannot_write_its_heartbeat(
    node_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    read_only = node_env / "read-only"  # as a read-only root filesystem is, even for root
    read_only.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != read_only and access(p, mode))
    monkeypatch.setenv("NEUROGATE_DATA_DIR", str(read_only))
    monkeypatch.setenv("NEUROGATE_DATABASE_URL", "postgresql+psycopg2://db/neurogate")
    monkeypatch.setenv("NEUROGATE_BUS__BACKEND", "kafka")
    monkeypatch.setenv("NEUROGATE_STORAGE_DIR", str(node_env / "dicom"))
    monkeypatch.setattr(cli, "cmd_services", _must_not_run)
    get_settings.cache_clear()

    assert cli.main(["worker"]) == cli.EX_CONFIG
    assert capsys.readouterr().err.splitlines()[1:] == [
        f"  NEUROGATE_DATA_DIR: {read_only} is not writable (the worker's heartbeat)"
    ]


def test_a_port_in_use_is_reported_before_the_service_starts(
    node_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("NEUROGATE_LISTENER__HOST", "127.0.0.1")
        monkeypatch.setenv("NEUROGATE_LISTENER__PORT", str(port))
        monkeypatch.setattr(cli, "cmd_services", _must_not_run)
        get_settings.cache_clear()

        assert cli.main(["listener"]) == cli.EX_CONFIG
    assert capsys.readouterr().err.splitlines()[1] == (
        f"  NEUROGATE_LISTENER__PORT: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def _must_not_run(*_args: object) -> int:
    raise AssertionError("started despite invalid settings")


def test_users_create_admin(
    node_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.main(["db", "upgrade"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("root-password-1\n"))
    assert cli.main(["users", "create-admin", "root", "--password-stdin"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert cli.main(["users", "create-admin", "other", "--password-stdin"]) == cli.EX_FAILURE
    assert "at least 10 characters" in capsys.readouterr().err

    engine = create_db_engine(get_settings().sqlalchemy_url)
    with session_factory(engine)() as session:
        users = session.scalars(select(User)).all()
        assert [(u.username, u.role, u.active) for u in users] == [("root", "admin", True)]
        assert PasswordHasher().verify("root-password-1", users[0].password_hash)
    engine.dispose()


def test_analyze_names_a_missing_or_empty_folder(
    node_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["analyze", str(node_env / "nowhere")]) == cli.EX_FAILURE
    assert capsys.readouterr().err == f"neurogate: analyze: {node_env / 'nowhere'} does not exist\n"
    (node_env / "empty").mkdir()
    assert cli.main(["analyze", str(node_env / "empty")]) == cli.EX_FAILURE
    assert capsys.readouterr().err == f"neurogate: analyze: {node_env / 'empty'} holds no files\n"
    (node_env / "empty" / "notes.txt").write_text("not DICOM")
    assert cli.main(["analyze", str(node_env / "empty")]) == cli.EX_FAILURE
    err = capsys.readouterr().err
    assert err.startswith("neurogate: analyze: ") and "Traceback" not in err


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


def test_uvicorns_colour_copy_of_a_message_is_not_an_extra() -> None:
    record = _record(color_message="\x1b[32mstored\x1b[0m", study="1.2.3")
    entry = json.loads(JsonFormatter().format(record))
    assert "color_message" not in entry and entry["study"] == "1.2.3"
    assert "\x1b" not in TextFormatter("%(message)s").format(record)


def test_routine_library_lines_are_kept_out_of_the_log(
    node_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", "text")
    logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
    logging.getLogger("alembic.runtime.migration").info("Running upgrade 0001 -> 0002")
    logging.getLogger("alembic.runtime.plugins").info("setup plugin alembic.autogenerate")
    logging.getLogger("highdicom.base").info('copy attributes of module "Patient"')
    logging.getLogger("neurogate.test").info("stored")

    lines = [line.split(" ", 3)[3] for line in capsys.readouterr().err.splitlines()]
    assert lines == [
        "alembic.runtime.migration: Running upgrade 0001 -> 0002",
        "neurogate.test: stored",
    ]
