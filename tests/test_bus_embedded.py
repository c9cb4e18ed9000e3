"""The embedded bus: Kafka-like semantics in one SQLite file, across threads and processes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from neurogate.bus import Message, TopicSpec
from neurogate.bus.embedded import PARTITION, EmbeddedBus, EmbeddedConsumer
from tests.harness import REPO, wait_for

# A consumer in another process: it commits the first message, keeps the second in hand and
# polls on until it is killed.
_HOLDING_CONSUMER = """
import sys
from pathlib import Path
from neurogate.bus.embedded import EmbeddedBus

consumer = EmbeddedBus(Path(sys.argv[1]), session_timeout_s=float(sys.argv[2])).consumer(["t"], "g")
first, second = consumer.poll(10.0, max_messages=2)
consumer.commit(first)
print("holding", second.offset, flush=True)
while True:
    consumer.poll(1.0)
"""


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[EmbeddedBus]:
    bus = EmbeddedBus(tmp_path / "bus.sqlite")
    yield bus
    bus.close()


def _values(messages: list[Message]) -> list[bytes]:
    return [m.value for m in messages]


def _drain(consumer: EmbeddedConsumer, count: int, timeout: float = 10.0) -> list[Message]:
    got: list[Message] = []

    def enough() -> bool:
        got.extend(consumer.poll(0.1, max_messages=100))
        return len(got) >= count

    wait_for(enough, timeout=timeout, interval=0)
    return got


def test_round_trip_with_keys_headers_and_order(bus: EmbeddedBus) -> None:
    bus.ensure_topics([TopicSpec("t", 4)])
    bus.ensure_topics([TopicSpec("t", 4)])  # idempotent
    publisher = bus.publisher()
    for i in range(5):
        headers = {"event-id": f"e{i}".encode(), "raw": bytes([0, 255, i])}
        publisher.publish("t", f"study-{i % 2}", f"v{i}".encode(), headers)
    consumer = bus.consumer(["t"], "g")

    messages = consumer.poll(1.0, max_messages=10)

    assert _values(messages) == [b"v0", b"v1", b"v2", b"v3", b"v4"]
    assert [m.key for m in messages] == ["study-0", "study-1", "study-0", "study-1", "study-0"]
    assert messages[3].headers == (("event-id", b"e3"), ("raw", bytes([0, 255, 3])))
    assert {m.topic for m in messages} == {"t"} and {m.partition for m in messages} == {PARTITION}
    offsets = [m.offset for m in messages]
    assert offsets == sorted(set(offsets)), "offsets increase"
    assert consumer.poll(0.1) == [], "a polled message is not handed out twice"


def test_poll_returns_as_soon_as_a_message_is_published(bus: EmbeddedBus) -> None:
    consumer = bus.consumer(["t"], "g")
    assert consumer.poll(0.05) == []
    timer = threading.Timer(0.2, bus.publisher().publish, ("t", "k", b"late"))
    timer.start()
    started = time.monotonic()

    assert _values(consumer.poll(10.0)) == [b"late"]
    assert time.monotonic() - started < 5.0
    timer.join()


def test_restart_resumes_from_the_committed_offset(bus: EmbeddedBus) -> None:
    publisher = bus.publisher()
    for i in range(4):
        publisher.publish("t", "k", f"v{i}".encode())
    first = bus.consumer(["t"], "g")
    messages = first.poll(1.0, max_messages=4)
    first.commit(messages[1])  # processed v0 and v1; v2 and v3 were polled but not processed
    first.close()

    second = bus.consumer(["t"], "g")
    assert _values(second.poll(1.0)) == [b"v2", b"v3"]


def test_each_group_sees_every_message(bus: EmbeddedBus) -> None:
    publisher = bus.publisher()
    for i in range(3):
        publisher.publish("t", "k", f"v{i}".encode())
    workers, api = bus.consumer(["t"], "workers"), bus.consumer(["t"], "api")
    workers.commit(workers.poll(1.0)[-1])

    assert _values(api.poll(1.0)) == [b"v0", b"v1", b"v2"]


def test_one_member_consumes_and_a_closed_member_hands_over_at_once(tmp_path: Path) -> None:
    # A long session: only releasing the lease on close lets the standby in within the test.
    bus = EmbeddedBus(tmp_path / "bus.sqlite", session_timeout_s=60.0)
    publisher = bus.publisher()
    publisher.publish("t", "k", b"v0")
    publisher.publish("t", "k", b"v1")
    active, standby = bus.consumer(["t"], "g"), bus.consumer(["t"], "g")
    first, _ = active.poll(1.0)
    active.commit(first)
    assert standby.poll(0.3) == []

    active.close()

    assert _values(_drain(standby, 1, timeout=5.0)) == [b"v1"]
    bus.close()


def test_a_member_that_stops_polling_loses_its_topic(tmp_path: Path) -> None:
    bus = EmbeddedBus(tmp_path / "bus.sqlite", session_timeout_s=0.6, max_poll_interval_s=0.5)
    publisher = bus.publisher()
    publisher.publish("t", "k", b"v0")
    active, standby = bus.consumer(["t"], "g"), bus.consumer(["t"], "g")
    (message,) = active.poll(1.0)
    active.commit(message)
    publisher.publish("t", "k", b"v1")
    assert standby.poll(0.2) == []

    # The active member lives on but polls no more (a handler stuck on one message).
    assert _values(_drain(standby, 1)) == [b"v1"]
    assert active.poll(0.2) == [], "the stalled member no longer consumes the topic"
    bus.close()


def test_a_killed_member_is_replaced_from_the_committed_offset(tmp_path: Path) -> None:
    # 3 s: a member's heartbeat held up a second by a loaded machine must not end its session.
    path, session_timeout_s = tmp_path / "bus.sqlite", 3.0
    bus = EmbeddedBus(path, session_timeout_s=session_timeout_s)
    publisher = bus.publisher()
    publisher.publish("t", "k", b"v0")
    publisher.publish("t", "k", b"v1")
    standby = bus.consumer(["t"], "g")
    member = subprocess.Popen(
        [sys.executable, "-c", _HOLDING_CONSUMER, str(path), str(session_timeout_s)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert member.stdout is not None
        assert member.stdout.readline().split() == ["holding", str(_offset_of(bus, b"v1"))]
        assert standby.poll(2 * session_timeout_s) == [], "the live member keeps its topic"
    finally:
        member.kill()
        member.wait()

    (message,) = _drain(standby, 1)
    assert message.value == b"v1", "the uncommitted message is delivered again"
    bus.close()


def _offset_of(bus: EmbeddedBus, value: bytes) -> int:
    reader = bus.consumer(["t"], "offset-reader")
    try:
        return next(m.offset for m in reader.poll(1.0, max_messages=100) if m.value == value)
    finally:
        reader.close()


def test_concurrent_publishers_lose_nothing(bus: EmbeddedBus) -> None:
    threads, per_thread = 4, 25

    def publish_all(name: str) -> None:
        publisher = bus.publisher()
        for n in range(per_thread):
            publisher.publish("t", name, f"{name}:{n}".encode())

    workers = [threading.Thread(target=publish_all, args=(f"p{i}",)) for i in range(threads)]
    for worker in workers:
        worker.start()
    received = _drain(bus.consumer(["t"], "g"), threads * per_thread)
    for worker in workers:
        worker.join()

    assert len(received) == threads * per_thread
    for i in range(threads):
        mine = [m.value for m in received if m.key == f"p{i}"]
        assert mine == [f"p{i}:{n}".encode() for n in range(per_thread)], "per-key order kept"


def test_a_message_published_by_another_process_is_received(tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite"
    bus = EmbeddedBus(path)
    consumer = bus.consumer(["t"], "g")
    assert consumer.poll(0.1) == []
    code = (
        "import sys; from pathlib import Path; from neurogate.bus.embedded import EmbeddedBus;"
        "EmbeddedBus(Path(sys.argv[1])).publisher().publish('t', 'k', b'from-afar', {'h': b'1'})"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, cwd=REPO)

    (message,) = _drain(consumer, 1)
    assert (message.key, message.value, message.header("h")) == ("k", b"from-afar", b"1")
    bus.close()
