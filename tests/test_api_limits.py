"""Request bodies over their limit are refused with 413 in the error envelope as they arrive,
behind uvicorn: a declared Content-Length before a byte of the body is read, a chunked body
at the first chunk past the limit. NIfTI uploads have a limit of their own."""

from __future__ import annotations

import json
import select
import socket
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.test_api_support import ADMIN, api_settings, served

LIMIT_MB = 1
UPLOAD_LIMIT_MB = 16
CHUNK = 64 * 1024
SENT_AT_MOST = 64 * (1 << 20)  # what the client would send if nobody stopped it


def _connect(base: str) -> socket.socket:
    address = urlsplit(base)
    return socket.create_connection((address.hostname, address.port), timeout=30)


def _response(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, object]]:
    """Status, headers and JSON body of the one response on ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(status_line.split()[1]), headers, json.loads(body)


def _request_head(path: str, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/json"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture
def base(tmp_path: Path) -> str:
    settings = api_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        max_request_mb=LIMIT_MB,
        max_upload_mb=UPLOAD_LIMIT_MB,
    )
    with served(settings) as url:
        yield url


@pytest.mark.parametrize("path", ["/predict", "/api/classify", "/api/auth/login"])
def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(base: str, path: str) -> None:
    with _connect(base) as sock:
        sock.sendall(_request_head(path, Content_Length=str(480 * (1 << 20))))  # no body at all
        status, headers, body = _response(sock)
    assert status == 413 and headers["connection"] == "close"
    # Each route's own error body (the seeds' for /predict and /api/classify); all carry these.
    assert body["error"]["code"] == "FILE_TOO_LARGE"  # type: ignore[index]
    assert body["error"]["message"] == "request body larger than the limit of 1 MB"  # type: ignore[index]


@pytest.mark.parametrize(
    ("path", "limit_mb"), [("/predict", LIMIT_MB), ("/api/process-mri", UPLOAD_LIMIT_MB)]
)
def test_a_streamed_body_is_refused_once_past_the_limit_not_after_it_is_all_read(
    base: str, path: str, limit_mb: int
) -> None:
    """Chunked, without a Content-Length: the server cannot know the size up front."""
    login = httpx.post(f"{base}/api/auth/login", data={"username": ADMIN[0], "password": ADMIN[1]})
    token = login.json()["access_token"]
    sent = 0
    with _connect(base) as sock:
        head = _request_head(path, Transfer_Encoding="chunked", Authorization=f"Bearer {token}")
        if path == "/api/process-mri":  # a file part that goes on and on
            head = head.replace(b"application/json", b"multipart/form-data; boundary=b")
            part = (
                b"--b\r\nContent-Disposition: form-data; name=files; filename=x_t1.nii\r\n"
                b"Content-Type: application/octet-stream\r\n\r\n"
            )
            head += f"{len(part):x}\r\n".encode() + part + b"\r\n"
        sock.sendall(head)
        chunk = f"{CHUNK:x}\r\n".encode() + b"A" * CHUNK + b"\r\n"
        while sent < SENT_AT_MOST and not select.select([sock], [], [], 0.002)[0]:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += CHUNK
        status, _, body = _response(sock)
    assert status == 413 and body["error"]["code"] == "FILE_TOO_LARGE"  # type: ignore[index]
    limit = limit_mb * (1 << 20)
    assert limit <= sent < limit + 8 * (1 << 20), sent  # answered near the limit, not at 64 MB
