"""The Kafka backend against a real Kafka-protocol broker (tansu), started by the suite.

A group join costs about three seconds on the test broker, so each test joins as few times as
its claim needs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from neurogate.bus import Bus, BusUnavailable, Consumer, Message, TopicSpec, open_bus
from neurogate.settings import BusSettings
from tests.harness import wait_for
from tests.kafka_broker import TansuBroker

pytestmark = pytest.mark.kafka

PARTITIONS = 4
OUTAGE_REQUEST_TIMEOUT_MS = 1000
# Bootstrap, metadata and acknowledgement each wait at most one request timeout.
OUTAGE_BOUND_S = 3 * OUTAGE_REQUEST_TIMEOUT_MS / 1000


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def bus(kafka_settings: BusSettings) -> Iterator[Bus]:
    bus = open_bus(kafka_settings, Path("unused"))
    yield bus
    bus.close()


def _collect(consumer: Consumer, count: int, *, commit: bool = False) -> list[Message]:
    got: list[Message] = []

    def enough() -> bool:
        for message in consumer.poll(0.5, max_messages=100):
            got.append(message)
            if commit:
                consumer.commit(message)
        return len(got) >= count

    wait_for(enough, timeout=60, interval=0)
    return got


def _partitions(settings: BusSettings, topic: str) -> set[int] | None:
    """The topic's partitions as the broker's metadata lists them (no group, no offsets)."""
    probe = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        return wait_for(lambda: probe.partitions_for_topic(topic), timeout=10)
    finally:
        probe.close()


def _publish_keyed(bus: Bus, topic: str, count: int, keys: int) -> None:
    publisher = bus.publisher()
    for i in range(count):
        publisher.publish(topic, f"1.2.{i % keys}", f"{i}".encode(), {"event-id": f"{i}".encode()})
    publisher.close()


def test_topics_keys_headers_and_restart_from_the_committed_offsets(
    bus: Bus,
    kafka_settings: BusSettings,
) -> None:
    topic = _name("studies")
    bus.ensure_topics([TopicSpec(topic, PARTITIONS)])
    bus.ensure_topics([TopicSpec(topic, PARTITIONS)])  # idempotent
    assert _partitions(kafka_settings, topic) == set(range(PARTITIONS))
    _publish_keyed(bus, topic, count=40, keys=20)
    group = _name("workers")

    first = bus.consumer([topic], group)
    got = _collect(first, 40)
    assert sorted(int(m.value) for m in got) == list(range(40))
    assert all(m.header("event-id") == m.value for m in got)
    by_key: dict[str, list[Message]] = {}
    for m in got:
        by_key.setdefault(m.key, []).append(m)
    for messages in by_key.values():
        assert len({m.partition for m in messages}) == 1, "a key stays on one partition"
        assert [int(m.value) for m in messages] == sorted(int(m.value) for m in messages)
    assert len({m.partition for m in got}) > 1, "keys spread over the partitions"
    # Process the first half of each partition, then restart.
    unprocessed: set[bytes] = set()
    for partition in {m.partition for m in got}:
        mine = sorted((m for m in got if m.partition == partition), key=lambda m: m.offset)
        half = len(mine) // 2
        if half:
            first.commit(mine[half - 1])
        unprocessed |= {m.value for m in mine[half:]}
    first.close()

    second = bus.consumer([topic], group)
    again = _collect(second, len(unprocessed))
    second.close()
    assert sorted(m.value for m in again) == sorted(unprocessed)


def test_two_members_of_a_group_share_the_partitions(bus: Bus) -> None:
    topic = _name("shared")
    bus.ensure_topics([TopicSpec(topic, PARTITIONS)])
    _publish_keyed(bus, topic, count=40, keys=20)
    group = _name("workers")
    a, b = bus.consumer([topic], group), bus.consumer([topic], group)
    got_a: list[Message] = []
    got_b: list[Message] = []

    def all_seen() -> bool:
        for consumer, got in ((a, got_a), (b, got_b)):
            for message in consumer.poll(0.3, max_messages=100):
                got.append(message)
                consumer.commit(message)
        return len(got_a) + len(got_b) >= 40

    wait_for(all_seen, timeout=60, interval=0)
    a.close()
    b.close()
    assert sorted(int(m.value) for m in got_a + got_b) == list(range(40)), "each message once"
    assert got_a and got_b, "both members received partitions"


def test_publish_fails_fast_while_the_broker_is_down_and_recovers(
    tansu_broker: TansuBroker,
    kafka_settings: BusSettings,
) -> None:
    settings = kafka_settings.model_copy(
        update={"kafka_request_timeout_ms": OUTAGE_REQUEST_TIMEOUT_MS}
    )
    bus = open_bus(settings, Path("unused"))
    topic = _name("outage")
    bus.ensure_topics([TopicSpec(topic, 1)])
    publisher = bus.publisher()
    publisher.publish(topic, "k", b"before")

    tansu_broker.stop()
    try:
        fresh = bus.publisher()  # its first use finds no broker at all
        consumer = bus.consumer([topic], _name("g"))  # created while the broker is down
        for attempt in (
            lambda: publisher.publish(topic, "k", b"during"),
            lambda: fresh.publish(topic, "k", b"during"),
            lambda: bus.ensure_topics([TopicSpec(topic, 1)]),
            lambda: consumer.poll(0.1),
        ):
            started = time.monotonic()
            with pytest.raises(BusUnavailable):
                attempt()
            assert time.monotonic() - started < OUTAGE_BOUND_S
    finally:
        tansu_broker.start()

    # The test broker keeps nothing across a restart; a service ensures its topics on start.
    bus.ensure_topics([TopicSpec(topic, 1)])
    publisher.publish(topic, "k", b"after")
    fresh.publish(topic, "k", b"fresh")
    assert sorted(m.value for m in _collect(consumer, 2)) == [b"after", b"fresh"]
    consumer.close()
    publisher.close()
    fresh.close()
