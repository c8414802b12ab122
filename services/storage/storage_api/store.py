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

Idempotent batches: a batch sent with a key (``Idempotency-Key``; the application API sends one
per batch) links its new items to a file named after the key, ``.sto-idem/<key>-<n>``, and keeps
that file ``IDEMPOTENCY_SECONDS`` after the batch. When the same batch is sent again (its answer
was lost: a dropped connection, a worker killed mid-batch), an item that already exists *and is a
link to that file* was created by the earlier attempt of this very batch, so it is reported as
``created`` again, not as ``existing``: the caller's count stays exact. Its deletes move each
item into the directory ``.sto-idem/<key>.deleted/`` (one atomic ``rename``: of two concurrent
deleters exactly one moves it) instead of unlinking it; a re-sent batch finds an item it can no
longer see there and reports it as ``deleted`` again, not as ``missing``. The records live in
their own directory so that listing the items never walks them, and a batch finds its earlier
attempts by name (``<key>-0``, ``<key>-1``, ...), not by a scan.

Temporary files of crashed processes are swept while the service runs, not only at start-up:
a ``.sto-tmp-<host>-<pid>-...`` file whose process (same host) is gone is removed by the next
directory scan (every list and every worker start); any temporary file older than
``STALE_TEMP_SECONDS`` (another replica's, say) and any idempotency record older than
``IDEMPOTENCY_SECONDS`` are removed by a sweep that runs at most every ``SWEEP_INTERVAL``
seconds, triggered by requests.
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
DELETED_SUFFIX = ".deleted"
#: idempotency records of earlier versions, kept in the items' directory itself: swept
LEGACY_IDEM_PREFIX = ".sto-idem-"
STALE_TEMP_SECONDS = 600
IDEMPOTENCY_SECONDS = 300
SWEEP_INTERVAL = 30.0
#: an idempotency key: what the application API sends (a uuid4 hex) and similar tokens
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{8,64}", re.ASCII)
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
            return self._create_one(source, name)

    def delete(self, name: str, into: str | None = None) -> bool:
        """Delete one item; True if this call deleted it, False if there was no such item.
        With ``into`` (a keyed batch's record directory) the item is moved there instead, and
        one found there already counts as deleted by this batch (an earlier attempt of it)."""
        path = self._path(name)
        record = os.path.join(into, name) if into else None
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                return False  # a directory or symlink is not an item: leave it alone
            if record:
                os.rename(path, record)
            else:
                os.unlink(path)
        except FileNotFoundError:
            return record is not None and os.path.lexists(record)
        return True

    def batch(self, create: list[str] = (), delete: list[str] = (), key: str | None = None) -> BatchResult:
        """Create then delete many items; per-item outcomes, OS errors reported per item.
        With ``key`` (see the module doc) a re-sent batch reports what its first attempt created."""
        if key is not None and not KEY_PATTERN.fullmatch(key):
            raise ValueError(f"invalid idempotency key {key!r}")
        self.maybe_sweep()
        result = BatchResult()
        if create:
            source = _IdempotentSource(self.root, key) if key else _LinkSource(self.root)
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
        deleted_dir = self._deleted_dir(key) if key and delete else None
        for name in delete:
            try:
                (result.deleted if self.delete(name, deleted_dir) else result.missing).append(name)
            except OSError as err:
                result.failed[name] = err.strerror or str(err)
        return result

    def _deleted_dir(self, key: str) -> str:
        path = os.path.join(self.root, IDEM_DIR, f"{key}{DELETED_SUFFIX}")
        os.makedirs(path, 0o755, exist_ok=True)
        return path

    def remove_stale_temp_files(self, max_age: float = STALE_TEMP_SECONDS,
                                idem_max_age: float = IDEMPOTENCY_SECONDS) -> int:
        """Remove temporary files of dead processes of this host, temporary files older than
        ``max_age`` and idempotency records older than ``idem_max_age``; the number removed."""
        removed = 0
        now = time.time()
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.name.startswith(TEMP_PREFIX):
                    if _remove_if_orphaned(entry):
                        removed += 1
                    elif _older_than(entry, now, max_age):
                        removed += _remove(entry)
                elif entry.name.startswith(LEGACY_IDEM_PREFIX) and _older_than(entry, now, idem_max_age):
                    removed += _remove(entry)
        try:
            with os.scandir(os.path.join(self.root, IDEM_DIR)) as entries:
                for entry in entries:
                    if _older_than(entry, now, idem_max_age):
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
        """Whether the existing file ``st`` was made by this source (only idempotent ones know)."""
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
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, CONTENT)
        finally:
            os.close(fd)

    def _new_temp(self) -> None:
        path = os.path.join(self.root, f"{TEMP_PREFIX}{HOST}-{os.getpid()}-{uuid.uuid4().hex}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, CONTENT)
        finally:
            os.close(fd)
        self.path = path

    def _drop_temp(self) -> None:
        if self.path:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.path = None


class _IdempotentSource(_LinkSource):
    """The link source of a keyed batch: ``.sto-idem/<key>-<n>``, one per attempt, kept after
    the batch (the sweep removes them after IDEMPOTENCY_SECONDS)."""

    def __init__(self, root: str, key: str):
        super().__init__(root)
        self.key = key
        self.dir = os.path.join(root, IDEM_DIR)
        self.inodes: set[tuple[int, int]] = set()
        self.count = 0

    def __enter__(self) -> _IdempotentSource:
        while True:  # the files of earlier attempts of this batch: <key>-0, <key>-1, ...
            try:
                st = os.lstat(os.path.join(self.dir, f"{self.key}-{self.count}"))
            except (FileNotFoundError, NotADirectoryError):
                return self
            self.inodes.add((st.st_dev, st.st_ino))
            self.count += 1

    def __exit__(self, *exc) -> None:
        self.path = None  # kept: the record a re-sent batch needs

    def made(self, st: os.stat_result) -> bool:
        return (st.st_dev, st.st_ino) in self.inodes

    def _new_temp(self) -> None:
        os.makedirs(self.dir, 0o755, exist_ok=True)
        # a fresh file per attempt (O_EXCL): never append links to a file a dead worker held
        while True:
            path = os.path.join(self.dir, f"{self.key}-{self.count}")
            self.count += 1
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue  # a concurrent attempt of the same batch took this number
            try:
                os.write(fd, CONTENT)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            self.inodes.add((st.st_dev, st.st_ino))
            self.path = path
            return

    def _drop_temp(self) -> None:
        self.path = None  # EMLINK roll-over: the full file stays as part of the record


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
