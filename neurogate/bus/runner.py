"""The consume loop every service shares: handle, commit after processing, dead-letter poison.

A handler raises :class:`PoisonMessage` for a message that can never be processed (it fails
schema parsing, say): it goes to the topic's dead-letter topic at once. Any other exception is
retried with backoff; after ``max_attempts`` the message is dead-lettered too, so one bad message
never blocks its partition. A message is committed only once it is handled or dead-lettered: if
the dead-letter topic cannot be written, the loop retries that and commits nothing, and a
message left unsettled when the loop stops is delivered again after a restart.
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
_MAX_ERROR_BYTES = 4000  # keeps a long traceback text from bloating the dead letter


class PoisonMessage(Exception):
    """The message can never be processed; retrying is pointless."""


def consume(
    consumer: Consumer,
    publisher: Publisher,
    handler: Callable[[Message], None],
    *,
    stop: threading.Event,
    max_attempts: int,
    poll_timeout_s: float = 1.0,
    retry_backoff_s: float = 1.0,
    heartbeat: Callable[[], None] = lambda: None,
) -> None:
    """Handle messages until ``stop`` is set, finishing the message in hand first.

    Parameters
    ----------
    consumer
        Where messages come from; each is committed once handled or dead-lettered.
    publisher
        Where dead letters go (``dead_letter_topic(message.topic)``).
    handler
        Processes one message; raises :class:`PoisonMessage` for one that can never succeed.
    stop
        Set it (on SIGTERM, say) to end the loop; waits between retries end early too.
    max_attempts
        Calls of ``handler`` for one message before it is dead-lettered.
    poll_timeout_s
        Longest wait for new messages, which bounds how long ``stop`` goes unnoticed when idle.
    retry_backoff_s
        Wait after a failure; the n-th retry of a handler waits n times this.
    heartbeat
        Called before each poll: a liveness signal that stops when the loop hangs.
    """
    while not stop.is_set():
        heartbeat()
        try:
            messages = consumer.poll(poll_timeout_s)
        except BusUnavailable as exc:
            log.warning("bus unavailable while polling", extra={"error": str(exc)})
            stop.wait(retry_backoff_s)
            continue
        for message in messages:
            # The rest of the batch is not committed: it is delivered again after a restart.
            if stop.is_set():
                return
            settled = _settle(
                message, consumer, publisher, handler, stop, max_attempts, retry_backoff_s
            )
            if not settled:
                return


def _settle(
    message: Message,
    consumer: Consumer,
    publisher: Publisher,
    handler: Callable[[Message], None],
    stop: threading.Event,
    max_attempts: int,
    backoff_s: float,
) -> bool:
    """Handle or dead-letter ``message``, then commit it; ``False`` if ``stop`` came first."""
    failure: str | None = None
    for attempt in range(1, max_attempts + 1):
        try:
            handler(message)
        except PoisonMessage as exc:
            failure = str(exc) or type(exc).__name__
            log.error("poison message", extra={**_ids(message), "error": failure})
            break
        except Exception as exc:  # any failure of the unit of work: retry, then dead-letter
            log.exception("handler failed", extra={**_ids(message), "attempt": attempt})
            failure = f"failed {attempt} times; last error: {exc!r}"
            if attempt < max_attempts and stop.wait(backoff_s * attempt):
                return False
        else:
            failure = None
            break
    if failure is not None and not _dead_letter(message, publisher, failure, stop, backoff_s):
        return False
    return _until_done(lambda: consumer.commit(message), message, "commit", stop, backoff_s)


def _dead_letter(
    message: Message, publisher: Publisher, failure: str, stop: threading.Event, backoff_s: float
) -> bool:
    """Publish ``message`` unchanged to its dead-letter topic, saying why and where it was."""
    target = dead_letter_topic(message.topic)
    headers = {
        **dict(message.headers),
        ERROR_HEADER: failure.encode()[:_MAX_ERROR_BYTES],
        SOURCE_TOPIC_HEADER: message.topic.encode(),
        SOURCE_PARTITION_HEADER: str(message.partition).encode(),
        SOURCE_OFFSET_HEADER: str(message.offset).encode(),
    }

    def send() -> None:
        publisher.publish(target, message.key, message.value, headers)

    if not _until_done(send, message, "dead-letter", stop, backoff_s):
        return False
    log.warning("message dead-lettered", extra={**_ids(message), "dead_letter_topic": target})
    return True


def _until_done(
    action: Callable[[], None],
    message: Message,
    what: str,
    stop: threading.Event,
    backoff_s: float,
) -> bool:
    """Run ``action`` until the bus takes it (at least once, even when stopping)."""
    while True:
        try:
            action()
            return True
        except BusUnavailable as exc:
            log.warning(
                "%s failed; not committed, will retry",
                what,
                extra={**_ids(message), "error": str(exc)},
            )
        if stop.wait(backoff_s):
            return False


def _ids(message: Message) -> dict[str, object]:
    return {
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "key": message.key,
    }
