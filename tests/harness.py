"""Running listeners (in-process or as a real subprocess) and reading what they announce."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import MRImageStorage
from sqlalchemy import select

from dicom_listener.engines import fast_unavailable
from dicom_listener.service import ListenerService
from neurogate.bus import Bus, Consumer, open_bus
from neurogate.db import create_db_engine, session_factory, upgrade_to_head
from neurogate.db.models import Study
from neurogate.settings import Settings
from schemas import StudyReceived, Topic, parse_event

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


# Tests of the fast engine's own parts: skipped where the installed pynetdicom is not the
# release it was derived from (CI's run against the newest pynetdicom, on the stock engine).
_FAST_UNAVAILABLE = fast_unavailable()
requires_fast_engine = pytest.mark.skipif(
    _FAST_UNAVAILABLE is not None, reason=f"fast engine unavailable: {_FAST_UNAVAILABLE}"
)


def wait_for(predicate: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


@dataclass
class EventReader:
    """Reads StudyReceived events from a bus as a consumer group of its own."""

    consumer: Consumer
    seen: list[StudyReceived] = field(default_factory=list)

    def drain(self, timeout_s: float = 0.2) -> list[StudyReceived]:
        for message in self.consumer.poll(timeout_s, max_messages=100):
            event = parse_event(message.value)
            assert message.key == event.study_instance_uid
            self.seen.append(event)
            self.consumer.commit(message)
        return self.seen

    def wait(self, count: int, timeout: float = 30.0) -> list[StudyReceived]:
        return wait_for(lambda: len(self.drain()) >= count and self.seen, timeout=timeout)

    def for_study(self, study_uid: str) -> list[StudyReceived]:
        return [e for e in self.drain() if e.study_instance_uid == study_uid]


def event_reader(bus: Bus) -> EventReader:
    return EventReader(bus.consumer([Topic.STUDY_RECEIVED], f"test-{uuid.uuid4().hex[:8]}"))


@contextmanager
def running_listener(settings: Settings) -> Iterator[ListenerService]:
    upgrade_to_head(settings.sqlalchemy_url)
    engine = create_db_engine(settings.sqlalchemy_url)
    bus = open_bus(settings.bus, settings.embedded_bus_path)
    service = ListenerService(settings, session_factory(engine), bus)
    service.start()
    try:
        yield service
    finally:
        service.stop(grace_s=5)
        bus.close()
        engine.dispose()


def study_row(settings: Settings, study_uid: str) -> Study | None:
    engine = create_db_engine(settings.sqlalchemy_url)
    try:
        with session_factory(engine)() as session:
            return session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
    finally:
        engine.dispose()


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a ``neurogate`` subprocess use ``settings``."""
    ls = settings.listener
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEUROGATE_")}
    env.update(
        NEUROGATE_DATA_DIR=str(settings.data_dir),
        NEUROGATE_DATABASE_URL=settings.sqlalchemy_url,
        NEUROGATE_LISTENER__HOST=ls.host,
        NEUROGATE_LISTENER__PORT=str(ls.port),
        NEUROGATE_LISTENER__AE_TITLE=ls.ae_title,
        NEUROGATE_LISTENER__STUDY_QUIET_SECONDS=str(ls.study_quiet_seconds),
        NEUROGATE_LISTENER__COMPLETION_CHECK_SECONDS=str(ls.completion_check_seconds),
        NEUROGATE_LISTENER__MIN_FREE_DISK_MB=str(ls.min_free_disk_mb),
        NEUROGATE_LISTENER__ENGINE=ls.engine,
        NEUROGATE_BUS__BACKEND=settings.bus.backend,
        NEUROGATE_BUS__KAFKA_BOOTSTRAP_SERVERS=",".join(settings.bus.kafka_bootstrap_servers),
        # The caller's path after the repository's (scripts/test puts the newest pynetdicom there)
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    return env


class ListenerProcess:
    """``neurogate listener`` as a real process, killable with SIGKILL."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_listener"],
            env=settings_env(self.settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        wait_for(self._echo_ok, timeout=60, interval=0.2)

    def _echo_ok(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"listener exited: {self.log_path.read_text()[-3000:]}")
        return echo(self.settings.listener.port, called=self.settings.listener.ae_title) == 0

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(30)


def echo(port: int, *, called: str = "NEUROGATE", calling: str = "TESTSCU") -> int | None:
    """C-ECHO status from pynetdicom, or None when no association could be made."""
    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return None
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status) if "Status" in status else None


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    calling: str = "SCANNER",
    called: str = "NEUROGATE",
    extra: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """dcmtk's storescu, as a scanner would run it."""
    return subprocess.run(
        [
            "storescu",
            "-aet",
            calling,
            "-aec",
            called,
            *extra,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        # Without TCP_NODELAY Debian's dcmtk stalls ~40-60 ms per instance on loopback.
        env={**os.environ, "TCP_NODELAY": "1"},
    )


@contextmanager
def reference_storescp(folder: Path, port: int, *, ae_title: str = "NEUROGATE") -> Iterator[Path]:
    """dcmtk's storescp in bit-preserving mode: it writes each dataset exactly as received.

    What it stores is the reference for "what the sender put on the wire" (storescu re-encodes
    some files while sending, e.g. undefined-length sequences become explicit-length ones).
    """
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            "storescp",
            "--bit-preserving",
            "--accept-all",
            "--output-directory",
            str(folder),
            "-aet",
            ae_title,
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    try:
        wait_for(lambda: echo(port, called=ae_title) == 0, timeout=20)
        yield folder
    finally:
        proc.terminate()
        proc.wait(10)


def associate_rq(called: str = "NEUROGATE") -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing MR Image Storage, as a scanner would send it."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "INTRUDER"
    primitive.called_ae_title = called
    context = build_context(MRImageStorage, ExplicitVRLittleEndian)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 16384
    primitive.user_information = [maximum]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())
