"""Ingest benchmark: dcmtk storescu → dcmtk storescp vs. → the NeuroGate listener, same run.

Prints a table of images/s and MB/s for each receiver with 1 and with N concurrent associations,
their ratio, the CPU time each receiver spent per image (user and system, from ``/proc``: on a
machine whose cores the senders share, what bounds concurrent throughput) and its peak memory.
The listener runs on each engine (``LISTENER__ENGINE``: ``fast``, and ``stock``, pynetdicom's
public API alone), each also with its fsyncs off (storescp does not fsync), to show what
durability costs; pynetdicom's own storescp application is the stock engine's reference.
Rounds alternate between the receivers so that machine noise hits all alike; the median round
is reported. What the receivers store is kept until the end (some GB: images x rounds x rows).
``--memory 500,2000`` instead sends studies of each size to a fresh listener and prints its
peak memory for each: flat memory means the peaks do not grow with the number of images.

    .venv/bin/python bench/ingest.py --images 2000 --rounds 3
    .venv/bin/python bench/ingest.py --memory 500,2000
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.dicomgen import write_mr_study  # noqa: E402

# Without TCP_NODELAY Debian's dcmtk stalls ~40 ms per image on loopback.
ENV = {**os.environ, "TCP_NODELAY": "1"}
SCU = ["storescu", "-aet", "BENCH", "-aec", "NEUROGATE", "127.0.0.1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = subprocess.run(
            ["echoscu", "-aec", "NEUROGATE", "127.0.0.1", str(port)], capture_output=True, env=ENV
        )
        if probe.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing answers C-ECHO on port {port}")


def send(port: int, files: list[Path], associations: int) -> float:
    """Seconds for ``associations`` parallel storescu processes to send ``files``."""
    chunks = [files[i::associations] for i in range(associations)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [*SCU, str(port), *map(str, c)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=ENV,
        )
        for c in chunks
    ]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - start


def storescp(folder: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["storescp", "-aet", "NEUROGATE", "--output-directory", str(folder), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )


def pynetdicom_storescp(folder: Path, port: int) -> subprocess.Popen[bytes]:
    """pynetdicom's own storescp application: pynetdicom's speed, with its own (decoding,
    unsynced) storage."""
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "pynetdicom", "storescp", "-aet", "NEUROGATE"),
            *("--output-directory", str(folder), str(port)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )


def listener(
    folder: Path,
    port: int,
    *,
    fsync: bool = True,
    engine: str = "fast",
) -> subprocess.Popen[bytes]:
    env = {
        **ENV,
        "PYTHONPATH": str(REPO),
        "NEUROGATE_DATA_DIR": str(folder),
        "NEUROGATE_LISTENER__PORT": str(port),
        "NEUROGATE_LISTENER__MIN_FREE_DISK_MB": "0",
        "NEUROGATE_LISTENER__STUDY_QUIET_SECONDS": "3600",
        "NEUROGATE_LOG_LEVEL": "WARNING",
        "NEUROGATE_LISTENER__FSYNC": "true" if fsync else "false",
        "NEUROGATE_LISTENER__ENGINE": engine,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "dicom_listener"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )


def _family(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    family = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue  # a thread that ended meanwhile
        for child in children:
            family += _family(int(child))
    return family


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of ``pid`` and its descendants, summed."""
    total = 0.0
    for member in _family(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) / 1024
    return total


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of ``pid`` and its descendants (their ended threads included)."""
    total = 0
    for member in _family(pid):
        fields = Path(f"/proc/{member}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _CLOCK_TICKS


def run_once(
    start: Callable[[Path, int], subprocess.Popen[bytes]],
    files: list[Path],
    associations: int,
    received: Path,
) -> tuple[float, float, float]:
    """Seconds to send ``files`` to a fresh receiver, the CPU seconds it spent meanwhile, and
    its peak memory.

    What the receiver stored stays in a new folder under ``received`` until the benchmark
    ends. Deleting it between rounds would tax the next round: ext4 without a journal (this
    development machine's root filesystem) skips every inode freed in the last 5 to 300
    seconds when it allocates one, so after a round's thousand files are deleted each file the
    next receiver creates costs up to a millisecond of system time, whichever receiver it is.
    """
    # What the previous receiver left in the page cache is written out now, not during this
    # receiver's run: storescp does not flush its files, and the kernel would otherwise write
    # them back while the next receiver is being timed.
    os.sync()
    folder = Path(tempfile.mkdtemp(dir=received))
    port = free_port()
    proc = start(folder, port)
    try:
        wait_port(port)
        cpu_before = cpu_seconds(proc.pid)
        seconds = send(port, files, associations)
        cpu = cpu_seconds(proc.pid) - cpu_before
        peak = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    return seconds, cpu, peak


def write_study(folder: Path, images: int, size: int) -> tuple[list[Path], float]:
    """``images`` MR images in 4 series; the files and their size in MB."""
    series = 4
    study = write_mr_study(folder, series=series, slices=images // series, size=size)
    return study.files, sum(f.stat().st_size for f in study.files) / 1e6


def listener_without_fsync(folder: Path, port: int) -> subprocess.Popen[bytes]:
    """The listener with its fsyncs turned off: not durable, so never how it runs; it shows
    what durability costs apart from the protocol and the checks."""
    return listener(folder, port, fsync=False)


def stock_listener(folder: Path, port: int) -> subprocess.Popen[bytes]:
    """The listener on the stock engine: pynetdicom's own speed, plus the listener's storage."""
    return listener(folder, port, engine="stock")


def stock_listener_without_fsync(folder: Path, port: int) -> subprocess.Popen[bytes]:
    return listener(folder, port, engine="stock", fsync=False)


Receiver = Callable[[Path, int], subprocess.Popen[bytes]]
RECEIVERS: dict[str, Receiver] = {
    "dcmtk storescp": storescp,
    "pynetdicom storescp": pynetdicom_storescp,
    "neurogate fast": listener,
    "  (fsync off)": listener_without_fsync,
    "neurogate stock": stock_listener,
    "  (stock, fsync off)": stock_listener_without_fsync,
}


def throughput(args: argparse.Namespace, data: Path) -> None:
    files, megabytes = write_study(data / "sent", args.images, args.size)
    received = data / "received"
    received.mkdir()
    print(
        f"{len(files)} MR images, {megabytes:.0f} MB, {os.cpu_count()} CPUs, "
        f"{args.rounds} alternating rounds, median reported\n"
    )
    print(
        f"{'receiver':<22}{'assocs':>7}{'images/s':>11}{'MB/s':>9}{'CPU ms/img':>11}"
        f"{'peak MB':>9}{'ratio':>8}"
    )
    for associations in (1, args.associations):
        receivers = RECEIVERS
        times: dict[str, list[float]] = {name: [] for name in receivers}
        cpus: dict[str, list[float]] = {name: [] for name in receivers}
        peaks: dict[str, list[float]] = {name: [] for name in receivers}
        for _ in range(args.rounds):
            for name, start in receivers.items():
                seconds, cpu, peak = run_once(start, files, associations, received)
                times[name].append(seconds)
                cpus[name].append(cpu)
                peaks[name].append(peak)
        reference = statistics.median(times["dcmtk storescp"])
        for name in times:
            seconds = statistics.median(times[name])
            cpu_ms = statistics.median(cpus[name]) * 1e3 / len(files)
            print(
                f"{name:<22}{associations:>7}{len(files) / seconds:>11.0f}"
                f"{megabytes / seconds:>9.1f}{cpu_ms:>11.2f}"
                f"{max(peaks[name]):>9.0f}{reference / seconds:>8.2f}"
            )


def memory(args: argparse.Namespace, data: Path) -> None:
    """The listener's peak memory for studies of each size (flat: no growth with images)."""
    sizes = [int(n) for n in args.memory.split(",")]
    print(
        f"listener peak memory, {args.associations} associations, "
        f"images of {args.size}x{args.size}\n"
    )
    print(f"{'images':>7}{'MB sent':>9}{'images/s':>10}{'peak MB':>9}")
    for images in sizes:
        files, megabytes = write_study(data / str(images), images, args.size)
        seconds, _, peak = run_once(listener, files, args.associations, data)
        print(f"{len(files):>7}{megabytes:>9.0f}{len(files) / seconds:>10.0f}{peak:>9.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256, help="rows = columns of each image")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument(
        "--memory",
        metavar="N,N",
        help="peak memory of the listener alone for each number of images, e.g. 500,2000",
    )
    args = parser.parse_args()
    for tool in ("storescu", "storescp", "echoscu"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} missing: run scripts/setup --test")
    (REPO / "var").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=REPO / "var") as data:
        if args.memory:
            memory(args, Path(data))
        else:
            throughput(args, Path(data))


if __name__ == "__main__":
    main()
