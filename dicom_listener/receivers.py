"""Receiver processes: the DICOM listener on more than one CPU core, with one study tracker.

Every association of a Python process shares one interpreter lock, so a listener process stores
at most what one core can check and write, however many scanners send at once. With
``listener.processes`` = N > 1 the listener process accepts the connections and hands each,
in turn, to one of N receiver processes (the socket travels over a Unix socket pair,
``SCM_RIGHTS``), which runs the association, and receives, checks and durably stores instances
exactly as the listener process does alone. Handing over in turn keeps the load even, where
the kernel's ``SO_REUSEPORT`` hashing would often give one process most of a few associations.

What a receiver must not do on its own is account for studies: a study's instances may arrive
over associations served by different processes, and one quiet timer and one ``StudyReceived``
per study need one tracker. So before answering a C-STORE, a receiver reports the stored
instance to the listener process's :class:`~dicom_listener.assembly.StudyTracker` over a pipe
and waits for the answer; if the tracker cannot record it, the sender is refused (and retries),
as when the database is down. MPPS notifications travel the same way.

The listener process watches its receivers and restarts one that dies; what a dead receiver
had acknowledged is on disk and in the tracker already, and what it had not, the sender still
holds and sends again.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from dicom_listener.affinity import pin_this_thread
from dicom_listener.assembly import InstanceRef, StudyTracker, TrackerUnreachable
from dicom_listener.instances import InstanceHeader
from neurogate.settings import Settings
from neurogate.storage import StoreOutcome

log = logging.getLogger(__name__)

_READY = "ready"
# How long a receiver may take to import, connect to the database and bind the port.
START_TIMEOUT_S = 120.0
_WATCH_INTERVAL_S = 0.5
# A receiver that dies this soon after starting is restarted after a pause
_EARLY_DEATH_S = 10.0
_RESTART_DELAY_S = 5.0
# How long a stopping receiver lets its associations finish
STOP_GRACE_S = 30.0


class TrackerClient:
    """A receiver's stand-in for the listener process's study tracker (thread-safe)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def record(
        self, header: InstanceHeader, outcome: StoreOutcome, *, calling_ae: str, called_ae: str
    ) -> None:
        """As :meth:`StudyTracker.record`; raises :class:`TrackerUnreachable` on failure."""
        self._call("record", header.portable(), outcome, calling_ae, called_ae)

    def procedure_step_completed(self, study_uid: str, referenced: Iterable[InstanceRef]) -> None:
        self._call("procedure_step_completed", study_uid, list(referenced))

    def _call(self, *request: Any) -> None:
        with self._lock:
            try:
                self._conn.send(request)
                failure = self._conn.recv()
            except (OSError, EOFError) as exc:
                raise TrackerUnreachable(f"listener process gone: {exc}") from exc
        if failure is not None:
            raise TrackerUnreachable(failure)


def _serve_tracker(conn: Connection, tracker: StudyTracker, receiver: Receiver) -> None:
    """Answer one receiver's reports until its end of the pipe closes (listener process)."""
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        name, *args = request
        failure: str | None = None
        try:
            if name == _READY:
                receiver.ready.set()
                continue
            if name == "record":
                header, outcome, calling_ae, called_ae = args
                tracker.record(header, outcome, calling_ae=calling_ae, called_ae=called_ae)
                receiver.instances += 1
            elif name == "procedure_step_completed":
                tracker.procedure_step_completed(*args)
            else:
                failure = f"unknown request {name!r}"
        except Exception as exc:  # answered as a failure: the receiver must never wait forever
            log.exception("could not record what a receiver reported", extra={"request": name})
            failure = f"{type(exc).__name__}: {exc}"
        try:
            conn.send(failure)
        except (OSError, EOFError):
            return


