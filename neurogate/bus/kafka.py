"""The Kafka backend (kafka-python), kept to the standard protocol so that Apache Kafka in
production and any Kafka-protocol broker in tests behave alike.

Topics are created explicitly, with their partition counts, at service start
(:meth:`KafkaBus.ensure_topics`); ``publish`` never creates them. Clients are created lazily and
the producer is re-created after a failure, so a node started while the broker is down keeps
running and catches up when it returns. Nothing here relies on end offsets, lag,
``create_partitions`` or ``describe_groups``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from neurogate.bus import MS_PER_S, BusUnavailable, Message, TopicSpec
from neurogate.settings import BusSettings

log = logging.getLogger(__name__)

_NO_ERROR = 0
_TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno
_NO_LEADER_EPOCH = -1
_EXPIRY_GRACE_S = 1.0  # beyond the delivery timeout, so the producer expires a record first
# kafka-python wants a request to outlive a session, or a group join could time out.
_REQUEST_OVER_SESSION_MS = 5000


def client_config(settings: BusSettings) -> dict[str, Any]:
    """What every kafka-python client of the node (admin, producer, consumer) is given."""
    config: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "client_id": settings.kafka_client_id,
        "security_protocol": settings.kafka_security_protocol,
        "request_timeout_ms": settings.kafka_request_timeout_ms,
        # How long a new client waits for a first broker: a down broker fails within a request.
        "bootstrap_timeout_ms": settings.kafka_request_timeout_ms,
    }
    if settings.kafka_security_protocol.startswith("SASL_"):
        assert settings.kafka_sasl_password is not None  # checked by BusSettings
        config.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password.get_secret_value(),
        )
    if settings.kafka_security_protocol.endswith("SSL"):
        config["ssl_check_hostname"] = True
        files = {
            "ssl_cafile": settings.kafka_ssl_cafile,
            "ssl_certfile": settings.kafka_ssl_certfile,
            "ssl_keyfile": settings.kafka_ssl_keyfile,
        }
        config.update({key: str(path) for key, path in files.items() if path is not None})
    return config


class KafkaBus:
    """The Kafka backend; it holds no connection of its own."""

    def __init__(self, settings: BusSettings) -> None:
        self._settings = settings

    def ensure_topics(self, topics: Iterable[TopicSpec]) -> None:
        """Create the missing topics; an existing topic keeps its partitions as they are."""
        wanted = {
            str(t.name): {
                "num_partitions": t.partitions,
                "replication_factor": t.replication_factor,
            }
            for t in topics
        }
        if not wanted:
            return
        try:
            admin = KafkaAdminClient(**client_config(self._settings))
        except KafkaError as exc:
            raise BusUnavailable(f"kafka: connecting to create topics: {exc!r}") from exc
        try:
            # A dict of options: kafka-python 3 deprecates the NewTopic list form.
            response = admin.create_topics(wanted, raise_errors=False)
        except KafkaError as exc:
            raise BusUnavailable(f"kafka: creating topics {sorted(wanted)}: {exc!r}") from exc
        finally:
            admin.close()
        for topic in response.get("topics", []):
            if topic["error_code"] not in (_NO_ERROR, _TOPIC_ALREADY_EXISTS):
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
    """Publishes with ``acks=all`` and waits for the broker's acknowledgement.

    The producer is created on first use and dropped after any failure, so the next
    ``publish`` starts afresh (kafka-python raises ``NoBrokersAvailable`` from the constructor
    when no broker is up; a restarted broker may have lost the producer's state).
    """

    def __init__(self, settings: BusSettings) -> None:
        self._settings = settings
        self._timeout_s = settings.kafka_request_timeout_ms / MS_PER_S
        self._producer: KafkaProducer | None = None

    def publish(
        self, topic: str, key: str, value: bytes, headers: Mapping[str, bytes] | None = None
    ) -> None:
        try:
            future = self._connect().send(
                str(topic), key=key.encode(), value=value, headers=list((headers or {}).items())
            )
            # The producer expires the record after its delivery timeout; waiting a little
            # longer lets that happen first, so nothing of it is left behind in the producer.
            future.get(timeout=self._timeout_s + _EXPIRY_GRACE_S)
        except KafkaError as exc:
            self.close()
            raise BusUnavailable(f"kafka: publishing to {topic}: {exc!r}") from exc

    def close(self) -> None:
        """Send what is pending (for at most about a request timeout), then disconnect."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            producer.close(timeout=self._timeout_s + _EXPIRY_GRACE_S)
        except KafkaError as exc:  # kafka-python 3.0.12 raises when records are still pending
            log.warning("kafka producer closed with records unsent", extra={"error": repr(exc)})

    def _connect(self) -> KafkaProducer:
        if self._producer is None:
            timeout_ms = self._settings.kafka_request_timeout_ms
            self._producer = KafkaProducer(
                **client_config(self._settings),
                acks="all",
                max_block_ms=timeout_ms,
                delivery_timeout_ms=timeout_ms,
                linger_ms=0,
            )
        return self._producer


class KafkaGroupConsumer:
    """A consumer-group member; offsets are committed explicitly, after processing.

    The client is created on the first ``poll``, and again on a later one if the broker could
    not be reached, so a worker started before the broker waits for it instead of failing.
    """

    def __init__(self, settings: BusSettings, topics: list[str], group_id: str) -> None:
        self._settings = settings
        self._topics = topics
        self._group = group_id
        self._consumer: KafkaConsumer | None = None

    def poll(self, timeout_s: float, max_messages: int = 16) -> list[Message]:
        try:
            batches = self._connect().poll(
                timeout_ms=int(timeout_s * MS_PER_S), max_records=max_messages
            )
        except KafkaError as exc:
            raise BusUnavailable(f"kafka: polling {self._topics}: {exc!r}") from exc
        return [
            Message(
                topic=record.topic,
                key=record.key.decode() if record.key is not None else "",
                value=record.value if record.value is not None else b"",
                headers=tuple((k, v or b"") for k, v in record.headers or ()),
                partition=record.partition,
                offset=record.offset,
            )
            for records in batches.values()
            for record in records
        ]

    def commit(self, message: Message) -> None:
        ids = {
            "group": self._group,
            "topic": message.topic,
            "partition": message.partition,
            "offset": message.offset,
            "key": message.key,
        }
        if self._consumer is None:
            log.warning("commit dropped: this consumer is not in its group", extra=ids)
            return
        partition = TopicPartition(message.topic, message.partition)
        offsets = {partition: OffsetAndMetadata(message.offset + 1, "", _NO_LEADER_EPOCH)}
        try:
            self._consumer.commit(offsets)
        except CommitFailedError:
            log.warning("commit dropped: the group rebalanced; the new owner redelivers", extra=ids)
        except KafkaError as exc:
            raise BusUnavailable(
                f"kafka: commit {message.topic}/{message.partition}@{message.offset}: {exc!r}"
            ) from exc

    def close(self) -> None:
        """Leave the group, so that its partitions go to the other members at once."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()

    def _connect(self) -> KafkaConsumer:
        if self._consumer is None:
            settings = self._settings
            config = client_config(settings)
            config["request_timeout_ms"] = max(
                settings.kafka_request_timeout_ms,
                settings.kafka_session_timeout_ms + _REQUEST_OVER_SESSION_MS,
            )
            try:
                self._consumer = KafkaConsumer(
                    *self._topics,
                    **config,
                    group_id=self._group,
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                    session_timeout_ms=settings.kafka_session_timeout_ms,
                    heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
                    max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
                )
            except KafkaError as exc:
                raise BusUnavailable(f"kafka: joining group {self._group}: {exc!r}") from exc
        return self._consumer
