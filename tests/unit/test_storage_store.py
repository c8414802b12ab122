"""The storage API's filesystem layer (storage_api.store) and its name allowlist."""
from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from storage_api import create_app
from storage_api import store as store_module
from storage_api.names import is_valid_name
from storage_api.store import TEMP_PREFIX, Store


def _names(directory) -> list[str]:
    return sorted(os.listdir(directory))


def test_no_temporary_file_name_can_be_an_item_name():
    assert not is_valid_name(TEMP_PREFIX + "123-abc")
    assert not any(is_valid_name(n) for n in (".", "..", "", None, 5, "a/b", "a\x00b"))


def test_create_reports_who_created(storage_dir):
    store = Store(storage_dir)
    assert store.create("a") is True
    assert store.create("a") is False
    assert _names(storage_dir) == ["a"]


def test_batch_rolls_over_to_a_new_temporary_file_on_too_many_links(storage_dir, monkeypatch):
    real_link = os.link
    links_per_source: dict[str, int] = {}

    def link(src, dst):  # behave like a filesystem allowing 3 links per inode
        links_per_source[src] = links_per_source.get(src, 0) + 1
        if links_per_source[src] > 3:
            raise OSError(errno.EMLINK, "Too many links")
        real_link(src, dst)

    monkeypatch.setattr(store_module.os, "link", link)
    names = [str(i) for i in range(10)]
    result = Store(storage_dir).batch(create=names)
    assert result.created == names and not result.failed
    assert _names(storage_dir) == sorted(names)  # every temporary file removed
    assert len(links_per_source) >= 4