def receiver_main(
    settings: Settings, conn: Connection, handover: socket.socket, index: int
) -> None:
    """A receiver process: serve the connections handed over, reporting to the listener process."""
    from dicom_listener.service import drain, serve_scp
    from neurogate.db import create_db_engine, session_factory
    from neurogate.logging import configure_logging
    from neurogate.storage import InstanceStore

    configure_logging(settings.log_level, settings.log_format)
    cpus = settings.listener.cpus
    if cpus:  # before any thread starts: they all inherit it
        pin_this_thread([cpus[index % len(cpus)]])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the listener process decides when to stop
    engine = create_db_engine(settings.sqlalchemy_url)
    store = InstanceStore(settings.storage_root, fsync=settings.listener.fsync)
    tracker = TrackerClient(conn)
    server = serve_scp(
        settings, store, tracker, session_factory(engine), port=settings.listener.port, handed=True
    )
    threading.Thread(
        target=_take_connections, args=(handover, server, stop), name="handover", daemon=True
    ).start()
    log.info("receiver process started", extra={"receiver": index})
    conn.send((_READY,))
    try:
        stop.wait()
    finally:
        handover.close()
        drain(server, STOP_GRACE_S)
        server.server_close()
        engine.dispose()
        log.info("receiver process stopped", extra={"receiver": index})


def _take_connections(handover: socket.socket, server: Any, stop: threading.Event) -> None:
    """Serve each connection the listener process hands over, until it closes the pair."""
    while not stop.is_set():
        try:
            message, fds, _, _ = socket.recv_fds(handover, 512, 1)
        except OSError:
            break
        if not fds:
            break  # the listener process is gone (or stopping): no more connections
        sock = socket.socket(fileno=fds[0])
        host, _, port = message.decode("ascii").rpartition("|")
        server.hand(sock, (host, int(port)))
    stop.set()


@dataclass
class Receiver:
    """One receiver process as the listener process sees it."""

    index: int
    process: subprocess.Popen[bytes]
    conn: Connection  # its reports, and the answers
    handover: socket.socket  # connections for it
    ready: threading.Event = field(default_factory=threading.Event)
    instances: int = 0  # instances it reported since it started
    started: float = field(default_factory=time.monotonic)
    restart_at: float | None = None  # when a receiver that died is started again


