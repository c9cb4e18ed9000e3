"""Transactional outbox: events are committed with the state they announce, then relayed.

A service writes an :class:`~neurogate.db.models.OutboxEvent` in the same transaction as the
change it announces (:func:`enqueue`); :class:`OutboxRelay` publishes pending rows in order and
stamps them. When the bus is down, rows wait and the relay backs off; nothing is lost, and an
event is published again only after a crash between publishing and stamping (same ``event_id``).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from neurogate.bus import Bus, BusUnavailable, Publisher, ensure_service_topics
from neurogate.db.models import OutboxEvent
from neurogate.settings import BusSettings
from schemas.events import EventBase

log = logging.getLogger(__name__)

EVENT_ID_HEADER = "event-id"
_MAX_ERROR_CHARS = 2000


def enqueue(session: Session, *, topic: str, key: str, event: EventBase) -> None:
    """Add ``event`` to the outbox; it is published once ``session`` commits."""
    session.add(
        OutboxEvent(
            event_id=str(event.event_id),
            topic=topic,
            key=key,
            payload=event.to_bytes(),
            created_at=dt.datetime.now(dt.UTC),
            attempts=0,
        )
    )


def pending_count(session: Session) -> int:
    stmt = select(func.count()).select_from(OutboxEvent).where(OutboxEvent.published_at.is_(None))
    return session.scalar(stmt) or 0


class OutboxRelay:
    """Publishes outbox rows to the bus, in ``id`` order, until stopped.

    Parameters
    ----------
    sessions
        Session factory of the database holding the outbox.
    publisher
        Where events go. Its ``publish`` returns once the bus has the event durably.
    prepare
        Called before the first publish after start-up or an outage (e.g. to ensure topics);
        a :class:`BusUnavailable` from it is handled like a failed publish.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        publisher: Publisher,
        *,
        prepare: Callable[[], None] = lambda: None,
        batch_size: int = 100,
        idle_wait_s: float = 5.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        self._sessions = sessions
        self._publisher = publisher
        self._prepare = prepare
        self._prepared = False
        self._batch_size = batch_size
        self._idle_wait_s = idle_wait_s
        self._max_backoff_s = max_backoff_s
        self._wake = threading.Event()
        # For health reporting: failed passes in a row (0 while the bus takes events) and why.
        self.consecutive_failures = 0
        self.last_error: str | None = None

    def close(self) -> None:
        """Release the publisher; call after :meth:`run` has returned."""
        self._publisher.close()

    def wake(self) -> None:
        """Ask the relay to look for new rows now rather than at its next idle poll."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Relay until ``stop`` is set; meant to be a thread's target."""
        backoff = 0.0
        while not stop.is_set():
            try:
                published = self.publish_pending()
                backoff = 0.0
                self.consecutive_failures, self.last_error = 0, None
            except BusUnavailable as exc:
                self._prepared = False
                self.consecutive_failures += 1
                self.last_error = str(exc)
                backoff = min(max(backoff * 2, 0.5), self._max_backoff_s)
                log.warning(
                    "event bus unavailable; outbox events wait",
                    extra={"error": str(exc), "retry_in_s": backoff},
                )
                stop.wait(backoff)
                continue
            if published < self._batch_size:
                self._wake.wait(self._idle_wait_s)
                self._wake.clear()

    def publish_pending(self) -> int:
        """Publish up to one batch of pending events; the number published.

        Raises
        ------
        BusUnavailable
            When the bus refuses or cannot be reached; the failed row records the error.
        """
        if not self._prepared:
            self._prepare()
            self._prepared = True
        published = 0
        with self._sessions() as session:
            rows = session.scalars(
                select(OutboxEvent)
                .where(OutboxEvent.published_at.is_(None))
                .order_by(OutboxEvent.id)
                .limit(self._batch_size)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                row.attempts += 1
                try:
                    self._publisher.publish(
                        row.topic, row.key, row.payload, {EVENT_ID_HEADER: row.event_id.encode()}
                    )
                except BusUnavailable as exc:
                    row.last_error = str(exc)[:_MAX_ERROR_CHARS]
                    session.commit()
                    raise
                row.published_at = dt.datetime.now(dt.UTC)
                row.last_error = None
                session.commit()
                published += 1
                log.info(
                    "event published",
                    extra={"event_id": row.event_id, "topic": row.topic, "key": row.key},
                )
        return published


def service_relay(
    sessions: sessionmaker[Session], bus: Bus, settings: BusSettings, topics: Iterable[str]
) -> OutboxRelay:
    """The relay a service runs: it creates the service's topics (and their dead-letter twins)
    before its first publish, and again after every outage."""
    names = tuple(topics)
    return OutboxRelay(
        sessions,
        bus.publisher(),
        prepare=lambda: ensure_service_topics(bus, settings, names),
        max_backoff_s=settings.retry_max_backoff_seconds,
    )
