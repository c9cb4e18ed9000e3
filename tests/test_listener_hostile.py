"""Hostile input on the wire (issue #19): what a peer claims, withholds or mangles costs the
listener neither its memory, nor its association slots, nor the rest of an association.

The listener runs as a real process under a 2 GiB address-space limit where memory is the
point; peers are raw sockets, dcmtk's echoscu/storescu and pynetdicom requestors. The guards
against peers that claim, withhold or flood are the fast engine's (dicom_listener.reactor);
the stock engine has pynetdicom's own, so those tests name the fast engine.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import MRImageStorage

from dicom_listener.status import Status
from neurogate.settings import Settings
from tests.conftest import free_port, make_settings
from tests.dicomgen import write_mr_study
from tests.harness import (
    REPO,
    associate_rq,
    echo,
    requires_fast_engine,
    running_listener,
    settings_env,
    storescu,
    wait_for,
)

pytestmark = pytest.mark.dcmtk

MEMORY_LIMIT = 2 << 30  # the listener's address space, as in the report
ONE_GIB, FOUR_GIB = 1 << 30, 0xFFFFFFF0  # PDU lengths claimed


@contextmanager
def limited_listener(settings: Settings, log_path: Path, **listener: str) -> Iterator[int]:
    """``python -m dicom_listener`` under ``MEMORY_LIMIT`` of address space; its pid."""

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    env = settings_env(settings)
    env.update({f"NEUROGATE_LISTENER__{k.upper()}": v for k, v in listener.items()})
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_listener"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            preexec_fn=limit_memory,
        )
    try:
        wait_for(lambda: _alive(proc, log_path) and echo(settings.listener.port) == 0, timeout=60)
        yield proc.pid
        assert proc.poll() is None, f"listener died: {log_path.read_text()[-3000:]}"
    finally:
        proc.kill()
        proc.wait(30)


def _alive(proc: subprocess.Popen[bytes], log_path: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"listener exited: {log_path.read_text()[-3000:]}")
    return True


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
    sock.settimeout(30)
    return sock


def associated(port: int) -> socket.socket:
    """A raw connection with an established association (the A-ASSOCIATE-AC read)."""
    sock = connect(port)
    sock.sendall(associate_rq())
    header = _read_exactly(sock, 6)
    assert header[0] == 0x02, f"not accepted: {header!r}"
    _read_exactly(sock, struct.unpack(">I", header[2:])[0])
    return sock


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def closed_by_listener(sock: socket.socket, within_s: float) -> bool:
    """Whether the listener ends the connection within ``within_s`` (A-ABORT, then EOF)."""
    sock.settimeout(within_s)
    deadline = time.monotonic() + within_s
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return False


def echoscu_ok(port: int) -> bool:
    result = subprocess.run(
        ["echoscu", "-aec", "NEUROGATE", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    return result.returncode == 0


@requires_fast_engine
def test_pdus_claiming_gigabytes_cost_no_memory_and_a_real_sender_gets_through(
    tmp_path: Path, sqlite_url: str
) -> None:
    settings = make_settings(tmp_path / "node", sqlite_url, port=free_port(), engine="fast")
    study = write_mr_study(tmp_path / "scanner", series=1, slices=3, size=64)
    with limited_listener(settings, tmp_path / "listener.log") as pid:
        port = settings.listener.port
        with ExitStack() as stack:
            claims = []
            # Before any association (no AE title needed), and inside an established one
            for sock, claim in (
                (connect(port), FOUR_GIB),
                (connect(port), ONE_GIB),
                (associated(port), FOUR_GIB),
                (associated(port), ONE_GIB),
            ):
                stack.enter_context(sock)
                sock.sendall(struct.pack(">BBI", 0x04, 0, claim) + b"\x00" * 1000)
                claims.append(sock)
            assert all(closed_by_listener(sock, within_s=10) for sock in claims)
            peak = peak_rss_mb(pid)
            result = storescu(port, study.files)

    assert peak < 400, f"peak RSS {peak:.0f} MB"
    assert result.returncode == 0, result.stderr
    assert len(list(settings.storage_root.joinpath("studies").rglob("*.dcm"))) == 3


@requires_fast_engine
def test_ten_stalled_connections_are_dropped_and_a_real_sender_gets_through(
    tmp_path: Path, sqlite_url: str
) -> None:
    settings = make_settings(tmp_path / "node", sqlite_url, port=free_port(), engine="fast")
    timeouts = {"acse_timeout_seconds": "2", "network_timeout_seconds": "2"}
    with limited_listener(
        settings, tmp_path / "listener.log", max_connections_per_peer="0", **timeouts
    ) as pid:
        port = settings.listener.port
        with ExitStack() as stack:
            stalled = [stack.enter_context(connect(port)) for _ in range(3)]  # silent
            for _ in range(4):  # an A-ASSOCIATE-RQ that stops half-way
                sock = stack.enter_context(connect(port))
                rq = associate_rq()
                sock.sendall(rq[: len(rq) // 2])
                stalled.append(sock)
            for _ in range(3):  # associated, then a P-DATA-TF PDU that stops half-way
                sock = stack.enter_context(associated(port))
                sock.sendall(struct.pack(">BBI", 0x04, 0, 1000) + b"\x00" * 500)
                stalled.append(sock)
            started = time.monotonic()
            wait_for(lambda: echoscu_ok(port), timeout=20, interval=0.5)
            through_after = time.monotonic() - started
            dropped = [closed_by_listener(sock, within_s=10) for sock in stalled]
        peak = peak_rss_mb(pid)

    assert all(dropped)
    assert through_after < 10
    assert peak < 400, f"peak RSS {peak:.0f} MB"


@requires_fast_engine
def test_one_peer_cannot_take_every_slot(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(
        tmp_path / "node",
        sqlite_url,
        max_associations=4,
        max_connections_per_peer=3,
        engine="fast",
    )
    with running_listener(settings) as service, ExitStack() as stack:
        port = service.address[1]
        held = [stack.enter_context(connect(port, source="127.0.0.2")) for _ in range(3)]
        one_more = stack.enter_context(connect(port, source="127.0.0.2"))
        refused = closed_by_listener(one_more, within_s=5)
        other_peer_ok = echoscu_ok(port)  # from 127.0.0.1
        still_held = not any(closed_by_listener(sock, within_s=0.2) for sock in held)

    assert refused
    assert still_held  # within the ACSE timeout, the peer's own connections are its own
    assert other_peer_ok


def _non_ascii_uid(path: Path) -> str:
    """Rewrite the instance's SOP Instance UID (in the file meta and the data set) with one
    non-ASCII character; the new UID as Python reads it back."""
    data = path.read_bytes()
    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID).encode("ascii")
    mangled = uid[:-2] + "é".encode("latin-1") + uid[-1:]
    path.write_bytes(data.replace(uid, mangled))
    return mangled.decode("latin-1")


@pytest.mark.parametrize("fast_store", [True, False], ids=["fast-store", "pynetdicom-store"])
def test_a_non_ascii_uid_is_refused_and_the_rest_of_the_association_is_stored(
    tmp_path: Path, sqlite_url: str, fast_store: bool
) -> None:
    settings = make_settings(tmp_path / "node", sqlite_url, fast_store=fast_store)
    study = write_mr_study(tmp_path / "scanner", series=1, slices=6, size=32)
    _non_ascii_uid(study.files[1])
    with running_listener(settings) as service:
        result = storescu(service.address[1], study.files, extra=["--no-halt", "--verbose"])

    responses = [line for line in result.stderr.splitlines() if "Received Store Response" in line]
    assert len(responses) == 6, result.stderr
    assert "CannotUnderstand" in responses[1]
    assert all("(Success)" in line for i, line in enumerate(responses) if i != 1)
    assert len(list(settings.storage_root.joinpath("studies").rglob("*.dcm"))) == 5


def _send_file(port: int, path: Path) -> int:
    """C-STORE a file's data set exactly as it is on disk (pynetdicom streams it unparsed)."""
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="NEUROGATE")
    assert assoc.is_established
    previous, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        assoc.release()


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"SQ", b"OB", b"UN", b"UT"):
        return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _item(content: bytes) -> bytes:
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(content)) + content


