"""Fuzz benchmark: mutated data sets and PDUs against a listener process (issue #19).

Starts ``python -m dicom_listener`` (fsync off, short timeouts) and sends it, from a seeded
random generator,

- ``--datasets`` mutated data sets, each in a C-STORE over pynetdicom associations (bytes
  flipped, VRs replaced, lengths rewritten, elements cut, inserted or repeated, sequences
  nested deep), and
- ``--pdus`` mutated PDUs on raw connections, before and inside an association (types,
  lengths and PDV items rewritten, bytes flipped, PDUs cut short, huge lengths claimed),

then reads back every instance the listener acknowledged with pydicom (every element
converted, as the worker would). Prints a table of what happened to each kind: statuses,
aborted associations, listener crashes (the process died) and tracebacks in its log, and the
listener's peak RSS.

    .venv/bin/python bench/fuzz.py --datasets 6000 --pdus 4000 --seed 19
"""

from __future__ import annotations

import argparse
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pydicom import dcmread  # noqa: E402
from pydicom.filewriter import dcmwrite  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402
from pynetdicom import AE, _config  # noqa: E402
from pynetdicom.sop_class import MRImageStorage  # noqa: E402

from tests.dicomgen import write_mr_study  # noqa: E402
from tests.harness import associate_rq, echo, wait_for  # noqa: E402

VRS = [b"ZZ", b"DI", b"\x00\x00", b"  ", b"ob", b"SQ", b"UN", b"OB", b"US", b"UI"]
PER_ASSOCIATION = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Listener:
    """The listener as a process; restarted (and counted) when it dies."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port, self.crashes, self.peak_mb = folder, port, 0, 0.0
        self.log = folder / "listener.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO),
            "NEUROGATE_DATA_DIR": str(self.folder / "node"),
            "NEUROGATE_LISTENER__HOST": "127.0.0.1",
            "NEUROGATE_LISTENER__PORT": str(self.port),
            "NEUROGATE_LISTENER__FSYNC": "false",
            "NEUROGATE_LISTENER__MIN_FREE_DISK_MB": "0",
            "NEUROGATE_LISTENER__MAX_ASSOCIATIONS": "30",
            "NEUROGATE_LISTENER__MAX_CONNECTIONS_PER_PEER": "0",
            "NEUROGATE_LISTENER__ACSE_TIMEOUT_SECONDS": "2",
            "NEUROGATE_LISTENER__NETWORK_TIMEOUT_SECONDS": "2",
            "NEUROGATE_LISTENER__STUDY_QUIET_SECONDS": "3600",
        }
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dicom_listener"], env=env, stdout=log, stderr=log
            )
        wait_for(lambda: echo(self.port) == 0, timeout=60, interval=0.2)

    def check(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            self.crashes += 1
            self.start()
            return
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        hwm = next(line for line in status.splitlines() if line.startswith("VmHWM"))
        self.peak_mb = max(self.peak_mb, int(hwm.split()[1]) / 1024)

    def stop(self) -> None:
        assert self.proc is not None
        self.check()
        self.proc.terminate()
        self.proc.wait(60)


def base_datasets(folder: Path) -> list:  # type: ignore[type-arg]
    study = write_mr_study(folder, series=2, slices=3, size=32)
    return [dcmread(path) for path in study.files]


def part10_file(ds, uid: str) -> bytes:  # type: ignore[no-untyped-def]
    """``ds`` as a Part 10 file under the SOP Instance UID ``uid``."""
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _nest(depth: int) -> bytes:
    inner = struct.pack("<HH2sH", 0x0009, 0x1002, b"LO", 4) + b"deep"
    for _ in range(depth):
        item = struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner
        inner = struct.pack("<HH2sHI", 0x0009, 0x1001, b"SQ", 0, len(item)) + item
    return struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 4) + b"FUZZ" + inner


def mutate_dataset(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(7)
        at = rng.randrange(len(out))
        if kind == 0:  # flip bytes
            for _ in range(rng.randint(1, 8)):
                out[rng.randrange(len(out))] = rng.randrange(256)
        elif kind == 1:  # another VR where one is (an explicit VR header: 2 letters)
            positions = [i for i in range(0, len(out) - 8, 2) if out[i + 4 : i + 6].isupper()]
            if positions:
                i = rng.choice(positions)
                out[i + 4 : i + 6] = rng.choice(VRS)
        elif kind == 2:  # a length rewritten
            positions = [i for i in range(0, len(out) - 8, 2) if out[i + 4 : i + 6].isupper()]
            if positions:
                i = rng.choice(positions)
                struct.pack_into(
                    "<H", out, i + 6, rng.choice([0, 1, 3, 0xFFFF, rng.randrange(1 << 16)])
                )
        elif kind == 3:  # cut short
            del out[at:]
        elif kind == 4:  # a chunk repeated
            out[at:at] = out[at : at + rng.randint(1, 64)]
        elif kind == 5:  # nested sequences, often too deep, after group 0008
            first_0010 = out.find(b"\x10\x00")
            out[max(first_0010, 0) : max(first_0010, 0)] = _nest(rng.choice([2, 20, 40, 300]))
        else:  # bytes inserted
            out[at:at] = rng.randbytes(rng.randint(1, 32))
    return bytes(out or b"\x00")


def send_datasets(port: int, files: list[Path], statuses: Counter[str]) -> None:
    """C-STORE each file's data set as it is on disk (pynetdicom streams it unparsed)."""
    ae = AE(ae_title="FUZZER")
    ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    _config.STORE_SEND_CHUNKED_DATASET = True
    index = 0
    while index < len(files):
        assoc = ae.associate("127.0.0.1", port, ae_title="NEUROGATE")
        if not assoc.is_established:
            statuses["association refused"] += 1
            time.sleep(0.5)
            continue
        sent = 0
        while index < len(files) and sent < PER_ASSOCIATION and assoc.is_established:
            path = files[index]
            index += 1
            sent += 1
            response = assoc.send_c_store(path)
            if "Status" not in response:
                statuses["association aborted"] += 1
                break
            statuses[f"0x{int(response.Status):04X}"] += 1
        if assoc.is_established:
            assoc.release()