class ReceiverPool:
    """Accepts associations and hands them to receiver processes it starts, watches, restarts
    and stops (listener process side).

    A receiver is a fresh interpreter (``python -m dicom_listener.receivers``), never a fork of
    this threaded process. It inherits two socket pairs, one for its reports and one for the
    connections handed over, and gets the settings over the first: it needs nothing of how this
    process was started.
    """

    def __init__(self, settings: Settings, tracker: StudyTracker, count: int) -> None:
        self._settings = settings
        self._tracker = tracker
        self._count = count
        self._receivers: dict[int, Receiver] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listening: socket.socket | None = None
        self._next = 0
        self.restarts = 0

    @property
    def address(self) -> tuple[str, int]:
        if self._listening is None:
            raise RuntimeError("receivers not started")
        host, port = self._listening.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Start the receivers, then listen on the listener's address and hand out what comes."""
        listener = self._settings.listener
        for index in range(self._count):
            self._spawn(index)
        deadline = time.monotonic() + START_TIMEOUT_S
        for receiver in list(self._receivers.values()):
            if not receiver.ready.wait(max(deadline - time.monotonic(), 0)):
                self.stop()
                raise RuntimeError(f"receiver process {receiver.index} did not start")
        family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
        self._listening = socket.create_server(
            (listener.host, listener.port), family=family, backlog=128
        )
        self._listening.settimeout(_WATCH_INTERVAL_S)
        for target, name in ((self._accept, "receiver-accept"), (self._watch, "receiver-watch")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def instances(self) -> dict[int, int]:
        """Instances reported by each receiver process since it (re)started."""
        with self._lock:
            return {index: r.instances for index, r in self._receivers.items()}

    def pids(self) -> dict[int, int]:
        with self._lock:
            return {index: r.process.pid for index, r in self._receivers.items()}

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop accepting, then stop every receiver: each finishes its associations, for up to
        ``grace_s``, while this process still answers their reports."""
        self._stopping.set()
        for thread in self._threads:
            thread.join()
        if self._listening is not None:
            self._listening.close()
        with self._lock:
            receivers = list(self._receivers.values())
        for receiver in receivers:
            if receiver.process.poll() is None:
                receiver.process.terminate()  # SIGTERM: the receiver stops gracefully
        deadline = time.monotonic() + grace_s + 5
        for receiver in receivers:
            try:
                receiver.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.error("receiver did not stop; killed", extra={"receiver": receiver.index})
                receiver.process.kill()
                receiver.process.wait()
            receiver.conn.close()
            receiver.handover.close()

    def _spawn(self, index: int) -> Receiver:
        ours, theirs = socket.socketpair()
        handover, their_handover = socket.socketpair()
        with theirs, their_handover:
            fds = [theirs.fileno(), their_handover.fileno()]
            process = subprocess.Popen(
                [sys.executable, "-m", "dicom_listener.receivers", *map(str, fds), str(index)],
                pass_fds=fds,
            )
        conn = Connection(ours.detach())
        conn.send(self._settings)
        receiver = Receiver(index, process, conn, handover)
        with self._lock:
            self._receivers[index] = receiver
        threading.Thread(
            target=_serve_tracker,
            args=(conn, self._tracker, receiver),
            name=f"receiver-{index}-tracker",
            daemon=True,
        ).start()
        return receiver

    def _accept(self) -> None:
        assert self._listening is not None
        while not self._stopping.is_set():
            try:
                sock, address = self._listening.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                log.exception("accepting a connection failed")
                continue
            with sock:
                self._hand(sock, address)

    def _hand(self, sock: socket.socket, address: tuple[Any, ...]) -> None:
        """Give the connection to the next receiver that takes it; the peer is disconnected
        if none does (as when a listener is down)."""
        message = f"{address[0]}|{address[1]}".encode("ascii")
        with self._lock:
            order = sorted(self._receivers)
            start, self._next = self._next, self._next + 1
        for offset in range(len(order)):
            receiver = self._receivers[order[(start + offset) % len(order)]]
            if not receiver.ready.is_set() or receiver.process.poll() is not None:
                continue
            try:
                socket.send_fds(receiver.handover, [message], [sock.fileno()])
                return
            except OSError:
                continue  # it died just now; the watcher restarts it
        log.error("no receiver process to take a connection", extra={"peer": message.decode()})

    def _watch(self) -> None:
        while not self._stopping.wait(_WATCH_INTERVAL_S):
            with self._lock:
                dead = [r for r in self._receivers.values() if r.process.poll() is not None]
            now = time.monotonic()
            for receiver in dead:
                if self._stopping.is_set():
                    return
                if receiver.restart_at is None:
                    # One that dies soon after starting would only die again at once
                    early = now - receiver.started < _EARLY_DEATH_S
                    receiver.restart_at = now + (_RESTART_DELAY_S if early else 0.0)
                    log.error(
                        "receiver process died; restarting it",
                        extra={
                            "receiver": receiver.index,
                            "exitcode": receiver.process.returncode,
                            "restart_in_s": receiver.restart_at - now,
                        },
                    )
                    with contextlib.suppress(OSError):
                        receiver.conn.close()
                    receiver.handover.close()
                if now >= receiver.restart_at:
                    self.restarts += 1
                    self._spawn(receiver.index)


def _main(argv: list[str]) -> None:
    conn_fd, handover_fd, index = (int(arg) for arg in argv)
    conn = Connection(conn_fd)
    settings = conn.recv()
    receiver_main(settings, conn, socket.socket(fileno=handover_fd), index)


if __name__ == "__main__":
    _main(sys.argv[1:])
