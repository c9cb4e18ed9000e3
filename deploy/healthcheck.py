"""Container health probes: ``python deploy/healthcheck.py listener|api|worker|alive``.

Exit status 0 means healthy, 1 unhealthy; one line on stdout says why (Docker keeps it in
``docker inspect``). Each probe reads the same ``NEUROGATE_*`` settings as the service it checks,
so a changed port or AE title needs no change here.

- ``listener``: a C-ECHO to the listener's own AE title. An association *rejection* also counts
  as healthy: the DICOM stack answered (e.g. the calling AE allow-list refused the probe, or
  ``MAX_ASSOCIATIONS`` is reached and scanners are being served).
- ``api``: ``GET /healthcheck`` on the API's port answers 2xx.
- ``worker``: the consume loop's heartbeat file is younger than the longest a consumer may go
  without polling (``BUS__KAFKA_MAX_POLL_INTERVAL_MS``), the database answers ``SELECT 1`` and,
  with the Kafka bus, a bootstrap server accepts a TCP connection.
- ``alive``: the container's main process is running and not stopped (Kubernetes liveness for
  the worker, which has no network endpoint of its own).
"""

from __future__ import annotations

import argparse
import socket
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from neurogate.settings import ListenerSettings, Settings

PROBE_AE_TITLE = "HEALTHCHECK"
HEARTBEAT_FILE = "worker.heartbeat"  # inference_worker.service.HEARTBEAT_FILE
LOCALHOST = "127.0.0.1"


def _local_host(bind_host: str) -> str:
    """Where to reach a server bound to ``bind_host`` from inside its own container."""
    return LOCALHOST if bind_host in ("0.0.0.0", "", "::") else bind_host


def _client_tls(settings: ListenerSettings, host: str) -> tuple[ssl.SSLContext, str] | None:
    """TLS for probing a TLS listener: no server verification (it is ourselves), and the
    listener's own certificate as the client certificate when it requires one."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if settings.tls_ca_file is not None:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context, host


def probe_listener(settings: ListenerSettings, timeout_s: float = 10.0) -> tuple[bool, str]:
    """C-ECHO the listener described by ``settings`` on this host."""
    from pynetdicom import AE

    ae = AE(ae_title=PROBE_AE_TITLE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context("1.2.840.10008.1.1")  # Verification
    host = _local_host(settings.host)
    assoc = ae.associate(
        host, settings.port, ae_title=settings.ae_title, tls_args=_client_tls(settings, host)
    )
    if assoc.is_rejected:
        return True, f"listener answered with an association rejection at {host}:{settings.port}"
    if not assoc.is_established:
        return False, f"no DICOM association with {settings.ae_title}@{host}:{settings.port}"
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    code = int(status.Status) if "Status" in status else None
    if code == 0x0000:
        return True, "C-ECHO success"
    return False, f"C-ECHO answered {code if code is None else hex(code)}"


def probe_api(host: str, port: int, timeout_s: float = 5.0) -> tuple[bool, str]:
    """``GET /healthcheck`` answers 2xx."""
    url = f"http://{_local_host(host)}:{port}/healthcheck"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            code = response.status
    except urllib.error.HTTPError as exc:
        return False, f"{url} answered {exc.code}"
    except OSError as exc:
        return False, f"{url} unreachable: {exc}"
    return 200 <= code < 300, f"{url} answered {code}"


def _tcp_reachable(address: str, timeout_s: float) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def probe_worker(settings: Settings, timeout_s: float = 5.0) -> tuple[bool, str]:
    """The consume loop is alive, the database answers and, with Kafka, a broker accepts."""
    import time

    from sqlalchemy import create_engine, text

    heartbeat = settings.data_dir / HEARTBEAT_FILE
    limit_s = settings.bus.kafka_max_poll_interval_ms / 1000
    try:
        age_s = time.time() - heartbeat.stat().st_mtime
    except OSError:
        return False, f"no heartbeat at {heartbeat}: the consume loop has not started"
    if age_s > limit_s:
        return False, f"consume loop silent for {age_s:.0f} s (limit {limit_s:.0f} s)"
    from sqlalchemy.exc import SQLAlchemyError

    engine = create_engine(settings.sqlalchemy_url, pool_pre_ping=False)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return False, f"database unreachable: {type(exc).__name__}"
    finally:
        engine.dispose()
    if settings.bus.backend == "kafka":
        servers = settings.bus.kafka_bootstrap_servers
        if not any(_tcp_reachable(server, timeout_s) for server in servers):
            return False, f"no Kafka bootstrap server reachable: {','.join(servers)}"
    return True, "database and bus reachable"


def probe_alive(proc: Path = Path("/proc/1")) -> tuple[bool, str]:
    """The main process exists and is neither a zombie nor stopped."""
    try:
        stat = (proc / "stat").read_text()
    except OSError as exc:
        return False, f"main process gone: {exc}"
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "T", "X"), f"main process state {state}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=("listener", "api", "worker", "alive"))
    args = parser.parse_args(argv)
    if args.probe == "alive":
        healthy, reason = probe_alive()
    else:
        settings = Settings()  # the service's own NEUROGATE_* environment
        probes: dict[str, Callable[[], tuple[bool, str]]] = {
            "listener": lambda: probe_listener(settings.listener),
            "api": lambda: probe_api(settings.api.host, settings.api.port),
            "worker": lambda: probe_worker(settings),
        }
        healthy, reason = probes[args.probe]()
    print(("healthy: " if healthy else "unhealthy: ") + reason)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
