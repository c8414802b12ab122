"""Items as files in one directory: list, create and delete, atomic and safe for many processes.

Several processes (server workers, replicas sharing a volume) may work on the same directory
at the same time, so every operation is a single atomic filesystem step:

- create: the item's content (``x``, as in the seed) is first written to a temporary file
  whose name starts with ``.`` (never a valid item name, never listed), then the item appears
  in one step with ``os.link(temp, item)``. ``link`` fails if the name already exists, so of two
  concurrent creators exactly one "created" the item and the other learns it already existed,
  and no reader ever sees a partial file. A batch links all its new items to one temporary
  file (items are immutable, so sharing the inode is harmless; on ``EMLINK`` a new temporary
  file is started). Filesystems without hard links fall back to an exclusive create
  (``O_CREAT | O_EXCL``), still atomic for the name.
- delete: ``os.unlink``; of two concurrent deleters exactly one deletes, the other sees
  "missing".
- list: the regular files whose names pass the allowlist (temporary files, directories,
  symlinks and foreign files such as ``lost+found`` are not items).

Durability: an answer is sent only once what it reports is on disk: the content of a new
item's file is ``fsync``ed before it is linked, and the directory after its names changed (one
directory ``fsync`` per request, however many items it touched).

Exact counts for re-sent batches (one mechanism): a batch sent with a key (``Idempotency-Key``;
the application API sends one per batch, bound here to a digest of the batch's body, so a key
reused with another body is another record) keeps a record in ``.sto-idem/`` for
``RECORD_SECONDS``, long enough for the sender's retries (the application API gives a request
15 s). When the same batch comes again (its answer was lost: a dropped connection, a worker
killed mid-batch), the record tells what its earlier attempt did:

- creates link their new items to ``.sto-idem/<record>-c<n>`` instead of a temporary file: an
  item that exists and shares that file's inode was made by this batch, so it is ``created``
  again, not ``existing``;
- deletes move items into ``.sto-idem/<record>-d/`` (one atomic ``rename``) while the batch runs;
  at its end their names are written to ``<record>-d.names`` and the files removed, so space is
  freed at once. A re-sent batch counts an item it cannot see as ``deleted`` if either holds it.
  If the record cannot be made (a full disk), the batch deletes plainly: the volume can always
  be cleared; only a re-send of that very batch could then miss a count.

A batch that changes nothing leaves no record.

Temporary files of crashed processes are swept while the service runs, not only at start-up:
a ``.sto-tmp-<host>-<pid>-...`` file whose process (same host) is gone is removed by the next
directory scan (every list and every worker start); any temporary file older than
``STALE_TEMP_SECONDS`` (another replica's, say) and any record older than ``RECORD_SECONDS``
are removed by a sweep that runs at most every ``SWEEP_INTERVAL`` seconds, triggered by
listings and batches (which run on the server's threads, never on its event loop).
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import stat
import threading
import time
import uuid
from dataclasses import dataclass, field

from .names import is_valid_name

CONTENT = b"x"
TEMP_PREFIX = ".sto-tmp-"
IDEM_DIR = ".sto-idem"
STALE_TEMP_SECONDS = 600
RECORD_SECONDS = 120
SWEEP_INTERVAL = 30.0
#: a record's name: the sender's key and a digest of the batch (see storage_api.routes)
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{8,96}", re.ASCII)
#: this machine/container: processes of other hosts sharing the volume are not ours to judge
HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:40] or "host"
_TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r"(?P<host>[A-Za-z0-9]+)-(?P<pid>[0-9]+)-")
_NO_HARDLINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV}


class NotAnItem(Exception):
    """The name exists in the directory but is not an item (a directory, a symlink, ...)."""


@dataclass
class BatchResult:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"created": self.created, "existing": self.existing, "deleted": self.deleted,
                "missing": self.missing, "failed": self.failed}


class Store:
    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.records = os.path.join(self.root, IDEM_DIR)
        self._next_sweep = 0.0
        self._sweep_lock = threading.Lock()

    # -- reading -------------------------------------------------------------------------
    def list(self) -> list[str]:
        names = []
        with os.scandir(self.root) as entries:
            for entry in entries:
                if is_valid_name(entry.name):
                    if entry.is_file(follow_symlinks=False):
                        names.append(entry.name)
                elif entry.name.startswith(TEMP_PREFIX):
                    _remove_if_orphaned(entry)
        names.sort()
        self.maybe_sweep()
        return names

    def is_writable(self) -> bool:
        return os.path.isdir(self.root) and os.access(self.root, os.W_OK | os.X_OK)

    # -- writing -------------------------------------------------------------------------
    def create(self, name: str) -> bool:
        """Create one item; True if this call created it, False if it already existed."""
        with _LinkSource(self.root) as source:
            created = self._create_one(source, name)
        if created:
            _fsync_dir(self.root)
        return created

    def delete(self, name: str) -> bool:
        """Delete one item; True if this call deleted it, False if there was no such item."""
        deleted = _Deletes(self, None)._delete(name)
        if deleted:
            _fsync_dir(self.root)
        return deleted

    def batch(self, create: list[str] = (), delete: list[str] = (), key: str | None = None) -> BatchResult:
        """Create then delete many items; per-item outcomes, OS errors reported per item.
        With ``key`` (see the module doc) a re-sent batch reports what its first attempt did."""
        if key is not None and not KEY_PATTERN.fullmatch(key):
            raise ValueError(f"invalid record key {key!r}")
        self.maybe_sweep()
        result = BatchResult()
        if create:
            source = _RecordSource(self.records, key) if key else _LinkSource(self.root)
            with source:
                for name in create:
                    try:
                        (result.created if self._create_one(source, name) else result.existing).append(name)
                    except NotAnItem:
                        result.failed[name] = "exists and is not an item (directory or link)"
                    except OSError as err:
                        if source.broken:
                            raise  # no file to link to (directory gone, disk full): the batch fails
                        result.failed[name] = err.strerror or str(err)
        if delete:
            _Deletes(self, key).run(delete, result)
        if result.created or result.deleted:
            _fsync_dir(self.root)
        return result

    def remove_stale_temp_files(self, max_age: float = STALE_TEMP_SECONDS,
                                record_age: float = RECORD_SECONDS) -> int:
        """Remove temporary files of dead processes of this host, temporary files older than
        ``max_age`` and records older than ``record_age``; the number removed."""
        removed = 0
        now = time.time()
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.name.startswith(TEMP_PREFIX):
                    if _remove_if_orphaned(entry):
                        removed += 1
                    elif _older_than(entry, now, max_age):
                        removed += _remove(entry)
        try:
            with os.scandir(self.records) as entries:
                for entry in entries:
                    if _older_than(entry, now, record_age):
                        removed += _remove(entry)
        except (FileNotFoundError, NotADirectoryError):
            pass
        return removed

    def maybe_sweep(self) -> None:
        """``remove_stale_temp_files`` at most every SWEEP_INTERVAL seconds (per process)."""
        now = time.monotonic()
        if now < self._next_sweep or not self._sweep_lock.acquire(blocking=False):
            return
        try:
            self._next_sweep = now + SWEEP_INTERVAL
            self.remove_stale_temp_files()
        except OSError:
            pass  # the directory is gone: the request itself reports that
        finally:
            self._sweep_lock.release()

    # -- internals -----------------------------------------------------------------------
    def _path(self, name: str) -> str:
        if not is_valid_name(name):  # callers validate; this is the last line of defence
            raise ValueError(f"invalid item name {name!r}")
        return os.path.join(self.root, name)

    def _create_one(self, source: _LinkSource, name: str) -> bool:
        path = self._path(name)
        for _ in range(2):  # a second look if another client creates or deletes it meanwhile
            st = None
            if source.path is None:  # no file to link to yet: look first, so that a batch of
                try:                 # existing items makes none; then it is one call per item
                    st = os.lstat(path)
                except FileNotFoundError:
                    pass
            if st is None:
                try:
                    source.link_to(path)
                    return True
                except FileExistsError:
                    try:
                        st = os.lstat(path)
                    except FileNotFoundError:
                        continue
            if not stat.S_ISREG(st.st_mode):
                raise NotAnItem(name)
            return source.made(st)  # True: an earlier attempt of this same batch made it
        return False


class _Deletes:
    """The deletes of one batch; with a key, recorded as the module doc says."""

    def __init__(self, store: Store, key: str | None):
        self.store = store
        self.moved_to = os.path.join(store.records, f"{key}-d") if key else None
        self.names_file = f"{self.moved_to}.names" if key else None
        self.earlier = self._earlier() if key else set()
        self.recording = False  # the record directory exists (made at the first real delete)

    def _earlier(self) -> set[str]:
        names = set()
        try:
            with open(self.names_file) as f:
                names.update(f.read().split())
        except (FileNotFoundError, NotADirectoryError):
            pass
        try:
            names.update(os.listdir(self.moved_to))  # an attempt killed mid-batch
            self.recording = True
        except (FileNotFoundError, NotADirectoryError):
            pass
        return names

    def run(self, names: list[str], result: BatchResult) -> None:
        for name in names:
            try:
                (result.deleted if self._delete(name) else result.missing).append(name)
            except OSError as err:
                result.failed[name] = err.strerror or str(err)
        if self.recording:
            self._finish()

    def _delete(self, name: str) -> bool:
        path = self.store._path(name)
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                return False  # a directory or symlink is not an item: leave it alone
            if self.moved_to and self._record_ready():
                os.rename(path, os.path.join(self.moved_to, name))
            else:
                os.unlink(path)
        except FileNotFoundError:
            return name in self.earlier  # deleted by an earlier attempt of this batch
        return True

    def _record_ready(self) -> bool:
        if not self.recording:
            try:
                os.makedirs(self.moved_to, 0o755, exist_ok=True)
                self.recording = True
            except OSError:  # a full disk: delete plainly (the module doc says what that costs)
                self.moved_to = None
        return self.recording

    def _finish(self) -> None:
        """Write the names of every item this batch deleted, then free their space."""
        try:
            done = sorted(self.earlier | set(os.listdir(self.moved_to)))
            temp = f"{self.names_file}.{os.getpid()}.{uuid.uuid4().hex}"
            with open(temp, "w") as f:
                f.write("\n".join(done))
            os.rename(temp, self.names_file)
        except OSError:
            pass  # no record: only a re-send of this very batch could miss a count
        shutil.rmtree(self.moved_to, ignore_errors=True)


class _LinkSource:
    """A temporary file holding the item content; new items are hard links to it."""

    def __init__(self, root: str):
        self.root = root
        self.path: str | None = None
        self.hardlinks = True
        self.broken = False  # the file to link to could not be made

    def __enter__(self) -> _LinkSource:
        return self  # the temporary file is made by the first link: none for a no-op batch

    def __exit__(self, *exc) -> None:
        self._drop_temp()

    def made(self, st: os.stat_result) -> bool:
        """Whether the existing file ``st`` was made by this source (only records know)."""
        return False

    def link_to(self, target: str) -> None:
        if self.hardlinks and self.path is None:
            try:
                self._new_temp()
            except OSError:
                self.broken = True
                raise
        if self.hardlinks:
            try:
                os.link(self.path, target)
                return
            except FileExistsError:
                raise
            except OSError as err:
                if err.errno == errno.EMLINK:  # too many links to one inode: start a new one
                    self._drop_temp()
                    self._new_temp()
                    os.link(self.path, target)
                    return
                if err.errno not in _NO_HARDLINKS:
                    raise
                self.hardlinks = False
        _write_new(target)  # no hard links here: the item itself, written and synced

    def _new_temp(self) -> None:
        path = os.path.join(self.root, f"{TEMP_PREFIX}{HOST}-{os.getpid()}-{uuid.uuid4().hex}")
        _write_new(path)
        self.path = path

    def _drop_temp(self) -> None:
        if self.path:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.path = None


class _RecordSource(_LinkSource):
    """The link source of a keyed batch: ``.sto-idem/<key>-c<n>``, kept after the batch (the
    sweep removes it after RECORD_SECONDS); files of earlier attempts are found by name."""

    def __init__(self, records: str, key: str):
        super().__init__(records)
        self.key = key
        self.inodes: set[tuple[int, int]] = set()
        self.count = 0

    def __enter__(self) -> _RecordSource:
        while True:  # the files of earlier attempts of this batch: <key>-c0, <key>-c1, ...
            try:
                st = os.lstat(self._numbered(self.count))
            except (FileNotFoundError, NotADirectoryError):
                return self
            self.inodes.add((st.st_dev, st.st_ino))
            self.count += 1

    def __exit__(self, *exc) -> None:
        self.path = None  # kept: the record a re-sent batch needs

    def made(self, st: os.stat_result) -> bool:
        return (st.st_dev, st.st_ino) in self.inodes

    def _numbered(self, n: int) -> str:
        return os.path.join(self.root, f"{self.key}-c{n}")

    def _new_temp(self) -> None:
        os.makedirs(self.root, 0o755, exist_ok=True)
        # a fresh file per attempt (O_EXCL): never add links to a file another attempt holds
        while True:
            path = self._numbered(self.count)
            self.count += 1
            try:
                st = _write_new(path)
            except FileExistsError:
                continue  # a concurrent attempt of the same batch took this number
            self.inodes.add((st.st_dev, st.st_ino))
            self.path = path
            return

    def _drop_temp(self) -> None:
        self.path = None  # EMLINK roll-over: the full file stays as part of the record


def _write_new(path: str) -> os.stat_result:
    """Create ``path`` (it must not exist) holding CONTENT, synced to disk; on any failure
    nothing is left behind (no empty item, no leaked temporary file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, CONTENT)
        os.fsync(fd)
        return os.fstat(fd)
    except BaseException:
        os.close(fd)
        fd = None
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    finally:
        if fd is not None:
            os.close(fd)


def _fsync_dir(path: str) -> None:
    """Make the directory's new and removed names durable (one call for a whole batch)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _older_than(entry: os.DirEntry, now: float, age: float) -> bool:
    try:
        return now - entry.stat(follow_symlinks=False).st_mtime > age
    except OSError:
        return False


def _remove(entry: os.DirEntry) -> int:
    """Remove a file or a record directory; 1 if removed, 0 if another replica got there first."""
    try:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
        return 1
    except OSError:
        return 0


def _remove_if_orphaned(entry: os.DirEntry) -> bool:
    """Remove ``entry`` (a temporary file) if the process of this host that made it is gone."""
    match = _TEMP_NAME.match(entry.name)
    if not match or match["host"] != HOST or _alive(int(match["pid"])):
        return False
    try:
        os.unlink(entry.path)
        return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True
