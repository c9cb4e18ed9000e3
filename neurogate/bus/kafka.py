"""The Kafka backend (kafka-python), kept to the standard protocol so that Apache Kafka in
production and any Kafka-protocol broker in tests behave alike.

Topics are created explicitly, with their partition counts, at service start
(:meth:`KafkaBus.ensure_topics`); ``publish`` never creates them. Clients are created lazily and
re-created after a failure, so a node started while the broker is down keeps running and
catches up when it returns.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from neurogate.bus import BusUnavailable, Message, TopicSpec
from neurogate.settings import BusSettings

log = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno


def _client_config(settings: BusSettings) -> dict[str, Any]:
    return {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "client_id": settings.kafka_client_id,
        "security_protocol": settings.kafka_security_protocol,
        "request_timeout_ms": settings.kafka_request_timeout_ms,
        # How long a new client waits for a first broker: a down broker fails fast.
        "bootstrap_timeout_ms": settings.kafka_request_timeout_ms,
    }


class KafkaBus:
    def __init__(self, settings: BusSettings) -> None:
        self._settings = settings

    def ensure_topics(self, topics: Iterable[TopicSpec]) -> None:
        wanted = {
            t.name: {"num_partitions": t.partitions, "replication_factor": t.replication_factor}
            for t in topics
        }
        try:
            admin = KafkaAdminClient(**_client_config(self._settings))
        except KafkaError as exc:
            raise BusUnavailable(f"kafka: {exc}") from exc
        try:
            response = admin.create_topics(wanted, raise_errors=False)
        except KafkaError as exc:
            raise BusUnavailable(f"kafka: creating topics {sorted(wanted)}: {exc}") from exc
        finally:
            admin.close()
        for topic in response.get("topics", []):
            if topic["error_code"] not in (0, _TOPIC_ALREADY_EXISTS):
                raise BusUnavailable(
                    f"kafka: cannot create topic {topic['name']}: error {topic['error_code']}"
                    f" {topic.get('error_message') or ''}"
                )

    def publisher(self) -> KafkaPublisher:
        return KafkaPublisher(self._settings)

    def consumer(self, topics: Sequence[str], group_id: str) -> KafkaGroupConsumer:
        return KafkaGroupConsumer(self._settings, [str(t) for t in topics], group_id)

    def close(self) -> None:
        """Nothing to release: publishers and consumers close their own clients."""


class KafkaPublisher:
    """Publishes with ``acks=all`` and waits for the broker's acknowledgement."""

    def __init__(self, settings: BusSettings) -> None:
        self._settings = settings
        self._producer: KafkaProducer | None = None

    def _connect(self) -> KafkaProducer:
        if self._producer is None:
            timeout = self._settings.kafka_request_timeout_ms
            self._producer = KafkaProducer(
                **_client_config(self._settings),
                acks="all",
                max_block_ms=timeout,
                delivery_timeout_ms=timeout + 1000,
                linger_ms=0,
            )
        return self._producer

    def publish(
        self, topic: str, key: str, value: bytes, headers: Mapping[str, bytes] | None = None
    ) -> None:
        timeout_s = self._settings.kafka_request_timeout_ms / 1000
        try:
            future = self._connect().send(
                topic, key=key.encode(), value=value, headers=list((headers or {}).items())
            )
            future.get(timeout=timeout_s + 2)
        except KafkaError as exc:
            self.close()  # start afresh next time: the broker may have restarted empty
            raise BusUnavailable(f"kafka: publishing to {topic}: {exc!r}") from exc

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=1)


class KafkaGroupConsumer:
    """A consumer-group member; offsets are committed explicitly, after processing."""

    def __init__(self, settings: BusSettings, topics: list[str], group_id: str) -> None:
        config = _client_config(settings)
        # kafka-python requires requests to outlive a session.
        config["request_timeout_ms"] = max(
            settings.kafka_request_timeout_ms, settings.kafka_session_timeout_ms + 5000
        )
        try:
            self._consumer = KafkaConsumer(
                *topics,
                **config,
                group_id=group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=settings.kafka_session_timeout_ms,
                heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
                max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
            )
        except KafkaError as exc:
            raise BusUnavailable(f"kafka: joining group {group_id}: {exc}") from exc

    def poll(self, timeout_s: float, max_messages: int = 16) -> list[Message]:
        try:
            batches = self._consumer.poll(
                timeout_ms=int(timeout_s * 1000), max_records=max_messages
            )
        except KafkaError as exc:
            raise BusUnavailable(f"kafka: poll: {exc}") from exc
        return [
            Message(
                topic=record.topic,
                key=record.key.decode() if record.key is not None else "",
                value=record.value,
                headers=tuple((k, v or b"") for k, v in record.headers or ()),
                partition=record.partition,
                offset=record.offset,
            )
            for records in batches.values()
            for record in records
        ]

    def commit(self, message: Message) -> None:
        partition = TopicPartition(message.topic, message.partition)
        try:
            self._consumer.commit({partition: OffsetAndMetadata(message.offset + 1, "", -1)})
        except KafkaError as exc:
            raise BusUnavailable(
                f"kafka: commit {message.topic}/{message.partition}: {exc}"
            ) from exc

    def close(self) -> None:
        self._consumer.close()
