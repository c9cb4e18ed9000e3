"""The node's store of received DICOM instances, on a filesystem shared with the workers.

Layout under the storage root::

    studies/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    conflicts/<SOPInstanceUID>.<utc-timestamp>.dcm   same UID, different bytes: kept, never dropped
    tmp/                                              files being received (same filesystem)

A file is published into ``studies/`` by hard-linking a complete, fsync'ed file, so a reader
never sees a partial instance and an existing instance is never overwritten: either a temporary
file in ``tmp/`` or, for an instance whose bytes are in memory, an unnamed file (``O_TMPFILE``)
in its series directory, which a crash leaves nowhere. UIDs are validated (digits and dots only)
before they become path components.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import errno
import filecmp
import logging
import math
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

from schemas.uids import validate_uid

log = logging.getLogger(__name__)

STUDIES = "studies"
CONFLICTS = "conflicts"
TMP = "tmp"
DICOM_SUFFIX = ".dcm"
_KNOWN_SERIES_DIRS = 4096  # series directories remembered as existing, at most


def tmp_name() -> str:
    """A fresh name for a file being received in ``tmp/``."""
    return f"{uuid.uuid4().hex}.part"


class StoreOutcome(enum.Enum):
    STORED = "stored"  # a new instance
    DUPLICATE = "duplicate"  # the same SOP Instance UID with identical bytes was already stored
    CONFLICT = "conflict"  # the same SOP Instance UID with different bytes: kept in conflicts/


class InstanceStore:
    """Durable, no-clobber placement of received instances.

    Parameters
    ----------
    root
        The storage root; created if missing.
    fsync
        Flush files and directories to stable storage before a call returns. Only tests and
        benchmarks that measure the cost of durability turn this off.
    """

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root.resolve()
        self.fsync = fsync
        for sub in (STUDIES, CONFLICTS, TMP):
            self._ensure_dir(self.root / sub)
        self._unnamed_files = _can_link_unnamed(self.tmp_dir)
        self._free: tuple[float, int] = (-math.inf, 0)  # (monotonic time read, free bytes)
        self._series_dirs: set[Path] = set()  # series directories known to exist
        self._held = threading.local()  # each thread's series directory, held open
        if not self._unnamed_files:
            log.info("no unnamed files (O_TMPFILE) on the storage filesystem: writing via tmp/")

    @property
    def tmp_dir(self) -> Path:
        return self.root / TMP

    def relative(self, path: Path) -> str:
        """``path`` relative to the storage root, as carried in events."""
        return path.relative_to(self.root).as_posix()

    def study_dir(self, study_uid: str) -> Path:
        return self.root / STUDIES / validate_uid(study_uid)

    def series_dir(self, study_uid: str, series_uid: str) -> Path:
        return self.study_dir(study_uid) / validate_uid(series_uid)

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return self.series_dir(study_uid, series_uid) / f"{validate_uid(sop_uid)}{DICOM_SUFFIX}"

    def free_bytes(self, *, max_age_s: float = 0.0) -> int:
        """Free space on the storage volume; a reading up to ``max_age_s`` old will do."""
        read_at, free = self._free
        now = time.monotonic()
        if now - read_at > max_age_s:
            free = shutil.disk_usage(self.root).free
            self._free = (now, free)
        return free

    def clean_tmp(self) -> int:
        """Remove files left in ``tmp/`` by a crash; none of them was acknowledged."""
        removed = 0
        for entry in self.tmp_dir.iterdir():
            if entry.is_file():
                entry.unlink()
                removed += 1
        return removed

    def commit(
        self, src: Path, study_uid: str, series_uid: str, sop_uid: str, *, synced: bool = False
    ) -> StoreOutcome:
        """Publish the complete file ``src`` (in ``tmp/``) as an instance; ``src`` is consumed.

        Returns once the instance is durable: file contents (unless the caller ``synced`` them
        already), then its directory entry.
        """
        final = self.instance_path(study_uid, series_uid, sop_uid)
        try:
            if self.fsync and not synced:
                _fsync_file(src)
            self._ensure_dir(final.parent)
            try:
                os.link(src, final)
            except FileExistsError:
                return self._resolve_existing(src, final, sop_uid)
            if self.fsync:
                _fsync_dir(final.parent)
            return StoreOutcome.STORED
        finally:
            src.unlink(missing_ok=True)

    def write(
        self, content: bytes | bytearray, study_uid: str, series_uid: str, sop_uid: str
    ) -> StoreOutcome:
        """Publish an instance from its bytes; returns once it is durable.

        The bytes go to an unnamed file in the series directory, which is flushed and then
        linked under the instance's name: one directory entry is made and none removed, where
        going through ``tmp/`` makes two and removes one. On a filesystem without unnamed files
        (``O_TMPFILE``), through ``tmp/``.
        """
        final = self.instance_path(study_uid, series_uid, sop_uid)
        if self._unnamed_files:
            try:
                return self._write_unnamed(content, final, sop_uid)
            except OSError:
                if not self._held_dir_removed():
                    raise
                # The series directory held open was removed (its study deleted) since this
                # thread last stored into it: make it again, once.
                self._release_series_dir(final.parent)
                return self._write_unnamed(content, final, sop_uid)
        tmp = self.tmp_dir / tmp_name()
        with tmp.open("xb") as fh:
            fh.write(content)
        return self.commit(tmp, study_uid, series_uid, sop_uid)

    def _write_unnamed(self, content: bytes | bytearray, final: Path, sop_uid: str) -> StoreOutcome:
        dir_fd = self._held_series_dir(final.parent)
        fd = os.open(".", os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
        try:
            return self._publish_unnamed(fd, dir_fd, content, final, sop_uid)
        finally:
            os.close(fd)

    def _held_series_dir(self, path: Path) -> int:
        """A descriptor of the series directory ``path``, which this thread keeps open.

        A sender stores a series' instances one after the other, so each thread holds the
        directory it stored into last: two system calls (open, close) fewer per instance.
        """
        held: _HeldDirectory | None = getattr(self._held, "directory", None)
        if held is not None and held.path == path:
            return held.fd
        fd = self._open_series_dir(path)
        self._held.directory = _HeldDirectory(path, fd)  # closes the one held before
        return fd

    def _held_dir_removed(self) -> bool:
        """Whether the directory this thread holds open has been removed (no name links to it:
        creating or linking a file there fails, with EPERM or ENOENT)."""
        held: _HeldDirectory | None = getattr(self._held, "directory", None)
        return held is not None and os.fstat(held.fd).st_nlink == 0

    def _release_series_dir(self, path: Path) -> None:
        """Forget the series directory ``path``: this thread's descriptor, and that it exists."""
        self._held.directory = None
        self._series_dirs.discard(path)

    def _open_series_dir(self, path: Path) -> int:
        """A descriptor of the series directory ``path``, made (durably) if missing.

        Whether it exists is remembered rather than asked of the filesystem per instance; a
        directory removed since (a study deleted) is made again.
        """
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        if path in self._series_dirs:
            try:
                return os.open(path, flags)
            except FileNotFoundError:
                self._series_dirs.discard(path)
        self._ensure_dir(path)
        fd = os.open(path, flags)
        if len(self._series_dirs) >= _KNOWN_SERIES_DIRS:
            self._series_dirs.clear()
        self._series_dirs.add(path)
        return fd

    def _publish_unnamed(
        self, fd: int, dir_fd: int, content: bytes | bytearray, final: Path, sop_uid: str
    ) -> StoreOutcome:
        """Write, flush and name the unnamed file ``fd`` of the directory ``dir_fd``."""
        with memoryview(content) as view:
            while view:
                view = view[os.write(fd, view) :]
        if self.fsync:
            os.fsync(fd)
        source = f"/proc/self/fd/{fd}"
        try:
            # linkat(AT_SYMLINK_FOLLOW): os.link asks for it only when given a directory fd
            os.link(source, final.name, dst_dir_fd=dir_fd, follow_symlinks=True)
        except FileExistsError:
            return self._resolve_existing(source, final, sop_uid)
        if self.fsync:
            os.fsync(dir_fd)
        return StoreOutcome.STORED

    def discard(self, study_uid: str, series_uid: str, sop_uid: str) -> None:
        """Remove an instance whose receipt is being refused after it was published."""
        self.instance_path(study_uid, series_uid, sop_uid).unlink(missing_ok=True)

    def _resolve_existing(self, src: Path | str, final: Path, sop_uid: str) -> StoreOutcome:
        if filecmp.cmp(src, final, shallow=False):
            return StoreOutcome.DUPLICATE
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
        kept = self.root / CONFLICTS / f"{sop_uid}.{stamp}{DICOM_SUFFIX}"
        _link_following(src, kept)
        if self.fsync:
            _fsync_dir(kept.parent)
        log.warning(
            "instance differs from the stored one with the same SOP Instance UID; kept aside",
            extra={"sop_instance_uid": sop_uid, "kept_as": self.relative(kept)},
        )
        return StoreOutcome.CONFLICT

    def _ensure_dir(self, path: Path) -> None:
        """Create ``path`` and its missing parents, making each new entry durable."""
        if path.is_dir():
            return
        self._ensure_dir(path.parent)
        try:
            path.mkdir()
        except FileExistsError:
            return
        if self.fsync:
            _fsync_dir(path.parent)


class _HeldDirectory:
    """An open descriptor of a directory, closed when the holder lets it go (or its thread
    ends)."""

    __slots__ = ("fd", "path")

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _can_link_unnamed(directory: Path) -> bool:
    """Whether an unnamed file made in ``directory`` can be given a name there (a filesystem
    with ``O_TMPFILE``, and ``/proc`` mounted)."""
    try:
        fd = os.open(directory, os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return False
        raise
    probe = directory / tmp_name()
    try:
        _link_following(f"/proc/self/fd/{fd}", probe)
    except OSError:
        return False
    finally:
        os.close(fd)
    probe.unlink(missing_ok=True)
    return True


def _link_following(src: Path | str, dst: Path) -> None:
    """Hard-link ``src``, following it if it is a symbolic link (``/proc/self/fd/N`` of an
    unnamed file): ``linkat`` with ``AT_SYMLINK_FOLLOW``, which ``os.link`` uses only when given
    a directory descriptor."""
    dir_fd = os.open(dst.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(src, dst.name, dst_dir_fd=dir_fd, follow_symlinks=True)
    finally:
        os.close(dir_fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
