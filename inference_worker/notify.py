"""Result notifications: webhooks told of analyses completed or failed and exports parked.

Each notification is a ``webhook_deliveries`` row per subscribed webhook, committed in the same
transaction as the change it announces, holding the exact body to send: a FHIR R4 transaction
Bundle with the DiagnosticReport (:mod:`inference_worker.fhir`). The notifier thread POSTs due
rows and records every attempt (HTTP status or error) in the row; a receiver that is down or
answers other than 2xx is retried with a doubling wait, and the row is ``failed`` after
``NOTIFY__MAX_ATTEMPTS``. Rows are claimed with a lease, as exports are, so with N workers
each delivery goes out once per attempt.

Every request is signed: ``X-NeuroGate-Signature: sha256=<hex>`` is the HMAC-SHA256, keyed with
the webhook's secret, of ``<X-NeuroGate-Timestamp>.<body>`` (Unix seconds, a dot, the body's
bytes). A receiver recomputes it, compares in constant time and refuses old timestamps (replays).
``X-NeuroGate-Delivery`` stays the same across the attempts of one delivery.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from inference_worker.fhir import report_bundle
from neurogate.db.models import Analysis, DeliveryStatus, Export, Study, WebhookDelivery
from neurogate.settings import WEBHOOK_EVENTS, Settings, Webhook
from schemas.findings import Findings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-NeuroGate-Signature"
TIMESTAMP_HEADER = "X-NeuroGate-Timestamp"
EVENT_HEADER = "X-NeuroGate-Event"
DELIVERY_HEADER = "X-NeuroGate-Delivery"
CONTENT_TYPE = "application/fhir+json"
EXPORT_TAG_SYSTEM = "urn:neurogate:export"
_BATCH = 20
_MAX_ERROR_CHARS = 500


class Event(StrEnum):
    ANALYSIS_COMPLETED = "analysis.completed"
    ANALYSIS_FAILED = "analysis.failed"
    EXPORT_PARKED = "export.parked"


assert tuple(Event) == WEBHOOK_EVENTS  # the settings validate subscriptions against these


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The value of :data:`SIGNATURE_HEADER` for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def _subscribers(settings: Settings, event: Event) -> list[Webhook]:
    return [w for w in settings.notify.webhooks if not w.events or event in w.events]


def notify_analysis(
    session: Session,
    settings: Settings,
    row: Analysis,
    event: Event,
    *,
    extra_tags: Sequence[dict[str, str]] = (),
) -> int:
    """Plan the notifications of ``event`` about the analysis ``row`` (flushed, in ``session``'s
    transaction); how many webhooks get one."""
    webhooks = _subscribers(settings, event)
    if not webhooks:
        return 0
    study = session.scalar(select(Study).where(Study.study_instance_uid == row.study_instance_uid))
    objects = [(o.kind, o.sop_instance_uid) for o in row.objects]
    bundle = report_bundle(
        request_event_id=row.request_event_id,
        study_instance_uid=row.study_instance_uid,
        status=row.status,
        findings=Findings.model_validate(row.findings) if row.findings else None,
        objects=objects,
        issued=row.finished_at or _now(),
        event=event.value,
        patient_id=study.patient_id if study else None,
        accession_number=study.accession_number if study else None,
        study_date=study.study_date if study else None,
        study_time=study.study_time if study else None,
        failure=row.error,
    )
    bundle["meta"]["tag"].extend(extra_tags)
    body = json.dumps(bundle, separators=(",", ":")).encode()
    now = _now()
    for webhook in webhooks:
        session.add(
            WebhookDelivery(
                delivery_id=str(uuid.uuid4()),
                webhook=webhook.name,
                event=event.value,
                study_instance_uid=row.study_instance_uid,
                analysis_id=row.id,
                body=body,
                status=DeliveryStatus.PENDING,
                attempts=0,
                outcomes=[],
                created_at=now,
                next_attempt_at=now,
            )
        )
    return len(webhooks)


def notify_export_parked(session: Session, settings: Settings, export: Export) -> int:
    """Plan the notifications of an export parked as failed (its report, tagged with the
    destination and the object)."""
    obj = export.result_object
    tag = {
        "system": EXPORT_TAG_SYSTEM,
        "code": export.destination,
        "display": f"{obj.kind} {obj.sop_instance_uid} not delivered: {export.last_error}",
    }
    return notify_analysis(session, settings, obj.analysis, Event.EXPORT_PARKED, extra_tags=[tag])


@dataclass(frozen=True)
class _Due:
    row_id: int
    token: str
    delivery_id: str
    event: str
    webhook: str
    body: bytes


class Notifier:
    """Delivers the webhook notifications that are due until stopped; a thread's target.

    Parameters
    ----------
    settings
        ``settings.notify`` names the webhooks and the retry policy.
    sessions
        Database session factory.
    """

    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], *, idle_wait_s: float = 2.0
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._idle_wait_s = idle_wait_s
        self._wake = threading.Event()
        self._webhooks = {w.name: w for w in settings.notify.webhooks}

    def wake(self) -> None:
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.deliver_due()
            except Exception:  # a database hiccup must not end the thread: log, wait, retry
                log.exception("notification pass failed")
            self._wake.wait(self._idle_wait_s)
            self._wake.clear()

    def deliver_due(self) -> int:
        """Send every notification that is due now; how many receivers took theirs."""
        if not self._webhooks:
            return 0
        delivered = 0
        for item in self._claim():
            status, error = self._post(self._webhooks[item.webhook], item)
            delivered += self._record(item, status, error)
        return delivered

    def _claim(self) -> list[_Due]:
        now = _now()
        token = uuid.uuid4().hex
        lease = dt.timedelta(seconds=self._settings.notify.lease_seconds)
        due = (
            WebhookDelivery.webhook.in_(list(self._webhooks)),
            WebhookDelivery.status == DeliveryStatus.PENDING,
            or_(WebhookDelivery.next_attempt_at.is_(None), WebhookDelivery.next_attempt_at <= now),
            or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until <= now),
        )
        candidates = (
            select(WebhookDelivery.id)
            .where(*due)
            .order_by(WebhookDelivery.id)
            .limit(_BATCH)
            .with_for_update(skip_locked=True)
        )
        with self._sessions.begin() as session:
            claimed = session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(candidates), *due)
                .values(claim_token=token, claimed_until=now + lease)
                .execution_options(synchronize_session=False)
            )
            if not claimed.rowcount:  # type: ignore[attr-defined]
                return []
            rows = session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.claim_token == token)
                .order_by(WebhookDelivery.id)
            ).all()
            return [_Due(r.id, token, r.delivery_id, r.event, r.webhook, r.body) for r in rows]

    def _post(self, webhook: Webhook, item: _Due) -> tuple[int | None, str | None]:
        """POST the body, signed; the HTTP status (``None`` when no answer) and an error."""
        timestamp = str(int(time.time()))
        secret = webhook.secret.get_secret_value()
        request = urllib.request.Request(
            webhook.url,
            data=item.body,
            method="POST",
            headers={
                "Content-Type": CONTENT_TYPE,
                "User-Agent": "NeuroGate",
                EVENT_HEADER: item.event,
                DELIVERY_HEADER: item.delivery_id,
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: signature(secret, timestamp, item.body),
            },
        )
        context = None
        if webhook.tls_ca_file is not None:
            context = ssl.create_default_context(cafile=str(webhook.tls_ca_file))
        timeout = self._settings.notify.timeout_seconds
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                return int(response.status), None
        except urllib.error.HTTPError as exc:
            return exc.code, f"receiver answered HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return None, f"no answer from {webhook.url}: {reason}"[:_MAX_ERROR_CHARS]

    def _record(self, item: _Due, status: int | None, error: str | None) -> int:
        """Commit one attempt's outcome and end the claim; 1 if the receiver took it."""
        policy = self._settings.notify
        with self._sessions.begin() as session:
            row = session.get_one(WebhookDelivery, item.row_id)
            if row.claim_token != item.token:
                log.warning(
                    "notification claim lapsed; the attempt is left unrecorded",
                    extra={"delivery_id": item.delivery_id, "webhook": item.webhook},
                )
                return 0
            now = _now()
            row.claim_token, row.claimed_until = None, None
            row.attempts += 1
            row.http_status = status
            row.outcomes = [
                *row.outcomes,
                {"at": now.isoformat(), "http_status": status, "error": error},
            ]
            if error is None:
                row.status, row.sent_at, row.next_attempt_at, row.last_error = (
                    DeliveryStatus.SENT, now, None, None,
                )  # fmt: skip
            else:
                row.last_error = error
                if row.attempts >= policy.max_attempts:
                    row.status, row.next_attempt_at = DeliveryStatus.FAILED, None
                else:
                    wait = min(
                        policy.backoff_seconds * 2 ** (row.attempts - 1),
                        policy.backoff_max_seconds,
                    )
                    row.next_attempt_at = now + dt.timedelta(seconds=wait)
            outcome, attempts = row.status, row.attempts
        extra = {
            "delivery_id": item.delivery_id,
            "webhook": item.webhook,
            "event": item.event,
            "attempts": attempts,
            "http_status": status,
        }
        if error is None:
            log.info("notification delivered", extra=extra)
            return 1
        if outcome == DeliveryStatus.FAILED:
            log.error("notification given up", extra={**extra, "reason": error})
        else:
            log.warning("notification failed; will retry", extra={**extra, "reason": error})
        return 0
