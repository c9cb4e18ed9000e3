"""STOW-RS (DICOMweb Store, PS3.18 10.5): one stored Part 10 file per request, as it is on disk.

Each object goes in a request of its own (``multipart/related; type="application/dicom"``,
one part), so that each has its own outcome, read from the answer: the object listed in the
Referenced SOP Sequence (0008,1199) was stored, with its Warning Reason (0008,1196) when the
archive gives one; listed in the Failed SOP Sequence (0008,1198), it was refused with its
Failure Reason (0008,1197), a DICOM status (0xA700 out of resources, 0xA900 not its SOP
class, 0xC000 cannot understand). Either code is recorded where a C-STORE export records its
DIMSE status. A 401/403, a 5xx or no answer at all is a failed attempt with the HTTP status in
its reason.
"""

from __future__ import annotations

import json
import ssl
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from neurogate.settings import StowRsDestination

STATUS_SUCCESS = 0x0000
# Tags of the STOW-RS response (PS3.18 Table 10.5.3-2), in DICOM JSON (PS3.18 F.2).
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_SEQUENCE = "00081199"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"
_WARNING_REASON = "00081196"
_DICOM_JSON = "application/dicom+json"
_MAX_BODY_IN_REASON = 200


@dataclass(frozen=True)
class StowOutcome:
    """What the archive did with one object: ``reason`` is ``None`` when it stored it."""

    status: int | None  # Warning or Failure Reason, 0 when stored without a warning
    reason: str | None = None


class Unreachable(Exception):
    """No connection to the archive: every object of the pass fails the same way."""


class StowClient:
    """Stores objects on one STOW-RS destination over one kept-alive connection.

    Parameters
    ----------
    destination
        URL, authentication and TLS CA of the archive.
    timeout_s
        Connect, read and write timeout of each request.
    """

    def __init__(self, destination: StowRsDestination, *, timeout_s: float) -> None:
        self._url = f"{destination.url}/studies"
        auth: httpx.Auth | None = None
        headers = {"Accept": _DICOM_JSON}
        if destination.auth == "basic":
            assert destination.username is not None and destination.password is not None
            auth = httpx.BasicAuth(destination.username, destination.password.get_secret_value())
        elif destination.auth == "bearer":
            assert destination.token is not None
            headers["Authorization"] = f"Bearer {destination.token.get_secret_value()}"
        verify: ssl.SSLContext | bool = True
        if destination.tls_ca_file is not None:
            verify = ssl.create_default_context(cafile=destination.tls_ca_file)
        self._client = httpx.Client(
            auth=auth, headers=headers, verify=verify, timeout=timeout_s, follow_redirects=False
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> StowClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def store(self, content: bytes, sop_instance_uid: str) -> StowOutcome:
        """Send one Part 10 file; its outcome.

        Raises
        ------
        Unreachable
            When no connection could be made (refused, no route, TLS handshake failed, or a
            connect timeout): the caller records the same reason for the objects it holds.
        """
        boundary = uuid.uuid4().hex
        body = b"".join(
            (
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
                content,
                f"\r\n--{boundary}--\r\n".encode(),
            )
        )
        content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        try:
            response = self._client.post(
                self._url, content=body, headers={"Content-Type": content_type}
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise Unreachable(f"cannot connect to {self._url}: {_why(exc)}") from exc
        except httpx.TimeoutException as exc:
            return StowOutcome(None, f"no answer from {self._url} ({_why(exc)})")
        except httpx.HTTPError as exc:  # the connection broke, or the answer was not HTTP
            return StowOutcome(None, f"request to {self._url} failed: {_why(exc)}")
        return outcome(response, sop_instance_uid)


def outcome(response: httpx.Response, sop_instance_uid: str) -> StowOutcome:
    """The object's outcome from the archive's answer to its STOW-RS request."""
    code = response.status_code
    answer = _dicom_json(response)
    failed = _find(answer, _FAILED_SOP_SEQUENCE, sop_instance_uid)
    if failed is not None:
        status = _code(failed, _FAILURE_REASON)
        why = f"0x{status:04X}" if status is not None else "none given"
        reason = f"archive refused the object (HTTP {code}, failure reason {why})"
        return StowOutcome(status, reason)
    if code in (200, 202):
        referenced = _find(answer, _REFERENCED_SOP_SEQUENCE, sop_instance_uid)
        if referenced is not None:
            warning = _code(referenced, _WARNING_REASON)
            return StowOutcome(STATUS_SUCCESS if warning is None else warning)
        if code == 200 and answer is None:
            return StowOutcome(STATUS_SUCCESS)  # stored; the archive sent no response body
        return StowOutcome(None, f"HTTP {code} without the object among those stored")
    reason = f"HTTP {code} {response.reason_phrase}".rstrip()
    if code in (401, 403):
        reason += ": check the destination's auth (username/password or token)"
    text = " ".join(response.text.split())[:_MAX_BODY_IN_REASON]
    return StowOutcome(None, f"{reason}: {text}" if text else reason)


def _dicom_json(response: httpx.Response) -> dict[str, Any] | None:
    if not response.content:
        return None
    try:
        answer = json.loads(response.content)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def _find(answer: dict[str, Any] | None, sequence: str, sop_uid: str) -> dict[str, Any] | None:
    """The item of ``sequence`` that names ``sop_uid``."""
    if answer is None:
        return None
    items = answer.get(sequence, {}).get("Value", [])
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and sop_uid in _values(item, _REFERENCED_SOP_INSTANCE_UID):
            return item
    return None


def _values(item: dict[str, Any], tag: str) -> list[Any]:
    element = item.get(tag)
    values = element.get("Value", []) if isinstance(element, dict) else []
    return values if isinstance(values, list) else []


def _code(item: dict[str, Any], tag: str) -> int | None:
    values = _values(item, tag)
    return values[0] if values and isinstance(values[0], int) else None


def _why(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
