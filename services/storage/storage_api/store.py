"""Items as files in one directory: list, create and delete, atomic and safe for many processes.

Several processes (gunicorn workers, replicas sharing a volume) may work on the same directory
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

Temporary files left by a crashed process are removed at start-up once they are older than
``STALE_TEMP_SECONDS``.
"""
from __future__ import annotations

import errno
import os
import stat
import time
import uuid
from dataclasses import dataclass, field

from .names import is_valid_name

CONTENT = b"x"
TEMP_PREFIX = ".sto-tmp-"
STALE_TEMP_SECONDS = 600
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

    # -- reading -------------------------------------------------------------------------
    def list(self) -> list[str]:
        names = []
        with os.scandir(self.root) as entries:
            for entry in entries:
                if is_valid_name(entry.name) and entry.is_file(follow_symlinks=False):
                    names.append(entry.name)
        names.sort()
        return names

    def is_writable(self) -> bool:
        return os.path.isdir(self.root) and os.access(self.root, os.W_OK | os.X_OK)

    # -- writing -------------------------------------------------------------------------
    def create(self, name: str) -> bool:
        """Create one item; True if this call created it, False if it already existed."""
        with _LinkSource(self.root) as source:
            return self._create_one(source, name)

    def delete(self, name: str) -> bool:
        """Delete one item; True if this call deleted it, False if there was no such item."""
        path = self._path(name)
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                return False  # a directory or symlink is not an item: leave it alone
            os.unlink(path)
        except FileNotFoundError:
            return False
        return True

    def batch(self, create: list[str] = (), delete: list[str] = ()) -> BatchResult:
        """Create then delete many items; per-item outcomes, OS errors reported per item."""
        result = BatchResult()
        if create:
            with _LinkSource(self.root) as source:
                for name in create:
                    try:
                        (result.created if self._create_one(source, name) else result.existing).append(name)
                    except NotAnItem:
                        result.failed[name] = "exists and is not an item (directory or link)"
                    except OSError as err:
                        result.failed[name] = err.strerror or str(err)
        for name in delete:
            try:
                (result.deleted if self.delete(name) else result.missing).append(name)
            except OSError as err:
                result.failed[name] = err.strerror or str(err)
        return result

    def remove_stale_temp_files(self, max_age: float = STALE_TEMP_SECONDS) -> int:
        removed = 0
        now = time.time()
        with os.scandir(self.root) as entries:
            for entry in entries:
                if not entry.name.startswith(TEMP_PREFIX):
                    continue
                try:
                    if now - entry.stat(follow_symlinks=False).st_mtime > max_age:
                        os.unlink(entry.path)
                        removed += 1
                except OSError:
                    pass  # another replica got there first, or it is not ours to remove
        return removed

    # -- internals -----------------------------------------------------------------------
    def _path(self, name: str) -> str:
        if not is_valid_name(name):  # callers validate; this is the last line of defence
            raise ValueError(f"invalid item name {name!r}")
        return os.path.join(self.root, name)

    def _create_one(self, source: _LinkSource, name: str) -> bool:
        path = self._path(name)
        try:
            source.link_to(path)
            return True
        except FileExistsError:
            try:
                if stat.S_ISREG(os.lstat(path).st_mode):
                    return False
            except FileNotFoundError:
                # deleted by someone else right after our attempt: try once more
                return self._create_one_retry(source, path)
            raise NotAnItem(name) from None

    @staticmethod
    def _create_one_retry(source: _LinkSource, path: str) -> bool:
        try:
            source.link_to(path)
            return True
        except FileExistsError:
            return False


class _LinkSource:
    """A temporary file holding the item content; new items are hard links to it."""

    def __init__(self, root: str):
        self.root = root
        self.path: str | None = None
        self.hardlinks = True

    def __enter__(self) -> _LinkSource:
        self._new_temp()
        return self

    def __exit__(self, *exc) -> None:
        self._drop_temp()

    def link_to(self, target: str) -> None:
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
        path = os.path.join(self.root, f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}")
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
