"""The embedded bus: a durable, Kafka-like log in one SQLite file.

Each topic is a single partition (number 0) whose offsets increase; messages are kept. A
consumer group has a committed offset per topic; a new group starts at the earliest message, and
a restarted member resumes from the committed offset, so a message polled but not committed is
delivered again.

Several processes of one machine (``neurogate listener`` and ``neurogate worker``, say) and
several threads of one process share the file: writes take SQLite's write lock with ``BEGIN
IMMEDIATE``, reads run beside them in WAL mode, and each thread has its own connection.

Within a group, one member at a time consumes a topic. It holds a lease row that a heartbeat
thread renews while the member keeps polling. When the member dies, its lease lapses after
``session_timeout_s``; when it is alive but stops polling for ``max_poll_interval_s``, the
heartbeat stops renewing. Either way another member then takes over from the committed offset,
as a Kafka rebalance would. Spreading one group's work across machines is what the Kafka backend
is for.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from neurogate.bus import BusUnavailable, Message, TopicSpec

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    offset INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    headers TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_messages_topic ON messages (topic, offset);
CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY, partitions INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS group_offsets (
    group_id TEXT NOT NULL, topic TEXT NOT NULL, committed INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic)
);
CREATE TABLE IF NOT EXISTS group_leases (
    group_id TEXT NOT NULL, topic TEXT NOT NULL, member TEXT NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (group_id, topic)
);
"""
PARTITION = 0  # every embedded topic has exactly one partition
DEFAULT_SESSION_TIMEOUT_S = 10.0
DEFAULT_MAX_POLL_INTERVAL_S = 900.0
_BUSY_TIMEOUT_S = 10.0  # how long a write waits for another writer's lock
_IDLE_POLL_S = 0.05  # how often an idle consumer looks for messages from other processes
_HEARTBEATS_PER_SESSION = 3
# Publishers in this process wake consumers in this process at once.
_published = threading.Condition()


