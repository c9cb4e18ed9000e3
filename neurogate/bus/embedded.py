"""The embedded bus: a durable, Kafka-like log in one SQLite file.

Each topic is a single partition whose offsets increase. A consumer group has a committed offset
per topic; a new group starts at the earliest message. Several processes of one machine may
publish and consume through the same file. Within a group, one member at a time consumes a
topic: it holds a lease renewed by a heartbeat thread; when the member dies its lease expires
after the session timeout and another member resumes from the committed offset. Spreading one
group's work across machines is what the Kafka backend is for.
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
_PARTITION = 0
_IDLE_POLL_S = 0.05  # how often an idle consumer looks for messages from other processes
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
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
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


def _transaction(conn: sqlite3.Connection) -> _Immediate:
    return _Immediate(conn)


class EmbeddedBus:
    """The embedded backend.

    Parameters
    ----------
    path
        The SQLite file; created if missing.
    session_timeout_s
        How long a group member may go without a heartbeat before another takes over.
    """

    def __init__(self, path: Path, *, session_timeout_s: float = 10.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._connections = _Connections(path)
        self._session_timeout_s = session_timeout_s
        try:
            self._connections.get().executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise BusUnavailable(f"embedded bus {path}: {exc}") from exc

    def ensure_topics(self, topics: Iterable[TopicSpec]) -> None:
        with _transaction(self._connections.get()) as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO topics (name, partitions) VALUES (?, 1)",
                [(t.name,) for t in topics],
            )

    def publisher(self) -> EmbeddedPublisher:
        return EmbeddedPublisher(self._connections)

    def consumer(self, topics: Sequence[str], group_id: str) -> EmbeddedConsumer:
        return EmbeddedConsumer(
            self._connections, [str(t) for t in topics], group_id, self._session_timeout_s
        )

    def close(self) -> None:
        self._connections.close()


class EmbeddedPublisher:
    def __init__(self, connections: _Connections) -> None:
        self._connections = connections

    def publish(
        self, topic: str, key: str, value: bytes, headers: Mapping[str, bytes] | None = None
    ) -> None:
        encoded = json.dumps({k: v.decode("latin-1") for k, v in (headers or {}).items()})
        try:
            with _transaction(self._connections.get()) as conn:
                conn.execute(
                    "INSERT INTO messages (topic, key, value, headers, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (topic, key, value, encoded, time.time()),
                )
        except sqlite3.Error as exc:
            raise BusUnavailable(f"embedded bus: {exc}") from exc
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
        session_timeout_s: float,
    ) -> None:
        self._connections = connections
        self._topics = topics
        self._group = group_id
        self._member = uuid.uuid4().hex
        self._session_timeout_s = session_timeout_s
        # Next offset to hand out per topic while this member holds the topic's lease.
        self._positions: dict[str, int] = {}
        self._closed = threading.Event()
        self._heartbeat = threading.Thread(
            target=self._beat, name=f"bus-heartbeat-{group_id}", daemon=True
        )
        self._heartbeat.start()

    def poll(self, timeout_s: float, max_messages: int = 16) -> list[Message]:
        deadline = time.monotonic() + timeout_s
        while True:
            messages = self._fetch(max_messages)
            remaining = deadline - time.monotonic()
            if messages or remaining <= 0 or self._closed.is_set():
                return messages
            with _published:
                _published.wait(min(remaining, _IDLE_POLL_S))

    def commit(self, message: Message) -> None:
        with _transaction(self._connections.get()) as conn:
            if not self._holds(conn, message.topic):
                log.warning(
                    "commit skipped: this member no longer owns the topic; it will be redelivered",
                    extra={"group": self._group, "topic": message.topic, "offset": message.offset},
                )
                self._positions.pop(message.topic, None)
                return
            conn.execute(
                "INSERT INTO group_offsets (group_id, topic, committed) VALUES (?, ?, ?)"
                " ON CONFLICT (group_id, topic) DO UPDATE SET committed = excluded.committed",
                (self._group, message.topic, message.offset + 1),
            )

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._heartbeat.join()
        try:
            with _transaction(self._connections.get()) as conn:
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
            position = self._acquire(conn, topic)
            if position is None:
                continue
            rows = conn.execute(
                "SELECT offset, key, value, headers FROM messages"
                " WHERE topic = ? AND offset >= ? ORDER BY offset LIMIT ?",
                (topic, position, limit - len(messages)),
            ).fetchall()
            for offset, key, value, headers in rows:
                decoded = tuple((k, v.encode("latin-1")) for k, v in json.loads(headers).items())
                messages.append(Message(topic, key, bytes(value), decoded, _PARTITION, offset))
            if rows:
                self._positions[topic] = rows[-1][0] + 1
        return messages

    def _acquire(self, conn: sqlite3.Connection, topic: str) -> int | None:
        """This member's position in ``topic`` if it holds (or could take) the lease."""
        if topic in self._positions:
            return self._positions[topic]
        now = time.time()
        with _transaction(conn):
            lease = conn.execute(
                "SELECT member, expires_at FROM group_leases WHERE group_id = ? AND topic = ?",
                (self._group, topic),
            ).fetchone()
            if lease is not None and lease[0] != self._member and lease[1] > now:
                return None
            conn.execute(
                "INSERT INTO group_leases (group_id, topic, member, expires_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (group_id, topic) DO UPDATE"
                " SET member = excluded.member, expires_at = excluded.expires_at",
                (self._group, topic, self._member, now + self._session_timeout_s),
            )
            committed = conn.execute(
                "SELECT committed FROM group_offsets WHERE group_id = ? AND topic = ?",
                (self._group, topic),
            ).fetchone()
        position = committed[0] if committed else 0
        self._positions[topic] = position
        return position

    def _holds(self, conn: sqlite3.Connection, topic: str) -> bool:
        row = conn.execute(
            "SELECT member FROM group_leases WHERE group_id = ? AND topic = ?",
            (self._group, topic),
        ).fetchone()
        return row is not None and row[0] == self._member

    def _beat(self) -> None:
        """Renew this member's leases while it lives; drop topics whose lease was lost."""
        interval = self._session_timeout_s / 3
        while not self._closed.wait(interval):
            try:
                with _transaction(self._connections.get()) as conn:
                    conn.execute(
                        "UPDATE group_leases SET expires_at = ? WHERE group_id = ? AND member = ?",
                        (time.time() + self._session_timeout_s, self._group, self._member),
                    )
                    owned = {
                        row[0]
                        for row in conn.execute(
                            "SELECT topic FROM group_leases WHERE group_id = ? AND member = ?",
                            (self._group, self._member),
                        )
                    }
            except sqlite3.Error:
                log.exception("embedded bus heartbeat failed", extra={"group": self._group})
                continue
            for topic in [t for t in self._positions if t not in owned]:
                self._positions.pop(topic, None)
