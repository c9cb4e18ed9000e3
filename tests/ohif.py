"""OHIF's built viewer served as the compose stack serves it, for the browser test.

The npm package ``@ohif/app`` ships the built single-page app in ``dist/``; scripts/setup --test
unpacks it once into :func:`ohif_dist`'s folder. :class:`OhifServer` does what the OHIF
container's nginx does (deploy/ohif/nginx.conf.template): it serves the app with
``deploy/ohif/app-config.js`` in place of the package's own, proxies ``/dicom-web/`` (GET only)
to Orthanc's DICOMweb, and answers every other unknown path with ``index.html`` (the app's
router). So the browser sees one origin, as in production.
"""

from __future__ import annotations

import http.client
import mimetypes
import os
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from tests.harness import REPO

OHIF_VERSION = "3.13.2"  # the @ohif/app version scripts/setup installs
APP_CONFIG = REPO / "deploy" / "ohif" / "app-config.js"
DICOMWEB = "/dicom-web/"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
_CHUNK = 1 << 16
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")


def ohif_dist() -> Path:
    """The unpacked ``dist/`` of ``@ohif/app`` (``NEUROGATE_OHIF_DIR``, else the setup's cache).

    Raises
    ------
    RuntimeError
        When it is not there: scripts/setup --test installs it.
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "neurogate"
    root = Path(os.environ.get("NEUROGATE_OHIF_DIR") or cache / f"ohif-app-{OHIF_VERSION}")
    dist = root / "dist"
    if not (dist / "index.html").is_file():
        raise RuntimeError(
            f"OHIF {OHIF_VERSION} is not installed at {dist}: run scripts/setup --test"
        )
    return dist


class OhifServer:
    """OHIF at ``http://127.0.0.1:{port}/`` with ``/dicom-web/`` going to ``orthanc_url``."""

    def __init__(self, dist: Path, orthanc_url: str, port: int) -> None:
        handler = _handler(dist.resolve(), urlsplit(orthanc_url))
        self._server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def viewer_url(self, study_uid: str) -> str:
        return f"{self.url}/viewer?StudyInstanceUIDs={study_uid}"


def _handler(dist: Path, upstream: SplitResult) -> type[BaseHTTPRequestHandler]:

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass  # the viewer makes hundreds of requests; failures show in the test instead

        def do_GET(self) -> None:
            if self.path.startswith(DICOMWEB):
                self._proxy()
            else:
                self._static()

        def do_POST(self) -> None:
            self._refuse()

        do_PUT = do_DELETE = do_POST

        def _refuse(self) -> None:
            # A viewer reads: no STOW-RS, no DELETE through this door (as the nginx site).
            self.send_error(HTTPStatus.METHOD_NOT_ALLOWED)

        def _static(self) -> None:
            path = urlsplit(self.path).path
            if path == "/app-config.js":
                target = APP_CONFIG
            else:
                target = (dist / path.lstrip("/")).resolve()
                if not target.is_relative_to(dist) or not target.is_file():
                    target = dist / "index.html"  # the app's own router takes the path
            body = target.read_bytes()
            kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _proxy(self) -> None:
            connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=120)
            # Host goes through, as nginx's `proxy_set_header Host`: Orthanc builds the
            # BulkDataURIs in its metadata from it, so they name this origin, not Orthanc's.
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            try:
                connection.request("GET", self.path, headers=headers)
                response = connection.getresponse()
                self.send_response(response.status)
                length = response.getheader("Content-Length")
                for key, value in response.getheaders():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                if length is None:
                    body = response.read()
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.end_headers()
                while chunk := response.read(_CHUNK):
                    self.wfile.write(chunk)
            finally:
                connection.close()

    return Handler
