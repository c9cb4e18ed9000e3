"""The consume loop every service shares: handle, commit after processing, dead-letter poison.

A handler raises :class:`PoisonMessage` for a message that can never be processed (it fails
schema parsing, say): it goes to the topic's dead-letter topic at once. Any other exception is
retried with backoff; after ``max_attempts`` the message is dead-lettered too, so one bad message
never blocks its partition. A message is committed only once it is handled or dead-lettered.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from neurogate.bus import BusUnavailable, Consumer, Message, Publisher
from schemas.topics import dead_letter_topic

log = logging.getLogger(__name__)

ERROR_HEADER = "x-neurogate-error"
SOURCE_TOPIC_HEADER = "x-neurogate-source-topic"
SOURCE_PARTITION_HEADER = "x-neurogate-source-partition"
SOURCE_OFFSET_HEADER = "x-neurogate-source-offset"
_MAX_ERROR_BYTES = 4000


class PoisonMessage(Exception):
    """The message can never be processed; retrying is pointless."""


def _ids(message: Message) -> dict[str, object]:
    return {
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "key": message.key,
    }


def consume(
    consumer: Consumer,
    publisher: Publisher,
    handler: Callable[[Message], None],
    *,
    stop: threading.Event,
    max_attempts: int,
    poll_timeout_s: float = 1.0,
    retry_backoff_s: float = 1.0,
) -> None:
    """Handle messages until ``stop`` is set; the message in hand is finished first."""
    while not stop.is_set():
        try:
            messages = consumer.poll(poll_timeout_s)
        except BusUnavailable as exc:
            log.warning("bus unavailable while polling", extra={"error": str(exc)})
            stop.wait(retry_backoff_s)
            continue
        for message in messages:
            settled = _process(
                message, consumer, publisher, handler, stop, max_attempts, retry_backoff_s
            )
            if not settled:
                return  # stopped while the message could not be settled: it will be redelivered


def _process(
    message: Message,
    consumer: Consumer,
    publisher: Publisher,
    handler: Callable[[Message], None],
    stop: threading.Event,
    max_attempts: int,
    backoff_s: float,
) -> bool:
    """Handle one message until it is committed (True) or ``stop`` interrupts (False)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            handler(message)
            break
        except PoisonMessage as exc:
            log.error("poison message", extra={**_ids(message), "error": str(exc)})
            if not _dead_letter(message, publisher, str(exc), stop, backoff_s):
                return False
            break
        except Exception as exc:  # any failure of the unit of work: retry, then dead-letter
            log.exception("handler failed", extra={**_ids(message), "attempt": attempt})
            if attempt >= max_attempts:
                reason = f"failed {attempt} times; last error: {exc!r}"
                if not _dead_letter(message, publisher, reason, stop, backoff_s):
                    return False
                break
            if stop.wait(backoff_s * attempt):
                return False
    return _commit(message, consumer, stop, backoff_s)


def _dead_letter(
    message: Message, publisher: Publisher, reason: str, stop: threading.Event, backoff_s: float
) -> bool:
    headers = {
        **dict(message.headers),
        ERROR_HEADER: reason.encode()[:_MAX_ERROR_BYTES],
        SOURCE_TOPIC_HEADER: message.topic.encode(),
        SOURCE_PARTITION_HEADER: str(message.partition).encode(),
        SOURCE_OFFSET_HEADER: str(message.offset).encode(),
    }
    target = dead_letter_topic(message.topic)

    def send() -> None:
        publisher.publish(target, message.key, message.value, headers)
        log.warning("message dead-lettered", extra={**_ids(message), "dlq": target})

    return _until_done(send, message, "dead-letter", stop, backoff_s)


def _commit(message: Message, consumer: Consumer, stop: threading.Event, backoff_s: float) -> bool:
    return _until_done(lambda: consumer.commit(message), message, "commit", stop, backoff_s)


def _until_done(
    action: Callable[[], None],
    message: Message,
    what: str,
    stop: threading.Event,
    backoff_s: float,
) -> bool:
    """Run ``action`` until the bus takes it; at least once, even when stopping."""
    while True:
        try:
            action()
            return True
        except BusUnavailable as exc:
            log.warning(f"{what} failed; will retry", extra={**_ids(message), "error": str(exc)})
        if stop.wait(backoff_s):
            return False
