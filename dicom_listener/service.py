"""The listener as a service: the SCP (in one or more processes), the completion timer and the
outbox relay, together."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection

from pynetdicom import _config, evt
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from dicom_listener.affinity import check_cpus
from dicom_listener.assembly import InstanceRecorder, StudyTracker
from dicom_listener.fast_store import FastStore
from dicom_listener.mpps import ProcedureStepSCP
from dicom_listener.reactor import start_server
from dicom_listener.receivers import ReceiverPool
from dicom_listener.scp import Handler, StorageSCP, build_ae, build_ssl_context
from neurogate.bus import Bus
from neurogate.outbox import service_relay
from neurogate.settings import Settings
from neurogate.storage import InstanceStore
from schemas.topics import Topic

log = logging.getLogger(__name__)

PUBLISHED_TOPICS = (Topic.STUDY_RECEIVED,)


def serve_scp(
    settings: Settings,
    store: InstanceStore,
    tracker: InstanceRecorder,
    sessions: sessionmaker[Session],
    *,
    port: int,
    handed: bool = False,
    cpus: Collection[int] = (),
) -> ThreadedAssociationServer:
    """Start the SCP (storage, verification, MPPS) on ``port``; the server, accepting.

    The listener process calls this when it receives itself; each receiver process
    (:mod:`dicom_listener.receivers`) calls it with a client of the listener process's tracker
    and ``handed``: its server takes connections the listener process accepted. ``cpus``: where
    the associations run (:mod:`dicom_listener.affinity`).
    """
    listener = settings.listener
    # pynetdicom's "standard" handlers format every PDU and DIMSE message for its INFO and
    # DEBUG logs while holding the AE-wide lock: needless serialisation of the associations
    # when those logs are off (neurogate.logging keeps pynetdicom at WARNING unless asked).
    pynetdicom_logs = logging.getLogger("pynetdicom").isEnabledFor(logging.INFO)
    _config.LOG_HANDLER_LEVEL = "standard" if pynetdicom_logs else "none"
    storage = StorageSCP(store, tracker, min_free_mb=listener.min_free_disk_mb)
    mpps = ProcedureStepSCP(sessions, tracker)
    handlers: list[Handler] = [
        *storage.handlers(),
        (evt.EVT_N_CREATE, mpps.on_n_create),
        (evt.EVT_N_SET, mpps.on_n_set),
    ]
    return start_server(
        build_ae(listener),
        (listener.host, port),
        evt_handlers=handlers,
        ssl_context=build_ssl_context(listener),
        fast_store=FastStore(storage.store_received, store.tmp_dir, fsync=store.fsync)
        if listener.fast_store
        else None,
        # What the fast path declines, pynetdicom writes to a file as it arrives; in the store's
        # tmp/, so that the handler hard-links rather than copies it.
        receive_dir=store.tmp_dir if listener.chunked_receive else None,
        handed=handed,
        cpus=cpus,
        max_connections_per_peer=listener.max_connections_per_peer,
    )


def drain(server: ThreadedAssociationServer, grace_s: float) -> None:
    """Let the server's associations finish, for up to ``grace_s``; abort those still open."""
    deadline = time.monotonic() + grace_s
    while server.active_associations and time.monotonic() < deadline:
        time.sleep(0.1)
    for assoc in server.active_associations:
        log.warning("aborting association at shutdown", extra={"assoc": assoc.native_id})
        assoc.abort()


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
        self.receivers: ReceiverPool | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: ThreadedAssociationServer | None = None

    @property
    def address(self) -> tuple[str, int]:
        if self._server is not None:
            host, port = self._server.server_address[:2]
        elif self.receivers is not None:
            host, port = self.receivers.address
        else:
            raise RuntimeError("listener not started")
        return str(host), int(port)

    def start(self) -> None:
        """Recover interrupted studies, then start accepting associations."""
        settings = self._settings.listener
        removed = self.store.clean_tmp()
        if removed:
            log.info("removed unacknowledged partial files", extra={"count": removed})
        check_cpus(settings.cpus)
        resumed = self.tracker.recover()
        if settings.processes == 1:
            self._server = serve_scp(
                self._settings,
                self.store,
                self.tracker,
                self._sessions,
                port=settings.port,
                cpus=settings.cpus,
            )
            host, port = self.address
        else:
            # Receiver processes serve the associations this one accepts, and this one
            # answers their reports with an interpreter lock no association competes for.
            self.receivers = ReceiverPool(self._settings, self.tracker, settings.processes)
            self.receivers.start()
            host, port = self.address
        self._spawn("completion-timer", self._completion_loop)
        self._spawn("outbox-relay", lambda: self.relay.run(self._stop))
        log.info(
            "listener started",
            extra={
                "ae_title": settings.ae_title,
                "address": f"{host}:{port}",
                "processes": settings.processes,
                "cpus": ",".join(map(str, settings.cpus)) or "any",
                "tls": settings.tls_enabled,
                "resumed_studies": resumed,
                "quiet_s": settings.study_quiet_seconds,
            },
        )

    def stop(self, grace_s: float = 30.0) -> None:
        """Stop accepting, let associations in progress finish (up to ``grace_s``), then stop."""
        if self.receivers is not None:
            # First, while this process's tracker still answers their reports
            self.receivers.stop(grace_s)
            self.receivers = None
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
