"""The event bus: one small interface, two backends.

- ``embedded`` (default): a durable log in one SQLite file, shared by the processes of one
  machine. No server to run; one member of a consumer group works at a time.
- ``kafka``: Apache Kafka (or any Kafka-protocol broker) through kafka-python; consumer groups
  spread partitions across workers on many machines.

Messages are keyed by StudyInstanceUID, so every event of a study lands on one partition, in
order. Delivery is at least once: a consumer commits after processing, and a message it polled
but did not commit is delivered again after a restart or a rebalance. Topics are created at
service start (:meth:`Bus.ensure_topics`); publishing never creates them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from neurogate.settings import BusSettings

MS_PER_S = 1000


@dataclass(frozen=True, slots=True)
class Message:
    """One record as a consumer sees it: where it sits in the log and what it carries."""

    topic: str
    key: str
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    partition: int
    offset: int

    def header(self, name: str) -> bytes | None:
        """The first value of header ``name``, or ``None`` when the message has none."""
        return next((value for key, value in self.headers if key == name), None)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic to create: its partition count bounds how many workers share its load."""

    name: str
    partitions: int
    replication_factor: int = 1


class BusUnavailable(Exception):
    """The bus could not be reached or did not acknowledge in time; try again later."""


class Publisher(Protocol):
    def publish(
        self, topic: str, key: str, value: bytes, headers: Mapping[str, bytes] | None = None
    ) -> None:
        """Return once the bus holds the message durably.

        Raises
        ------
        BusUnavailable
            When the bus did not acknowledge within its request timeout.
        """

    def close(self) -> None: ...


class Consumer(Protocol):
    """A member of a consumer group. Use one from one thread at a time."""

    def poll(self, timeout_s: float, max_messages: int = 16) -> list[Message]:
        """Up to ``max_messages`` messages, waiting at most ``timeout_s`` for the first."""

    def commit(self, message: Message) -> None:
        """Record that ``message`` and everything before it in its partition are processed.

        When this member no longer owns the partition (the group rebalanced), the commit is
        dropped with a warning: the partition's new owner receives the message again.
        """

    def close(self) -> None: ...


class Bus(Protocol):
    def ensure_topics(self, topics: Iterable[TopicSpec]) -> None:
        """Create the missing topics with their partition counts; existing ones are kept.

        Raises
        ------
        BusUnavailable
            When the bus cannot be reached or refuses to create a topic.
        """

    def publisher(self) -> Publisher: ...

    def consumer(self, topics: Sequence[str], group_id: str) -> Consumer: ...

    def close(self) -> None: ...


def ensure_service_topics(bus: Bus, settings: BusSettings, topics: Iterable[str]) -> None:
    """Create ``topics`` and their dead-letter twins with the configured partition counts.

    Every service calls this for the topics it publishes or consumes before it first uses the
    bus; publishing never creates topics.
    """
    from schemas.topics import dead_letter_topic

    bus.ensure_topics(
        TopicSpec(name, settings.topic_partitions, settings.topic_replication_factor)
        for topic in topics
        for name in (str(topic), dead_letter_topic(topic))
    )


def open_bus(settings: BusSettings, embedded_path: Path) -> Bus:
    """The configured backend. Kafka's client is imported only when it is the one configured.

    Parameters
    ----------
    settings
        The bus settings; the embedded backend borrows the Kafka session and poll timeouts for
        its group leases so that both backends hand work over on the same schedule.
    embedded_path
        The SQLite file of the embedded backend (``Settings.embedded_bus_path``).
    """
    if settings.backend == "kafka":
        from neurogate.bus.kafka import KafkaBus

        return KafkaBus(settings)
    from neurogate.bus.embedded import EmbeddedBus

    return EmbeddedBus(
        embedded_path,
        session_timeout_s=settings.kafka_session_timeout_ms / MS_PER_S,
        max_poll_interval_s=settings.kafka_max_poll_interval_ms / MS_PER_S,
    )


__all__ = [
    "Bus",
    "BusUnavailable",
    "Consumer",
    "Message",
    "Publisher",
    "TopicSpec",
    "open_bus",
]
