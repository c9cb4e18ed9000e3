"""The embedded bus: Kafka-like semantics in one SQLite file, across threads and processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from neurogate.bus import TopicSpec
from neurogate.bus.embedded import EmbeddedBus
from tests.harness import REPO, wait_for


def _values(messages) -> list[bytes]:  # type: ignore[no-untyped-def]
    return [m.value for m in messages]


def test_round_trip_with_keys_headers_and_order(tmp_path: Path) -> None:
    bus = EmbeddedBus(tmp_path / "bus.sqlite")
    bus.ensure_topics([TopicSpec("t", 1)])
    publisher = bus.publisher()
    for i in range(5):
        publisher.publish("t", f"study-{i % 2}", f"v{i}".encode(), {"event-id": f"e{i}".encode()})
    consumer = bus.consumer(["t"], "g")

    messages = consumer.poll(1.0, max_messages=10)

    assert _values(messages) == [b"v0", b"v1", b"v2", b"v3", b"v4"]
    assert [m.key for m in messages] == ["study-0", "study-1", "study-0", "study-1", "study-0"]
    assert messages[3].header("event-id") == b"e3"
    assert [m.offset for m in messages] == sorted({m.offset for m in messages})
    consumer.close()
    bus.close()


def test_restart_resumes_from_the_committed_offset(tmp_path: Path) -> None:
    bus = EmbeddedBus(tmp_path / "bus.sqlite")
    publisher = bus.publisher()
    for i in range(4):
        publisher.publish("t", "k", f"v{i}".encode())
    first = bus.consumer(["t"], "g")
    messages = first.poll(1.0, max_messages=4)
    first.commit(messages[1])  # processed v0 and v1; v2 and v3 were polled but not processed
    first.close()

    second = bus.consumer(["t"], "g")
    assert _values(second.poll(1.0)) == [b"v2", b"v3"]
    second.close()
    bus.close()


def test_each_group_sees_every_message(tmp_path: Path) -> None:
    bus = EmbeddedBus(tmp_path / "bus.sqlite")
    bus.publisher().publish("t", "k", b"v")
    a, b = bus.consumer(["t"], "workers"), bus.consumer(["t"], "api")
    assert _values(a.poll(1.0)) == [b"v"]
    assert _values(b.poll(1.0)) == [b"v"]
    a.close()
    b.close()
    bus.close()


def test_one_active_member_per_group_and_takeover_when_it_dies(tmp_path: Path) -> None:
    bus = EmbeddedBus(tmp_path / "bus.sqlite", session_timeout_s=0.6)
    publisher = bus.publisher()
    publisher.publish("t", "k", b"v0")
    active, standby = bus.consumer(["t"], "g"), bus.consumer(["t"], "g")
    (message,) = active.poll(1.0)
    active.commit(message)
    assert standby.poll(0.2) == []

    publisher.publish("t", "k", b"v1")
    active._closed.set()  # dies without releasing its lease: the heartbeat stops
    active._heartbeat.join()

    assert _values(wait_for(lambda: standby.poll(0.1), timeout=10)) == [b"v1"]
    standby.close()
    bus.close()


def test_a_message_published_by_another_process_is_received(tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite"
    bus = EmbeddedBus(path)
    consumer = bus.consumer(["t"], "g")
    assert consumer.poll(0.1) == []
    code = (
        "from pathlib import Path; from neurogate.bus.embedded import EmbeddedBus;"
        f"EmbeddedBus(Path({str(path)!r})).publisher().publish('t', 'k', b'from-afar')"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)

    assert _values(wait_for(lambda: consumer.poll(0.5), timeout=10)) == [b"from-afar"]
    consumer.close()
    bus.close()
