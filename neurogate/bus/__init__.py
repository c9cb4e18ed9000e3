"""The event bus: one small interface, two backends.

- ``embedded`` (default): a durable log in one SQLite file, shared by the processes of one
  machine. No server to run.
- ``kafka``: Apache Kafka (or any Kafka-protocol broker) through kafka-python; consumer groups
  spread partitions across workers on many machines.

Messages are keyed by StudyInstanceUID, so every event of a study lands on one partition, in
order. Delivery is at least once: a consumer commits after processing, and a message it polled
but did not commit is delivered again after a restart or a rebalance.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from neurogate.settings import BusSettings


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    key: str
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    partition: int
    offset: int

    def header(self, name: str) -> bytes | None:
        return next((value for key, value in self.headers if key == name), None)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int = 1


class BusUnavailable(Exception):
    """The bus could not be reached or did not acknowledge in time."""


class Publisher(Protocol):
    def publish(
        self, topic: str, key: str, value: bytes, headers: Mapping[str, bytes] | None = None
    ) -> None:
        """Return once the bus holds the message durably; raise :class:`BusUnavailable`."""

    def close(self) -> None: ...


class Consumer(Protocol):
    def poll(self, timeout_s: float, max_messages: int = 16) -> list[Message]:
        """Up to ``max_messages`` messages, waiting at most ``timeout_s`` for the first."""

    def commit(self, message: Message) -> None:
        """Record that ``message`` (and everything before it in its partition) is processed."""

    def close(self) -> None: ...


class Bus(Protocol):
    def ensure_topics(self, topics: Iterable[TopicSpec]) -> None:
        """Create the missing topics with their partition counts; raise BusUnavailable."""

    def publisher(self) -> Publisher: ...

    def consumer(self, topics: Sequence[str], group_id: str) -> Consumer: ...

    def close(self) -> None: ...


def open_bus(settings: BusSettings, embedded_path: Path) -> Bus:
    """The configured backend. Kafka's client is imported only when it is the one configured."""
    if settings.backend == "kafka":
        from neurogate.bus.kafka import KafkaBus

        return KafkaBus(settings)
    from neurogate.bus.embedded import EmbeddedBus

    return EmbeddedBus(embedded_path, session_timeout_s=settings.kafka_session_timeout_ms / 1000)


__all__ = [
    "Bus",
    "BusUnavailable",
    "Consumer",
    "Message",
    "Publisher",
    "TopicSpec",
    "open_bus",
]