class _Connections:
    """One SQLite connection per thread, all on the same file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def get(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a published message survives power loss
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


class _Immediate:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (or ``ROLLBACK`` on error): one writer at a time."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._conn.execute("ROLLBACK" if exc_type else "COMMIT")


class EmbeddedBus:
    """The embedded backend.

    Parameters
    ----------
    path
        The SQLite file; created if missing.
    session_timeout_s
        How long a dead group member keeps its topics before another member takes over.
    max_poll_interval_s
        How long a live member may go without polling before it gives its topics up.
    """

    def __init__(
        self,
        path: Path,
        *,
        session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S,
        max_poll_interval_s: float = DEFAULT_MAX_POLL_INTERVAL_S,
    ) -> None:
        self._connections = _Connections(path)
        self._session_timeout_s = session_timeout_s
        self._max_poll_interval_s = max_poll_interval_s
        self._consumers: list[EmbeddedConsumer] = []
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._connections.get().executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise BusUnavailable(f"embedded bus {path}: {exc}") from exc

    def ensure_topics(self, topics: Iterable[TopicSpec]) -> None:
        """Record the topics; each has one partition whatever the spec asks for."""
        try:
            with _Immediate(self._connections.get()) as conn:
                conn.executemany(
                    "INSERT OR IGNORE INTO topics (name, partitions) VALUES (?, ?)",
                    [(str(t.name), 1) for t in topics],
                )
        except sqlite3.Error as exc:
            raise BusUnavailable(f"embedded bus: ensuring topics: {exc}") from exc

    def publisher(self) -> EmbeddedPublisher:
        return EmbeddedPublisher(self._connections)

    def consumer(self, topics: Sequence[str], group_id: str) -> EmbeddedConsumer:
        consumer = EmbeddedConsumer(
            self._connections,
            [str(t) for t in topics],
            group_id,
            session_timeout_s=self._session_timeout_s,
            max_poll_interval_s=self._max_poll_interval_s,
        )
        self._consumers.append(consumer)
        return consumer

    def close(self) -> None:
        """Close the consumers still open (releasing their leases), then the connections."""
        for consumer in self._consumers:
            consumer.close()
        self._consumers.clear()
        self._connections.close()


class EmbeddedPublisher:
    """Appends to the log; ``publish`` returns once SQLite has committed the message."""

    def __init__(self, connections: _Connections) -> None:
        self._connections = connections

    def publish(
        self, topic: str, key: str, value: bytes, headers: Mapping[str, bytes] | None = None
    ) -> None:
        # latin-1 maps every byte to one character and back: any header bytes survive JSON.
        encoded = json.dumps({k: v.decode("latin-1") for k, v in (headers or {}).items()})
        try:
            with _Immediate(self._connections.get()) as conn:
                conn.execute(
                    "INSERT INTO messages (topic, key, value, headers, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (str(topic), key, value, encoded, time.time()),
                )
        except sqlite3.Error as exc:
            raise BusUnavailable(f"embedded bus: publishing to {topic}: {exc}") from exc
        with _published:
            _published.notify_all()

    def close(self) -> None:
        """Nothing to release: connections belong to the bus."""


class EmbeddedConsumer:
    """A member of a consumer group on the embedded bus (see the module docstring)."""

    def __init__(
        self,
        connections: _Connections,
        topics: list[str],
        group_id: str,
        *,
        session_timeout_s: float,
        max_poll_interval_s: float,
    ) -> None:
        self._connections = connections
        self._topics = topics
        self._group = group_id
        self._member = uuid.uuid4().hex
        self._session_timeout_s = session_timeout_s
        self._max_poll_interval_s = max_poll_interval_s
        # Next offset to hand out per topic while this member holds the topic's lease.
        self._positions: dict[str, int] = {}
        self._last_poll = time.monotonic()
        self._closed = threading.Event()
        self._heartbeat = threading.Thread(
            target=self._beat, name=f"bus-heartbeat-{group_id}", daemon=True
        )
        self._heartbeat.start()

    def poll(self, timeout_s: float, max_messages: int = 16) -> list[Message]:
        """Messages after this member's position, waiting up to ``timeout_s`` for one."""
        deadline = time.monotonic() + timeout_s
        while not self._closed.is_set():
            self._last_poll = time.monotonic()
            try:
                messages = self._fetch(max_messages)
            except sqlite3.Error as exc:
                raise BusUnavailable(f"embedded bus: polling {self._topics}: {exc}") from exc
            remaining = deadline - time.monotonic()
            if messages or remaining <= 0:
                return messages
            with _published:
                _published.wait(min(remaining, _IDLE_POLL_S))
        return []

    def commit(self, message: Message) -> None:
        try:
            with _Immediate(self._connections.get()) as conn:
                if self._lease_holder(conn, message.topic) != self._member:
                    log.warning(
                        "commit dropped: another member owns the topic and will redeliver",
                        extra={
                            "group": self._group,
                            "topic": message.topic,
                            "offset": message.offset,
                            "key": message.key,
                        },
                    )
                    self._positions.pop(message.topic, None)
                    return
                conn.execute(
                    "INSERT INTO group_offsets (group_id, topic, committed) VALUES (?, ?, ?)"
                    " ON CONFLICT (group_id, topic) DO UPDATE SET committed = excluded.committed",
                    (self._group, message.topic, message.offset + 1),
                )
        except sqlite3.Error as exc:
            raise BusUnavailable(f"embedded bus: commit {message.topic}: {exc}") from exc

    def close(self) -> None:
        """Stop the heartbeat and release this member's topics to the others at once."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._heartbeat.join()
        try:
            with _Immediate(self._connections.get()) as conn:
                conn.execute(
                    "DELETE FROM group_leases WHERE group_id = ? AND member = ?",
                    (self._group, self._member),
                )
        except sqlite3.Error:
            log.exception("could not release consumer leases", extra={"group": self._group})

    # -- internals --------------------------------------------------------------------------

    def _fetch(self, limit: int) -> list[Message]:
        conn = self._connections.get()
        messages: list[Message] = []
        for topic in self._topics:
            if len(messages) >= limit:
                break
            position = self._position(conn, topic)
            if position is None:
                continue
            rows = conn.execute(
                "SELECT offset, key, value, headers FROM messages"
                " WHERE topic = ? AND offset >= ? ORDER BY offset LIMIT ?",
                (topic, position, limit - len(messages)),
            ).fetchall()
            for offset, key, value, headers in rows:
                decoded = tuple((k, v.encode("latin-1")) for k, v in json.loads(headers).items())
                messages.append(Message(topic, key, bytes(value), decoded, PARTITION, offset))
            if rows:
                self._positions[topic] = rows[-1][0] + 1
        return messages

    def _position(self, conn: sqlite3.Connection, topic: str) -> int | None:
        """This member's next offset in ``topic``, or ``None`` while another member owns it."""
        holder = self._lease_holder(conn, topic)
        if holder == self._member and topic in self._positions:
            return self._positions[topic]
        self._positions.pop(topic, None)
        if holder is not None and holder != self._member:
            return None
        with _Immediate(conn):  # take the free lease; check again under the write lock
            holder = self._lease_holder(conn, topic)
            if holder is not None and holder != self._member:
                return None
            conn.execute(
                "INSERT INTO group_leases (group_id, topic, member, expires_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (group_id, topic) DO UPDATE"
                " SET member = excluded.member, expires_at = excluded.expires_at",
                (self._group, topic, self._member, time.time() + self._session_timeout_s),
            )
            committed = conn.execute(
                "SELECT committed FROM group_offsets WHERE group_id = ? AND topic = ?",
                (self._group, topic),
            ).fetchone()
        position = int(committed[0]) if committed else 0
        self._positions[topic] = position
        log.info(
            "consumer took over a topic",
            extra={"group": self._group, "topic": topic, "offset": position},
        )
        return position

    def _lease_holder(self, conn: sqlite3.Connection, topic: str) -> str | None:
        """The member holding ``topic`` for this group, or ``None`` if the lease is free."""
        row = conn.execute(
            "SELECT member, expires_at FROM group_leases WHERE group_id = ? AND topic = ?",
            (self._group, topic),
        ).fetchone()
        if row is None or (row[0] != self._member and row[1] <= time.time()):
            return None
        return str(row[0])

    def _beat(self) -> None:
        """Renew this member's leases while it polls; let them lapse once it stops."""
        interval = self._session_timeout_s / _HEARTBEATS_PER_SESSION
        stalled = False
        while not self._closed.wait(interval):
            idle_s = time.monotonic() - self._last_poll
            if idle_s > self._max_poll_interval_s:
                if not stalled:
                    log.warning(
                        "consumer stopped polling; its topics go to another member",
                        extra={"group": self._group, "idle_s": round(idle_s, 1)},
                    )
                stalled = True
                continue
            stalled = False
            try:
                with _Immediate(self._connections.get()) as conn:
                    conn.execute(
                        "UPDATE group_leases SET expires_at = ? WHERE group_id = ? AND member = ?",
                        (time.time() + self._session_timeout_s, self._group, self._member),
                    )
            except sqlite3.Error:
                log.exception("embedded bus heartbeat failed", extra={"group": self._group})
