"""A real Orthanc (Debian's package, installed by scripts/setup --test) as the PACS in tests.

Each server keeps its database in its own folder, so it can be stopped (a PACS that is down)
and started again on the same ports with what it had stored. Its DICOMweb plugin (Debian's
``orthanc-dicomweb``) answers under :attr:`OrthancServer.dicomweb_url`; given ``users``, the
HTTP side (REST and DICOMweb) asks for HTTP basic authentication.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.harness import wait_for

AE_TITLE = "ORTHANC"
_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class OrthancServer:
    """Orthanc on fixed ports; :meth:`get`/:meth:`post` speak to its REST API."""

    def __init__(
        self,
        folder: Path,
        dicom_port: int,
        http_port: int,
        *,
        users: dict[str, str] | None = None,
    ) -> None:
        self.folder = folder
        self.dicom_port = dicom_port
        self.http_port = http_port
        self._proc: subprocess.Popen[bytes] | None = None
        self._headers: dict[str, str] = {}
        if users:
            user, password = next(iter(users.items()))
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        folder.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "Name": "NeuroGate test PACS",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "storage"),
            "DicomAet": AE_TITLE,
            "DicomPort": dicom_port,
            "HttpPort": http_port,
            "HttpBindAddress": "127.0.0.1",  # undocumented in older releases; harmless
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(users),
            "RegisteredUsers": users or {},
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True,
            "Plugins": [str(_DICOMWEB_PLUGIN)] if _DICOMWEB_PLUGIN.exists() else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (folder / "orthanc.json").write_text(json.dumps(config, indent=2))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb service root (STOW-RS at ``/studies`` below it)."""
        if not _DICOMWEB_PLUGIN.exists():
            raise RuntimeError(f"no DICOMweb plugin at {_DICOMWEB_PLUGIN} (orthanc-dicomweb)")
        return f"{self.url}/dicom-web"

    def start(self) -> None:
        binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        log = (self.folder / "orthanc.log").open("ab")
        self._proc = subprocess.Popen(
            [binary, str(self.folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT
        )
        wait_for(self._ready, timeout=60)

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def _ready(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited; see {self.folder / 'orthanc.log'}")
        try:
            self.get("/system")
        except (urllib.error.URLError, ConnectionError):
            return False
        return True

    def get(self, path: str) -> Any:
        return json.loads(self.get_bytes(path))

    def get_bytes(self, path: str) -> bytes:
        request = urllib.request.Request(self.url + path, headers=self._headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            body: bytes = response.read()
            return body

    def post(self, path: str, body: Any) -> Any:
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **self._headers},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def instances(self, study_uid: str, modality: str | None = None) -> list[dict[str, Any]]:
        """Tags of the study's instances (optionally of one modality), through /tools/find."""
        query = {"StudyInstanceUID": study_uid}
        if modality is not None:
            query["Modality"] = modality
        found = self.post("/tools/find", {"Level": "Instance", "Query": query, "Expand": True})
        return [self.get(f"/instances/{item['ID']}/simplified-tags") for item in found]

    def wait_for_instances(
        self, study_uid: str, modality: str, count: int, timeout: float = 120
    ) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]] | None:
            found = self.instances(study_uid, modality)
            return found if len(found) >= count else None

        return wait_for(enough, timeout=timeout, interval=0.5)