def _nested(depth: int) -> bytes:
    """A private sequence (0009,1001) nested ``depth`` deep, every length defined."""
    inner = _element(0x0009, 0x1002, b"LO", b"deep")
    for _ in range(depth):
        inner = _element(0x0009, 0x1001, b"SQ", _item(inner))
    return inner


def _with_elements(tmp_path: Path, source: Path, name: str, elements: bytes) -> Path:
    """``source`` with ``elements`` inserted in tag order at group 0009 (after group 0008)."""
    data = source.read_bytes()
    start = 144 + int.from_bytes(data[140:144], "little")
    position = start
    while struct.unpack_from("<H", data, position)[0] == 0x0008:
        vr = data[position + 4 : position + 6]
        if vr in (b"SQ", b"OB", b"OW", b"UN", b"UT", b"UC", b"UR"):
            length = struct.unpack_from("<I", data, position + 8)[0]
            position += 12 + length
        else:
            position += 8 + struct.unpack_from("<H", data, position + 6)[0]
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(data[:position] + elements + data[position:])
    return path


@pytest.mark.parametrize("fast_store", [True, False], ids=["fast-store", "pynetdicom-store"])
def test_what_the_worker_could_not_read_is_refused_before_it_is_acknowledged(
    tmp_path: Path, sqlite_url: str, fast_store: bool, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path / "node", sqlite_url, fast_store=fast_store)
    (source,) = write_mr_study(tmp_path / "scanner", series=1, slices=1, size=32).files
    private_creator = _element(0x0009, 0x0010, b"LO", b"HOSTILE ")
    unknown_vr = _with_elements(
        tmp_path, source, "zz", private_creator + _element(0x0009, 0x1003, b"ZZ", b"abcd")
    )
    unknown_vr_in_item = _with_elements(
        tmp_path,
        source,
        "di",
        private_creator
        + _element(0x0009, 0x1001, b"SQ", _item(_element(0x0009, 0x1003, b"DI", b"ab"))),
    )
    too_deep = _with_elements(tmp_path, source, "deep", private_creator + _nested(200))
    fine = _with_elements(tmp_path, source, "fine", private_creator + _nested(3))

    caplog.set_level(logging.INFO, logger="dicom_listener")
    with running_listener(settings) as service:
        port = service.address[1]
        statuses = [_send_file(port, path) for path in (unknown_vr, unknown_vr_in_item, too_deep)]
        accepted = _send_file(port, fine)

    assert statuses == [Status.CANNOT_UNDERSTAND] * 3
    assert accepted == Status.SUCCESS
    (stored,) = settings.storage_root.joinpath("studies").rglob("*.dcm")
    assert len(dcmread(stored)[0x00091001].value) == 1  # and pydicom reads what was kept
    refusals = [r for r in caplog.records if r.getMessage() == "refusing instance"]
    assert len(refusals) == 3
    for record in refusals:
        assert record.__dict__["calling_ae"] == "SCANNER"
        assert record.__dict__["peer"].startswith("127.0.0.1:")
        assert record.__dict__["sop_instance_uid"]
        assert "VR" in record.__dict__["reason"] or "nested" in record.__dict__["reason"]
    assert not [r for r in caplog.records if r.exc_info], "a refusal logged a traceback"
