"""The listener as a service: the SCP on its engine, the completion timer and the outbox relay,
together."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from dicom_listener.assembly import StudyTracker
from dicom_listener.engines import choose_engine
from dicom_listener.server import drain, serve_scp
from neurogate.bus import Bus
from neurogate.outbox import service_relay
from neurogate.settings import Settings
from neurogate.storage import InstanceStore
from schemas.topics import Topic

log = logging.getLogger(__name__)

PUBLISHED_TOPICS = (Topic.STUDY_RECEIVED,)


class ListenerService:
    """Receives studies and announces the completed ones.

    Parameters
    ----------
    settings
        Node settings; ``settings.listener`` configures the SCP.
    sessions
        Database session factory.
    bus
        Where ``StudyReceived`` events go (through the outbox).
    """

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], bus: Bus) -> None:
        self._settings = settings
        self.store = InstanceStore(settings.storage_root, fsync=settings.listener.fsync)
        self.relay = service_relay(sessions, bus, settings.bus, PUBLISHED_TOPICS)
        self._bus = bus  # the tests read events from it
        self.tracker = StudyTracker(
            sessions,
            self.store,
            quiet_seconds=settings.listener.study_quiet_seconds,
            on_completed=self.relay.wake,
        )
        self._sessions = sessions
        self.engine = choose_engine(settings.listener.engine)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: ThreadedAssociationServer | None = None

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("listener not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Recover interrupted studies, then start accepting associations."""
        settings = self._settings.listener
        removed = self.store.clean_tmp()
        if removed:
            log.info("removed unacknowledged partial files", extra={"count": removed})
        resumed = self.tracker.recover()
        self._server = serve_scp(settings, self.engine, self.store, self.tracker, self._sessions)
        host, port = self.address
        self._spawn("completion-timer", self._completion_loop)
        self._spawn("outbox-relay", lambda: self.relay.run(self._stop))
        log.info(
            "listener started",
            extra={
                "ae_title": settings.ae_title,
                "address": f"{host}:{port}",
                "engine": self.engine,
                "tls": settings.tls_enabled,
                "resumed_studies": resumed,
                "quiet_s": settings.study_quiet_seconds,
            },
        )

    def stop(self, grace_s: float = 30.0) -> None:
        """Stop accepting, let associations in progress finish (up to ``grace_s``), then stop."""
        if self._server is not None:
            server, self._server = self._server, None
            server.shutdown()
            drain(server, grace_s)
        self._stop.set()
        self.relay.wake()
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        self.relay.close()
        self.tracker.tick()
        log.info("listener stopped")

    def _completion_loop(self) -> None:
        interval = self._settings.listener.completion_check_seconds
        while not self._stop.wait(interval):
            self.tracker.tick()

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