def _pdata(items: list[tuple[int, int, bytes]]) -> bytes:
    body = b"".join(struct.pack(">IBB", len(d) + 2, cx, mch) + d for cx, mch, d in items)
    return struct.pack(">BBI", 0x04, 0, len(body)) + body


RELEASE_RQ = struct.pack(">BBI", 0x05, 0, 4) + b"\x00" * 4


def mutate_pdu(rng: random.Random) -> tuple[bool, bytes]:
    """(inside an association, the bytes to send)."""
    inside = rng.random() < 0.6
    pdu = bytearray(_pdata([(1, rng.choice([0, 1, 2, 3]), rng.randbytes(rng.randint(0, 300)))]))
    if not inside:
        pdu = bytearray(associate_rq())
    kind = rng.randrange(6)
    if kind == 0:
        pdu[0] = rng.randrange(256)
    elif kind == 1:  # a claimed length: short, long or gigabytes
        struct.pack_into(">I", pdu, 2, rng.choice([0, 1, len(pdu), 1 << 20, 1 << 30, 0xFFFFFFFF]))
    elif kind == 2 and len(pdu) > 10:  # a PDV item's length
        struct.pack_into(">I", pdu, 6, rng.randrange(1 << 32))
    elif kind == 3:
        for _ in range(rng.randint(1, 8)):
            pdu[rng.randrange(len(pdu))] = rng.randrange(256)
    elif kind == 4:
        del pdu[rng.randrange(1, len(pdu)) :]
    else:
        pdu += rng.randbytes(rng.randint(1, 64))
    return inside, bytes(pdu) + RELEASE_RQ


def send_pdu(port: int, case: tuple[bool, bytes]) -> str:
    inside, data = case
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            if inside:
                sock.sendall(associate_rq())
                if sock.recv(1)[:1] != b"\x02":
                    return "association refused"
                time.sleep(0.01)
                sock.recv(65536)
            sock.sendall(data)
            answer = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
    except TimeoutError:
        return "no answer in 10 s"
    except OSError:
        return "connection reset"
    if b"\x06\x00\x00\x00\x00\x04" in answer:
        return "released"
    if b"\x07\x00\x00\x00\x00\x04" in answer:
        return "aborted (A-ABORT)"
    return "closed" if not answer else "answered, then closed"


def readable(path: Path) -> bool:
    try:
        ds = dcmread(path)
        for element in ds.iterall():
            str(element.value)
    except Exception:  # noqa: BLE001 - anything pydicom raises is "unreadable" here
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=6000)
    parser.add_argument("--pdus", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="neurogate-fuzz-"))
    listener = Listener(folder, free_port())
    listener.start()
    try:
        run(args, rng, folder, listener)
    finally:
        if listener.proc is not None and listener.proc.poll() is None:
            listener.proc.kill()


def run(args: argparse.Namespace, rng: random.Random, folder: Path, listener: Listener) -> None:
    started = time.monotonic()
    bases = base_datasets(folder / "scanner")
    files = []
    (folder / "sent").mkdir()
    for index in range(args.datasets):
        uid = f"2.25.{args.seed}{index:08d}"
        base = rng.choice(bases)
        whole = part10_file(base, uid)
        body_at = 144 + int.from_bytes(whole[140:144], "little")
        path = folder / "sent" / f"{index}.dcm"
        path.write_bytes(whole[:body_at] + mutate_dataset(rng, whole[body_at:]))
        files.append(path)
    ds_statuses: Counter[str] = Counter()
    chunk = 1000
    for first in range(0, len(files), chunk):
        send_datasets(listener.port, files[first : first + chunk], ds_statuses)
        listener.check()
    cases = [mutate_pdu(rng) for _ in range(args.pdus)]
    pdu_outcomes: Counter[str] = Counter()
    with ThreadPoolExecutor(8) as pool:
        for first in range(0, len(cases), 500):
            pdu_outcomes.update(
                pool.map(lambda c: send_pdu(listener.port, c), cases[first : first + 500])
            )
            listener.check()
    alive_at_end = echo(listener.port) == 0
    listener.stop()
    stored = list((folder / "node" / "dicom" / "studies").rglob("*.dcm"))
    unreadable = sum(not readable(path) for path in stored)
    log = listener.log.read_text(errors="replace")
    tracebacks = log.count("Traceback (most recent call last)")

    print(f"seed {args.seed}, {time.monotonic() - started:.0f} s, listener log {listener.log}\n")
    print("| input | count | outcome | n |")
    print("| --- | --- | --- | --- |")
    for name, counts, total in (
        ("mutated data sets (C-STORE)", ds_statuses, args.datasets),
        ("mutated PDUs", pdu_outcomes, args.pdus),
    ):
        for outcome, n in sorted(counts.items()):
            print(f"| {name} | {total} | {outcome} | {n} |")
    print()
    print("| listener | |")
    print("| --- | --- |")
    print(f"| crashes (process died) | {listener.crashes} |")
    print(f"| tracebacks in its log | {tracebacks} |")
    print(f"| answers C-ECHO at the end | {alive_at_end} |")
    print(f"| instances stored (acknowledged 0x0000) | {len(stored)} |")
    print(f"| of which unreadable by pydicom | {unreadable} |")
    print(f"| peak RSS | {listener.peak_mb:.0f} MB |")


if __name__ == "__main__":
    main()
