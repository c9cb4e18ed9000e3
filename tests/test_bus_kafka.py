"""The Kafka backend against a real Kafka-protocol broker (tansu), started by the suite."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from neurogate.bus import BusUnavailable, Message, TopicSpec, open_bus
from neurogate.settings import BusSettings
from tests.harness import wait_for
from tests.kafka_broker import TansuBroker

pytestmark = pytest.mark.kafka


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _collect(consumer, count: int, timeout: float = 30.0) -> list[Message]:  # type: ignore[no-untyped-def]
    got: list[Message] = []

    def enough() -> bool:
        got.extend(consumer.poll(0.5, max_messages=100))
        return len(got) >= count

    wait_for(enough, timeout=timeout, interval=0)
    return got


def test_keyed_round_trip_restart_and_group_split(kafka_settings: BusSettings) -> None:
    bus = open_bus(kafka_settings, Path("unused"))
    topic = _name("studies")
    bus.ensure_topics([TopicSpec(topic, 4)])
    bus.ensure_topics([TopicSpec(topic, 4)])  # idempotent
    publisher = bus.publisher()
    for i in range(40):
        publisher.publish(topic, f"1.2.{i % 20}", f"{i}".encode(), {"event-id": f"{i}".encode()})

    # Two members of one group split the four partitions; together they see each message once.
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
    assert sorted(int(m.value) for m in got_a + got_b) == list(range(40))
    assert got_a and got_b, "both members received partitions"
    assert {m.partition for m in got_a}.isdisjoint({m.partition for m in got_b})
    assert a._consumer.partitions_for_topic(topic) == {0, 1, 2, 3}
    by_key: dict[str, set[int]] = {}
    for m in got_a + got_b:
        by_key.setdefault(m.key, set()).add(m.partition)
        assert m.header("event-id") == m.value
    assert all(len(partitions) == 1 for partitions in by_key.values()), "a key stays on a partition"
    a.close()
    b.close()

    # A restarted member resumes after the committed offsets: only new messages arrive.
    publisher.publish(topic, "1.2.99", b"after-restart")
    c = bus.consumer([topic], group)
    (message,) = _collect(c, 1)
    assert message.value == b"after-restart"
    c.close()
    publisher.close()


def test_publish_fails_fast_while_the_broker_is_down_and_recovers(
    tansu_broker: TansuBroker, kafka_settings: BusSettings
) -> None:
    bus = open_bus(kafka_settings, Path("unused"))
    topic = _name("outage")
    bus.ensure_topics([TopicSpec(topic, 1)])
    publisher = bus.publisher()
    publisher.publish(topic, "k", b"before")
    tansu_broker.stop()
    try:
        with pytest.raises(BusUnavailable):
            publisher.publish(topic, "k", b"during")
        with pytest.raises(BusUnavailable):
            bus.ensure_topics([TopicSpec(topic, 1)])
    finally:
        tansu_broker.start()
    bus.ensure_topics([TopicSpec(topic, 1)])  # the test broker keeps nothing across restarts
    publisher.publish(topic, "k", b"after")
    consumer = bus.consumer([topic], _name("g"))
    assert [m.value for m in _collect(consumer, 1)] == [b"after"]
    consumer.close()
    publisher.close()
