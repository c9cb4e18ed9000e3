"""The shared consume loop: commit after processing, retries, dead-letter topics, stopping."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from neurogate.bus import Bus, BusUnavailable, Consumer, Message, Publisher, TopicSpec, open_bus
from neurogate.bus.runner import (
    ERROR_HEADER,
    SOURCE_OFFSET_HEADER,
    SOURCE_PARTITION_HEADER,
    SOURCE_TOPIC_HEADER,
    PoisonMessage,
    consume,
)
from neurogate.settings import BusSettings
from schemas.topics import dead_letter_topic
from tests.harness import wait_for

GROUP = "runner"
STOP_JOIN_S = 10.0


@dataclass
class RecordingConsumer:
    """A real consumer that also remembers what it committed."""

    inner: Consumer
    committed: list[Message] = field(default_factory=list)

    def poll(self, timeout_s: float, max_messages: int = 16) -> list[Message]:
        return self.inner.poll(timeout_s, max_messages)

    def commit(self, message: Message) -> None:
        self.inner.commit(message)
        self.committed.append(message)

    def close(self) -> None:
        self.inner.close()


@dataclass
class DeadLetterOutage:
    """A real publisher whose dead-letter topics cannot be written."""

    inner: Publisher
    refused: int = 0

    def publish(
        self, topic: str, key: str, value: bytes, headers: Mapping[str, bytes] | None = None
    ) -> None:
        if topic.endswith(".dlq"):
            self.refused += 1
            raise BusUnavailable(f"{topic} unavailable")
        self.inner.publish(topic, key, value, headers)

    def close(self) -> None:
        self.inner.close()


@contextmanager
def running(
    consumer: Consumer,
    publisher: Publisher,
    handler: Callable[[Message], None],
    *,
    attempts: int = 3,
    backoff_s: float = 0.01,
) -> Iterator[threading.Event]:
    """Run the loop in a thread; on exit stop it and check that it ended."""
    stop = threading.Event()
    options = {"max_attempts": attempts, "poll_timeout_s": 0.1, "retry_backoff_s": backoff_s}
    thread = threading.Thread(
        target=consume, args=(consumer, publisher, handler), kwargs={"stop": stop, **options}
    )
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(STOP_JOIN_S)
        consumer.close()
        publisher.close()
    assert not thread.is_alive(), "the loop ends once stop is set"


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    bus = open_bus(BusSettings(), tmp_path / "bus.sqlite")
    yield bus
    bus.close()


def _read(bus: Bus, topic: str, group: str, timeout_s: float = 0.3) -> list[Message]:
    """What a new member of ``group`` receives from ``topic``."""
    consumer = bus.consumer([topic], group)
    try:
        return consumer.poll(timeout_s, max_messages=100)
    finally:
        consumer.close()


def test_poison_goes_to_the_dead_letter_topic_and_is_committed(bus: Bus) -> None:
    bus.publisher().publish("t", "1.2.3", b"not json", {"event-id": b"e1"})
    consumer = RecordingConsumer(bus.consumer(["t"], GROUP))
    seen: list[bytes] = []

    def handler(message: Message) -> None:
        seen.append(message.value)
        raise PoisonMessage("invalid event: not json")

    with running(consumer, bus.publisher(), handler):
        (dead,) = wait_for(lambda: _read(bus, "t.dlq", "dlq-reader"))
        wait_for(lambda: consumer.committed)

    assert seen == [b"not json"], "poison is not retried"
    assert (dead.topic, dead.key, dead.value) == ("t.dlq", "1.2.3", b"not json")
    assert dead.header("event-id") == b"e1"
    assert dead.header(ERROR_HEADER) == b"invalid event: not json"
    assert dead.header(SOURCE_TOPIC_HEADER) == b"t"
    assert dead.header(SOURCE_PARTITION_HEADER) == b"0"
    assert dead.header(SOURCE_OFFSET_HEADER) == str(consumer.committed[0].offset).encode()
    assert _read(bus, "t", GROUP) == [], "committed: the group has nothing left"


def test_transient_failures_are_retried_then_committed_once(bus: Bus) -> None:
    bus.publisher().publish("t", "k", b"flaky")
    consumer = RecordingConsumer(bus.consumer(["t"], GROUP))
    calls: list[bytes] = []

    def handler(message: Message) -> None:
        calls.append(message.value)
        if len(calls) < 3:
            raise RuntimeError("database briefly unavailable")

    with running(consumer, bus.publisher(), handler, attempts=3):
        wait_for(lambda: consumer.committed)

    assert calls == [b"flaky"] * 3
    assert [m.value for m in consumer.committed] == [b"flaky"]
    assert _read(bus, "t.dlq", "dlq-reader") == []
    assert _read(bus, "t", GROUP) == []


def test_a_message_that_always_fails_is_dead_lettered_after_max_attempts(bus: Bus) -> None:
    publisher = bus.publisher()
    publisher.publish("t", "k", b"doomed")
    publisher.publish("t", "k", b"fine")
    consumer = RecordingConsumer(bus.consumer(["t"], GROUP))
    calls: list[bytes] = []

    def handler(message: Message) -> None:
        calls.append(message.value)
        if message.value == b"doomed":
            raise ValueError("cannot segment")

    with running(consumer, bus.publisher(), handler, attempts=2):
        wait_for(lambda: len(consumer.committed) == 2)

    (dead,) = _read(bus, "t.dlq", "dlq-reader")
    assert dead.value == b"doomed"
    assert dead.header(ERROR_HEADER) == b"failed 2 times; last error: ValueError('cannot segment')"
    assert calls == [b"doomed", b"doomed", b"fine"], "one bad message does not block the rest"
    assert [m.value for m in consumer.committed] == [b"doomed", b"fine"]


def test_nothing_is_committed_while_the_dead_letter_topic_is_unavailable(bus: Bus) -> None:
    bus.publisher().publish("t", "k", b"poison")
    consumer = RecordingConsumer(bus.consumer(["t"], GROUP))
    publisher = DeadLetterOutage(bus.publisher())

    def handler(message: Message) -> None:
        raise PoisonMessage("bad")

    with running(consumer, publisher, handler):
        wait_for(lambda: publisher.refused >= 3)

    assert consumer.committed == []
    assert [m.value for m in _read(bus, "t", GROUP)] == [b"poison"], "delivered again"


def test_stop_finishes_the_message_in_hand_and_leaves_the_rest(bus: Bus) -> None:
    publisher = bus.publisher()
    for value in (b"m0", b"m1", b"m2"):
        publisher.publish("t", "k", value)
    consumer = RecordingConsumer(bus.consumer(["t"], GROUP))
    handled: list[bytes] = []
    stopping, stopped = threading.Event(), threading.Event()

    def handler(message: Message) -> None:
        stopping.set()  # SIGTERM arrives while the first message is being handled
        assert stopped.wait(30)
        handled.append(message.value)

    with running(consumer, bus.publisher(), handler) as stop:
        wait_for(stopping.is_set)
        stop.set()
        stopped.set()

    assert handled == [b"m0"]
    assert [m.value for m in consumer.committed] == [b"m0"]
    assert [m.value for m in _read(bus, "t", GROUP)] == [b"m1", b"m2"]


def test_stop_cuts_a_retry_backoff_short(bus: Bus) -> None:
    bus.publisher().publish("t", "k", b"failing")
    consumer = RecordingConsumer(bus.consumer(["t"], GROUP))
    failed = threading.Event()

    def handler(message: Message) -> None:
        failed.set()
        raise RuntimeError("down")

    started = time.monotonic()
    with running(consumer, bus.publisher(), handler, backoff_s=60.0):
        wait_for(failed.is_set)

    assert time.monotonic() - started < STOP_JOIN_S
    assert consumer.committed == []
    assert [m.value for m in _read(bus, "t", GROUP)] == [b"failing"]


@pytest.mark.kafka
def test_dead_lettering_on_kafka(kafka_settings: BusSettings) -> None:
    bus = open_bus(kafka_settings, Path("unused"))
    topic = f"runner-{uuid.uuid4().hex[:8]}"
    bus.ensure_topics([TopicSpec(topic, 2), TopicSpec(dead_letter_topic(topic), 2)])
    publisher = bus.publisher()
    publisher.publish(topic, "1.2.3", b"poison", {"event-id": b"e1"})
    publisher.close()
    consumer = RecordingConsumer(bus.consumer([topic], GROUP))

    def handler(message: Message) -> None:
        raise PoisonMessage("bad")

    reader = bus.consumer([dead_letter_topic(topic)], "dlq-reader")
    dead: list[Message] = []

    def dead_lettered() -> bool:
        dead.extend(reader.poll(0.5))
        return bool(dead)

    with running(consumer, bus.publisher(), handler):
        wait_for(dead_lettered, timeout=60, interval=0)
        wait_for(lambda: consumer.committed)
    reader.close()
    bus.close()

    (message,) = dead
    source = consumer.committed[0]
    assert (message.key, message.value) == ("1.2.3", b"poison")
    assert message.partition == source.partition, "the same key lands on the same partition"
    assert message.header(ERROR_HEADER) == b"bad"
    assert message.header("event-id") == b"e1"
    assert message.header(SOURCE_TOPIC_HEADER) == topic.encode()
    assert message.header(SOURCE_PARTITION_HEADER) == str(source.partition).encode()
    assert message.header(SOURCE_OFFSET_HEADER) == str(source.offset).encode()
