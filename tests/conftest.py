"""Shared fixtures: databases (SQLite and a real PostgreSQL), settings, an in-process listener."""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from neurogate.db import create_db_engine, session_factory, upgrade_to_head
from neurogate.settings import BusSettings, ListenerSettings, Settings

# The Kafka-protocol broker fixtures (tansu_broker, kafka_settings); the shared models and
# glioma study (models, glioma).
pytest_plugins = ["tests.kafka_broker", "tests.studies"]

POSTGRES_URL = os.environ.get(
    "NEUROGATE_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
DCMTK_TOOLS = ("storescu", "echoscu")
# The listener engine the listener tests run on (scripts/test runs them on both); tests of one
# engine's own parts ask for it by name.
LISTENER_ENGINE = os.environ.get("NEUROGATE_TEST_LISTENER_ENGINE", "auto")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """dcmtk is installed by scripts/setup; a missing tool is a failure, not a skip.

    Every test has an ID of its own: schemathesis names its items after the API operation but
    gives them all the test function's ID, and pytest-xdist's per-module scheduling (scripts/test
    runs ``-n 2 --dist loadfile``) keeps one test per ID, so it would run one operation of 44.
    """
    missing = [tool for tool in DCMTK_TOOLS if shutil.which(tool) is None]
    if missing and any(item.get_closest_marker("dcmtk") for item in items):
        raise pytest.UsageError(f"dcmtk tools missing: {missing}; run scripts/setup --test")
    for item in items:
        if item.parent is not None and not item.nodeid.endswith(f"::{item.name}"):
            # As pytest builds a node's ID from its name (Node.__init__).
            item._id = item.parent.id.child(item.name)
    seen: set[str] = set()
    shared = {item.nodeid for item in items if item.nodeid in seen or seen.add(item.nodeid)}
    if shared:
        raise pytest.UsageError(f"tests with the same ID (xdist would run one): {sorted(shared)}")


@pytest.fixture(autouse=True)
def _pynetdicom_receive_switch() -> Iterator[None]:
    """The stock engine sets pynetdicom's process-wide receive switch (a process runs one
    listener; a test process, many): each test starts from pynetdicom's default."""
    from pynetdicom import _config

    previous = _config.STORE_RECV_CHUNKED_DATASET
    yield
    _config.STORE_RECV_CHUNKED_DATASET = previous


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    return POSTGRES_URL


def _create_postgres_database(server_url: str) -> tuple[str, Callable[[], None]]:
    url = make_url(server_url)
    name = f"neurogate_test_{uuid.uuid4().hex[:12]}"
    params = {
        "host": url.host,
        "port": url.port or 5432,
        "user": url.username,
        "password": url.password,
        "dbname": url.database or "postgres",
    }
    admin = psycopg2.connect(**params)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    return url.set(database=name).render_as_string(hide_password=False), drop


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind (the test runs once per kind)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'neurogate.sqlite'}"
        return
    url, drop = _create_postgres_database(POSTGRES_URL)
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'neurogate.sqlite'}"


@dataclass
class Database:
    url: str
    engine: Engine
    sessions: sessionmaker[Session]


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """A migrated database of each kind."""
    upgrade_to_head(database_url)
    engine = create_db_engine(database_url)
    yield Database(database_url, engine, session_factory(engine))
    engine.dispose()


def make_settings(
    data_dir: Path, database_url: str, *, bus: BusSettings | None = None, **listener: object
) -> Settings:
    listener_settings = {
        "host": "127.0.0.1",
        "port": 0,
        "study_quiet_seconds": 2.0,
        "completion_check_seconds": 0.1,
        "min_free_disk_mb": 0,
        "engine": LISTENER_ENGINE,
        **listener,
    }
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        listener=ListenerSettings.model_validate(listener_settings),
        bus=bus or BusSettings(),
    )
