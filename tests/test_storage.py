"""The instance store: durable, no-clobber, nothing lost on a UID clash."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from neurogate import storage
from neurogate.storage import InstanceStore, StoreOutcome


def _tmp(store: InstanceStore, data: bytes) -> Path:
    path = store.tmp_dir / f"{len(list(store.tmp_dir.iterdir()))}.part"
    path.write_bytes(data)
    return path


def test_commit_publishes_and_consumes_the_temporary_file(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    src = _tmp(store, b"instance")
    assert store.commit(src, "1.2", "1.2.3", "1.2.3.4") is StoreOutcome.STORED
    assert store.instance_path("1.2", "1.2.3", "1.2.3.4").read_bytes() == b"instance"
    assert not src.exists()


def test_identical_resend_is_a_duplicate_and_different_bytes_are_kept_aside(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    store.commit(_tmp(store, b"first"), "1.2", "1.2.3", "1.2.3.4")
    assert store.commit(_tmp(store, b"first"), "1.2", "1.2.3", "1.2.3.4") is StoreOutcome.DUPLICATE
    assert store.commit(_tmp(store, b"other"), "1.2", "1.2.3", "1.2.3.4") is StoreOutcome.CONFLICT

    assert store.instance_path("1.2", "1.2.3", "1.2.3.4").read_bytes() == b"first"
    (kept,) = (tmp_path / "conflicts").iterdir()
    assert kept.read_bytes() == b"other"
    assert list(store.tmp_dir.iterdir()) == []


def test_uids_cannot_escape_the_store(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    with pytest.raises(ValueError):
        store.study_dir("../../etc")


def test_clean_tmp_removes_unacknowledged_leftovers(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    _tmp(store, b"half")
    assert store.clean_tmp() == 1
    assert list(store.tmp_dir.iterdir()) == []


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed file", "through tmp"])
def test_write_publishes_bytes_with_the_same_outcomes_as_commit(
    tmp_path: Path, unnamed: bool
) -> None:
    store = InstanceStore(tmp_path)
    assert store._unnamed_files  # ext4, tmpfs, xfs, btrfs have them; the tests' disk too
    store._unnamed_files = unnamed  # as on a filesystem without O_TMPFILE
    ids = ("1.2", "1.2.3", "1.2.3.4")

    assert store.write(b"first", *ids) is StoreOutcome.STORED
    assert store.write(bytearray(b"first"), *ids) is StoreOutcome.DUPLICATE
    assert store.write(b"other", *ids) is StoreOutcome.CONFLICT

    final = store.instance_path(*ids)
    assert final.read_bytes() == b"first"
    assert final.stat().st_mode & 0o777 == 0o644
    (kept,) = (tmp_path / "conflicts").iterdir()
    assert kept.read_bytes() == b"other"
    assert list(store.tmp_dir.iterdir()) == []
    assert [p.name for p in final.parent.iterdir()] == [final.name]  # nothing else was named


def test_a_series_directory_removed_since_it_was_last_written_is_made_again(
    tmp_path: Path,
) -> None:
    store = InstanceStore(tmp_path)
    assert store.write(b"first", "1.2", "1.2.3", "1.2.3.4") is StoreOutcome.STORED
    shutil.rmtree(store.study_dir("1.2"))  # the study deleted (retention, an operator)

    assert store.write(b"second", "1.2", "1.2.3", "1.2.3.5") is StoreOutcome.STORED
    assert store.instance_path("1.2", "1.2.3", "1.2.3.5").read_bytes() == b"second"


def test_each_thread_holds_one_series_directory_open_and_lets_it_go_when_it_ends(
    tmp_path: Path,
) -> None:
    store = InstanceStore(tmp_path)
    open_before = len(os.listdir("/proc/self/fd"))
    held_while_running: list[int] = []

    def association(series: str) -> None:  # one thread per association, as in the listener
        for n in range(3):
            assert store.write(b"x", "1.2", series, f"{series}.{n}") is StoreOutcome.STORED
        held_while_running.append(len(os.listdir("/proc/self/fd")) - open_before)

    threads = [threading.Thread(target=association, args=(s,)) for s in ("1.2.3", "1.2.4")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert all(held >= 1 for held in held_while_running)  # the series directory, kept open
    assert len(os.listdir("/proc/self/fd")) == open_before  # and closed with its thread
    assert len(list(store.study_dir("1.2").rglob("*.dcm"))) == 6


def test_free_space_is_read_again_once_the_reading_is_older_than_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = InstanceStore(tmp_path)
    readings = iter([100, 50])
    monkeypatch.setattr(
        storage.shutil, "disk_usage", lambda _: SimpleNamespace(free=next(readings))
    )
    assert store.free_bytes(max_age_s=60) == 100
    assert store.free_bytes(max_age_s=60) == 100  # cached
    assert store.free_bytes() == 50  # max_age_s=0: read now
