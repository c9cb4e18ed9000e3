"""DICOM over TLS: the listener requires and verifies client certificates when given a CA."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage, Verification

from dicom_listener.status import Status
from tests.conftest import make_settings
from tests.dicomgen import write_mr_study
from tests.harness import running_listener


def _certificate(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return key, cert


def _client_context(server_cert: Path, client: tuple[Path, Path] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=server_cert)
    if client is not None:
        key, cert = client
        context.load_cert_chain(cert, key)
    return context


def test_tls_store_with_client_certificate_and_refusal_without(
    tmp_path: Path, sqlite_url: str
) -> None:
    server_key, server_cert = _certificate(tmp_path, "server")
    client_key, client_cert = _certificate(tmp_path, "client")
    settings = make_settings(
        tmp_path / "node",
        sqlite_url,
        tls_cert_file=server_cert,
        tls_key_file=server_key,
        tls_ca_file=client_cert,
    )
    study = write_mr_study(tmp_path / "scanner", series=1, slices=1)
    with running_listener(settings) as service:
        port = service.address[1]
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(Verification)
        ae.add_requested_context(MRImageStorage)
        tls = (_client_context(server_cert, (client_key, client_cert)), "localhost")
        assoc = ae.associate("127.0.0.1", port, ae_title="NEUROGATE", tls_args=tls)
        assert assoc.is_established
        assert assoc.send_c_store(study.files[0]).Status == Status.SUCCESS
        assoc.release()

        anonymous = (_client_context(server_cert, None), "localhost")
        refused = ae.associate("127.0.0.1", port, ae_title="NEUROGATE", tls_args=anonymous)
        assert not refused.is_established
        plain = ae.associate("127.0.0.1", port, ae_title="NEUROGATE")
        assert not plain.is_established

    assert len(list((settings.storage_root / "studies").rglob("*.dcm"))) == 1


def test_tls_settings_that_do_not_load_fail_at_start(tmp_path: Path, sqlite_url: str) -> None:
    missing = tmp_path / "missing.pem"
    settings = make_settings(
        tmp_path / "node", sqlite_url, tls_cert_file=missing, tls_key_file=missing
    )
    with pytest.raises(FileNotFoundError), running_listener(settings):
        pass
