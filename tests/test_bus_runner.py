"""The shared consume loop: commit after processing, retries, dead-letter topics."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from neurogate.bus import Bus, Message, TopicSpec, open_bus
from neurogate.bus.runner import (
    ERROR_HEADER,
    SOURCE_OFFSET_HEADER,
    SOURCE_TOPIC_HEADER,
    PoisonMessage,
    consume,
)
from neurogate.settings import BusSettings
from tests.harness import wait_for


def _run(
    bus: Bus, topic: str, handler: Callable[[Message], None], attempts: int = 3
) -> threading.Event:
    stop = threading.Event()
    consumer, publisher = bus.consumer([topic], "runner"), bus.publisher()

    def loop() -> None:
        options = {"max_attempts": attempts, "poll_timeout_s": 0.1, "retry_backoff_s": 0.01}
        consume(consumer, publisher, handler, stop=stop, **options)
        consumer.close()
        publisher.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    stop.thread = thread  # type: ignore[attr-defined]
    return stop


def _stop(stop: threading.Event) -> None:
    stop.set()
    stop.thread.join(10)  # type: ignore[attr-defined]
    assert not stop.thread.is_alive()  # type: ignore[attr-defined]


def _dlq(bus: Bus, topic: str) -> list[Message]:
    consumer = bus.consumer([f"{topic}.dlq"], "dlq-reader")
    try:
        return consumer.poll(0.5, max_messages=10)
    finally:
        consumer.close()


@pytest.fixture
def bus(tmp_path: Path) -> Bus:
    return open_bus(BusSettings(), tmp_path / "bus.sqlite")


def test_poison_goes_to_the_dead_letter_topic_and_is_committed(bus: Bus) -> None:
    bus.publisher().publish("t", "1.2.3", b"not json")
    seen: list[bytes] = []

    def handler(message: Message) -> None:
        seen.append(message.value)
        raise PoisonMessage("invalid event: not json")

    stop = _run(bus, "t", handler)
    (dead,) = wait_for(lambda: _dlq(bus, "t"))
    _stop(stop)
    assert seen == [b"not json"]
    assert dead.key == "1.2.3" and dead.value == b"not json"
    assert dead.header(ERROR_HEADER) == b"invalid event: not json"
    assert dead.header(SOURCE_TOPIC_HEADER) == b"t"
    assert dead.header(SOURCE_OFFSET_HEADER) is not None
    # Committed: a new member of the group finds nothing left.
    assert bus.consumer(["t"], "runner").poll(0.2) == []


def test_transient_failures_are_retried_then_committed_once(bus: Bus) -> None:
    bus.publisher().publish("t", "k", b"flaky")
    calls: list[int] = []
    done = threading.Event()

    def handler(message: Message) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("database briefly unavailable")
        done.set()

    stop = _run(bus, "t", handler)
    wait_for(done.is_set)
    _stop(stop)
    assert len(calls) == 3
    assert _dlq(bus, "t") == []
    assert bus.consumer(["t"], "runner").poll(0.2) == []


def test_a_message_that_always_fails_is_dead_lettered_after_max_attempts(bus: Bus) -> None:
    bus.publisher().publish("t", "k", b"doomed")
    bus.publisher().publish("t", "k", b"fine")
    handled: list[bytes] = []

    def handler(message: Message) -> None:
        if message.value == b"doomed":
            raise ValueError("cannot segment")
        handled.append(message.value)

    stop = _run(bus, "t", handler, attempts=2)
    (dead,) = wait_for(lambda: _dlq(bus, "t"))
    wait_for(lambda: handled)
    _stop(stop)
    assert b"failed 2 times" in (dead.header(ERROR_HEADER) or b"")
    assert handled == [b"fine"], "one bad message does not block the partition"


@pytest.mark.kafka
def test_dead_lettering_on_kafka(kafka_settings: BusSettings) -> None:
    bus = open_bus(kafka_settings, Path("unused"))
    bus.ensure_topics([TopicSpec("runner-t", 1), TopicSpec("runner-t.dlq", 1)])
    publisher = bus.publisher()
    publisher.publish("runner-t", "1.2.3", b"poison")
    publisher.close()

    def handler(message: Message) -> None:
        raise PoisonMessage("bad")

    stop = _run(bus, "runner-t", handler)
    dead: list[Message] = []
    reader = bus.consumer(["runner-t.dlq"], "dlq-reader")
    wait_for(lambda: dead.extend(reader.poll(0.5)) or dead, timeout=60, interval=0)
    reader.close()
    _stop(stop)
    assert dead[0].value == b"poison" and dead[0].header(ERROR_HEADER) == b"bad"