@pytest.mark.parametrize("code", [errno.EPERM, errno.EOPNOTSUPP])
def test_filesystems_without_hard_links_fall_back_to_exclusive_create(storage_dir, monkeypatch, code):
    def no_link(src, dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(store_module.os, "link", no_link)
    store = Store(storage_dir)
    result = store.batch(create=["a", "b", "a"])
    assert (result.created, result.existing) == (["a", "b"], ["a"])
    assert store.create("c") is True and store.create("c") is False
    assert _names(storage_dir) == ["a", "b", "c"]
    assert (storage_dir / "a").read_text() == "x"


def test_other_errors_are_reported_per_item(storage_dir, monkeypatch):
    real_link = os.link

    def link(src, dst):
        if dst.endswith("/bad"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_link(src, dst)

    monkeypatch.setattr(store_module.os, "link", link)
    result = Store(storage_dir).batch(create=["ok", "bad", "ok2"])
    assert result.created == ["ok", "ok2"]
    assert result.failed == {"bad": "No space left on device"}


def test_stale_temporary_files_are_swept_at_start_but_fresh_ones_kept(storage_dir):
    stale = storage_dir / f"{TEMP_PREFIX}1-old"
    fresh = storage_dir / f"{TEMP_PREFIX}2-new"
    for path in (stale, fresh):
        path.write_text("x")
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    create_app({"STO_STORAGE": str(storage_dir)})
    assert _names(storage_dir) == [fresh.name]


def test_store_refuses_invalid_names_even_if_a_caller_forgets(storage_dir):
    store = Store(storage_dir)
    for bad in ("..", "../x", ".hidden"):
        with pytest.raises(ValueError):
            store.create(bad)
        with pytest.raises(ValueError):
            store.delete(bad)


def test_concurrent_creates_and_deletes_never_double_count(storage_dir):
    """Threads race on the same names: each name is created by exactly one thread per round
    and deleted by exactly one; no exception escapes, no temporary file is left."""
    store = Store(storage_dir)
    names = [f"n{i}" for i in range(50)]
    created, deleted, errors = [], [], []
    lock = threading.Lock()

    def worker():
        try:
            for _ in range(3):
                result = store.batch(create=names)
                with lock:
                    created.extend(result.created)
                for name in names:
                    if store.delete(name):
                        with lock:
                            deleted.append(name)
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _names(storage_dir) == []
    assert len(created) == len(deleted)  # every creation matched by exactly one deletion
    assert sorted(set(created)) == sorted(names)


def test_a_resent_keyed_batch_reports_what_its_first_attempt_created(storage_dir):
    store = Store(storage_dir)
    (storage_dir / "old").write_text("x")  # there before: "existing" in every attempt
    first = store.batch(create=["a", "b", "old"], key="k" * 16)
    assert (first.created, first.existing) == (["a", "b"], ["old"])
    again = store.batch(create=["a", "b", "c", "old"], key="k" * 16)  # its answer was lost
    assert (again.created, again.existing) == (["a", "b", "c"], ["old"])
    other = store.batch(create=["a", "d"], key="z" * 16)  # another batch: "a" is not its own
    assert (other.created, other.existing) == (["d"], ["a"])
    assert store.list() == ["a", "b", "c", "d", "old"]


def test_a_keyed_batch_after_a_worker_died_mid_batch(storage_dir):
    """A worker killed mid-batch leaves its idempotency file and some items; the re-sent batch,
    in another process, counts those items as created by this batch."""
    source = store_module._RecordSource(str(storage_dir / store_module.IDEM_DIR), "dead" * 4)
    source.__enter__()
    source.link_to(str(storage_dir / "0"))  # ... and the worker dies here: no __exit__
    result = Store(storage_dir).batch(create=["0", "1"], key="dead" * 4)
    assert result.created == ["0", "1"] and not result.existing


def test_a_resent_keyed_batch_reports_what_its_first_attempt_deleted(storage_dir):
    store = Store(storage_dir)
    store.batch(create=["a", "b", "c"])
    first = store.batch(delete=["a", "b", "gone"], key="d" * 16)
    assert (first.deleted, first.missing) == (["a", "b"], ["gone"])
    again = store.batch(delete=["a", "b", "c", "gone"], key="d" * 16)  # its answer was lost
    assert (again.deleted, again.missing) == (["a", "b", "c"], ["gone"])
    other = store.batch(delete=["a", "c"], key="e" * 16)  # another batch deleted none of them
    assert (other.deleted, other.missing) == ([], ["a", "c"])
    assert store.list() == []


def test_a_keyed_delete_leaves_directories_and_links_alone(storage_dir):
    (storage_dir / "adir").mkdir()
    (storage_dir / "alink").symlink_to("/etc/hostname")
    result = Store(storage_dir).batch(delete=["adir", "alink"], key="d" * 16)
    assert result.missing == ["adir", "alink"] and (storage_dir / "adir").is_dir()
    assert (storage_dir / "alink").is_symlink()


def test_invalid_idempotency_keys_are_refused(storage_dir):
    for bad in ("short", "../../etc", "k" * 97, "a b c d e f"):
        with pytest.raises(ValueError):
            Store(storage_dir).batch(create=["a"], key=bad)


def test_temporary_files_of_dead_processes_are_swept_while_running(storage_dir):
    """No restart needed: the next listing removes a dead worker's temporary file at once
    (same host), keeps a live process's and another host's (another replica's) files."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    orphan = storage_dir / f"{TEMP_PREFIX}{store_module.HOST}-{dead}-abc"
    mine = storage_dir / f"{TEMP_PREFIX}{store_module.HOST}-{os.getpid()}-def"
    foreign = storage_dir / f"{TEMP_PREFIX}otherhost-{dead}-ghi"
    for path in (orphan, mine, foreign):
        path.write_text("x")
    store = Store(storage_dir)
    assert store.list() == []
    assert _names(storage_dir) == sorted([mine.name, foreign.name])


def test_the_periodic_sweep_removes_old_temporary_and_record_files(storage_dir, monkeypatch):
    store = Store(storage_dir)
    store.list()  # the first sweep ran now; the next one waits SWEEP_INTERVAL
    old_temp = storage_dir / f"{TEMP_PREFIX}otherhost-1-old"
    records = storage_dir / store_module.IDEM_DIR
    records.mkdir()
    old_record = records / f"{'k' * 16}-c0"
    fresh_record = records / f"{'f' * 16}-c0"
    old_moved = records / f"{'k' * 16}-d"
    for path in (old_temp, old_record, fresh_record):
        path.write_text("x")
    old_moved.mkdir()
    (old_moved / "7").write_text("x")
    hour_ago = time.time() - 3600
    for path in (old_temp, old_record, old_moved):
        os.utime(path, (hour_ago, hour_ago))
    store.list()
    assert old_temp.exists()  # not yet: at most one sweep per interval
    monkeypatch.setattr(store, "_next_sweep", 0.0)
    store.list()
    assert _names(storage_dir) == [store_module.IDEM_DIR]
    assert _names(records) == [fresh_record.name]


def test_records_are_kept_apart_from_the_items_and_deletes_free_space_at_once(storage_dir):
    """Listing never walks the records; a batch that changes nothing leaves none; a keyed
    delete keeps names, not files (a full volume cleared is a volume with room again)."""
    store = Store(storage_dir)
    store.batch(create=["a", "b"], key="k" * 16)
    store.batch(create=["a", "b"], key="n" * 16)  # nothing new: no record needed
    store.batch(delete=["b"], key="d" * 16)
    store.batch(delete=["nothing", "here"], key="z" * 16)  # nothing deleted: no record
    assert _names(storage_dir) == [store_module.IDEM_DIR, "a"]
    records = storage_dir / store_module.IDEM_DIR
    assert _names(records) == ["d" * 16 + "-d.names", "k" * 16 + "-c0"]
    assert (records / ("d" * 16 + "-d.names")).read_text() == "b"
    assert store.list() == ["a"]


def test_a_keyed_delete_on_a_full_disk_still_deletes(storage_dir, monkeypatch):
    """No room for the record directory (ENOSPC): the items are deleted plainly."""
    store = Store(storage_dir)
    store.batch(create=["a", "b"])

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module.os, "makedirs", full)
    result = store.batch(delete=["a", "b"], key="f" * 16)
    assert (result.deleted, result.failed) == (["a", "b"], {})
    assert _names(storage_dir) == []


@pytest.mark.parametrize("hardlinks", [True, False])
def test_a_failed_write_leaves_no_temporary_file_and_no_empty_item(storage_dir, monkeypatch, hardlinks):
    if not hardlinks:
        monkeypatch.setattr(store_module.os, "link", lambda src, dst: (_ for _ in ()).throw(
            OSError(errno.EPERM, "Operation not permitted")))

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module.os, "write", full)
    store = Store(storage_dir)
    with pytest.raises(OSError):
        store.create("a")
    with pytest.raises(OSError):
        store.batch(create=["b", "c"])
    assert _names(storage_dir) == []  # neither a leaked temporary file nor an empty item


def test_data_and_directory_are_synced_before_an_answer(storage_dir, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append("dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file")
        real_fsync(fd)

    monkeypatch.setattr(store_module.os, "fsync", fsync)
    store = Store(storage_dir)
    assert store.create("a") and synced == ["file", "dir"]
    synced.clear()
    store.batch(create=[str(i) for i in range(100)])
    assert synced == ["file", "dir"]  # one of each for the whole batch
    synced.clear()
    assert store.delete("a") and synced == ["dir"]
    synced.clear()
    store.batch(create=["0"])  # nothing changed: nothing to sync
    assert synced == []


def test_a_key_reused_with_another_batch_is_another_record(storage_dir):
    """The route binds the key to the body (key-digest): two bodies, two records."""
    store = Store(storage_dir)
    assert store.batch(create=["a"], key="same-key-body1").created == ["a"]
    again = store.batch(create=["a", "c"], key="same-key-body2")
    assert (again.created, again.existing) == (["c"], ["a"])
