"""The application API's only way to the storage tier: one pooled HTTP session, bounded calls.

- One ``requests.Session`` per process (created lazily, so server workers never share the
  sockets of their parent) with a connection pool of ``pool_size`` keep-alive connections.
- Every call has a connect timeout, a read timeout (per wait for data) and the request's total
  ``Deadline``: a watchdog thread shuts the connection's socket when the deadline passes, so
  a storage tier that dribbles its answer a byte at a time cannot hold a request past it.
- Retries only where safe: a failed *connection* (nothing was sent) is retried for every
  method; a connection dropped before any answer for ``GET`` and for ``POST /items:batch``
  (idempotent: create-if-missing, delete-if-present; each batch carries an
  ``Idempotency-Key``, so the storage reports what an earlier attempt of it created or deleted) - typically
  a pooled keep-alive connection the storage server closed just as we reused it, or a storage
  worker killed mid-batch. Never after a read timeout or past the deadline (that would
  stretch the wait beyond what the 504's message says).
- Failures become ``StorageError`` (an ``ApiError``) with a JSON-ready status:
  503 ``storage_unreachable`` (refused, DNS, connect timeout), 504 ``storage_timeout`` (no
  answer within the read timeout), 502 ``storage_bad_response`` (broken connection, non-200,
  not JSON, unexpected JSON).
"""
from __future__ import annotations

import heapq
import http.client
import itertools
import os
import socket
import threading
import time
import uuid
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError, ProtocolError, ReadTimeoutError
from urllib3.util.retry import Retry

from twotier_service.jsonapi import ApiError


class StorageError(ApiError):
    """The storage tier could not be used; ``status`` is 502, 503 or 504. ``sent`` is False
    when the request certainly never reached the storage (no connection, or the deadline had
    passed before sending): nothing was done."""

    sent = True


class Deadline:
    """The total time one request to the application API may spend on the storage tier."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = time.monotonic()
        self.end = self.start + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def expired(self) -> bool:
        return time.monotonic() >= self.end


#: the deadline of the call in progress on this thread (read by the connection guard below)
_current = threading.local()


class StorageClient:
    def __init__(self, base_url: str, *, connect_timeout: float = 1.0, read_timeout: float = 10.0,
                 retries: int = 2, pool_size: int = 8):
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.retries = retries
        self.pool_size = pool_size
        self._session: requests.Session | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    # -- the storage API's operations --------------------------------------------------------
    def list_items(self, deadline: Deadline | None = None) -> list[str]:
        data = self._call("GET", "/items", deadline)
        items = data.get("items") if isinstance(data, dict) else None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise _bad("GET /items", 'the body has no "items" list of strings')
        return items

    def batch(self, *, create: list[str] = (), delete: list[str] = (),
              deadline: Deadline | None = None) -> dict[str, Any]:
        body = {}
        if create:
            body["create"] = list(create)
        if delete:
            body["delete"] = list(delete)
        # one key per batch, the same for every (re-)sending of it
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        data = self._call("POST", "/items:batch", deadline, json=body, headers=headers)
        if not isinstance(data, dict):
            raise _bad("POST /items:batch", "the body is not a JSON object")
        for key in ("created", "existing", "deleted", "missing"):
            value = data.get(key)
            if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
                raise _bad("POST /items:batch", f'"{key}" is not a list of strings')
        if not isinstance(data.get("failed"), dict):
            raise _bad("POST /items:batch", '"failed" is not an object')
        return data

    # -- plumbing ----------------------------------------------------------------------------
    @property
    def session(self) -> requests.Session:
        with self._lock:
            if self._session is None or self._pid != os.getpid():
                self._session = self._new_session()
                self._pid = os.getpid()
            return self._session

    def _new_session(self) -> requests.Session:
        # read=2: a connection dropped before any answer (a storage worker killed and replaced,
        # a keep-alive connection closed as we reused it) is sent again up to twice
        retry = _Retry(total=None, connect=self.retries, read=2, status=0, other=0, redirect=0,
                      allowed_methods=frozenset({"GET"}), backoff_factor=0.2,
                      raise_on_status=False, raise_on_redirect=False)
        adapter = _GuardedAdapter(pool_connections=1, pool_maxsize=self.pool_size, max_retries=retry)
        session = requests.Session()
        session.trust_env = False  # no proxy from the environment between the two tiers
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["User-Agent"] = "app_api"
        return session

    def _call(self, method: str, path: str, deadline: Deadline | None = None, **kwargs) -> Any:
        what = f"{method} {path}"
        deadline = deadline or Deadline(3600.0)
        remaining = deadline.remaining()
        if remaining <= 0:
            err = self._timeout(what, deadline)
            err.sent = False
            raise err
        timeout = (min(self.timeout[0], remaining), min(self.timeout[1], remaining))
        _current.deadline, _current.watches, _current.sent = deadline, [], False
        try:
            resp = self.session.request(method, self.base_url + path, timeout=timeout,
                                        allow_redirects=False, **kwargs)
        except requests.RequestException as exc:
            if deadline.expired():
                raise self._timeout(what, deadline) from None
            err = self._classify(exc, what, deadline)
            err.sent = err.sent or _current.sent  # an earlier attempt may have got through
            raise err from None
        finally:
            for entry in _current.watches:
                _watchdog.cancel(entry)
            _current.deadline, _current.watches = None, []
        if resp.status_code != 200:
            raise _bad(what, f"HTTP {resp.status_code}: {_snippet(resp.text)}")
        try:
            return resp.json()
        except ValueError:
            raise _bad(what, f"the body is not JSON: {_snippet(resp.text)}") from None

    def _timeout(self, what: str, deadline: Deadline) -> StorageError:
        return StorageError(504, "storage_timeout", f"the storage API at {self.base_url} did not "
                            f"finish answering {what} within this request's deadline: gave up "
                            f"after {deadline.elapsed():.1f} s (API_DEADLINE={deadline.seconds:g} s)")

    def _classify(self, exc: requests.RequestException, what: str,
                  deadline: Deadline | None = None) -> StorageError:
        chain = list(_causes(exc))
        if any(isinstance(e, (requests.ReadTimeout, ReadTimeoutError)) for e in chain):
            waited = f" (gave up after {deadline.elapsed():.1f} s)" if deadline else ""
            return StorageError(504, "storage_timeout", f"the storage API at {self.base_url} did "
                                f"not answer {what} within {self.timeout[1]:g} s "
                                f"(API_READ_TIMEOUT){waited}")
        if any(isinstance(e, (requests.ConnectTimeout, ConnectTimeoutError, NewConnectionError))
               for e in chain):
            err = StorageError(503, "storage_unreachable", f"cannot connect to the storage API "
                               f"at {self.base_url}: {_reason(chain)}")
            err.sent = False
            return err
        return _bad(what, f"the connection failed: {_reason(chain)}")


class _Retry(Retry):
    """urllib3's Retry, plus: a POST whose connection was dropped before any answer (not a
    timeout) counts as retryable, like a GET."""

    def increment(self, method=None, url=None, response=None, error=None, _pool=None,
                  _stacktrace=None):
        deadline = getattr(_current, "deadline", None)
        if error is not None and not isinstance(error, (ConnectTimeoutError, NewConnectionError)):
            _current.sent = True  # this attempt reached the storage (the last may not)
        if isinstance(error, ReadTimeoutError) or (deadline is not None and deadline.expired()):
            # the wait was the read timeout (or the deadline): sending again would double it
            raise MaxRetryError(_pool, url, error or ReadTimeoutError(_pool, url, "deadline"))
        if method == "POST" and response is None and isinstance(error, ProtocolError) \
                and error.args and isinstance(error.args[-1], _DROPPED):
            method = "GET"  # urllib3 wraps the OS error: ProtocolError("Connection aborted.", err)
        return super().increment(method, url, response, error, _pool, _stacktrace)


_DROPPED = (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)


class _Watchdog:
    """One thread per process that shuts the sockets of calls whose deadline has passed: cheaper
    per call than a timer thread each (a lock and a heap push instead of a thread start)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._heap: list[list] = []  # [when (monotonic), sequence, connection or None]
        self._seq = itertools.count()
        self._cancelled = 0
        self._pid: int | None = None

    def watch(self, when: float, conn) -> list:
        with self._cond:
            if self._pid != os.getpid():  # none yet, or we are a forked child: start ours
                self._heap, self._cancelled, self._pid = [], 0, os.getpid()
                threading.Thread(target=self._run, name="storage-deadlines", daemon=True).start()
            entry = [when, next(self._seq), conn]
            heapq.heappush(self._heap, entry)
            if self._heap[0] is entry:
                self._cond.notify()
            return entry

    def cancel(self, entry: list) -> None:
        with self._cond:
            if entry[2] is not None:
                entry[2] = None
                self._cancelled += 1
                if self._cancelled > 256 and self._cancelled * 2 > len(self._heap):
                    self._heap = [e for e in self._heap if e[2] is not None]
                    heapq.heapify(self._heap)
                    self._cancelled = 0

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][2] is None:
                        heapq.heappop(self._heap)
                        self._cancelled -= 1
                    if not self._heap:
                        self._cond.wait()
                        continue
                    delay = self._heap[0][0] - time.monotonic()
                    if delay <= 0:
                        entry = heapq.heappop(self._heap)
                        conn, entry[2] = entry[2], None
                        break
                    self._cond.wait(delay)
            conn._expire()


_watchdog = _Watchdog()


class _DeadlineGuard:
    """Mixed into urllib3's connections: while an answer is awaited, the watchdog shuts the
    socket at the deadline of the call in progress on this thread (``_current``), which makes
    the blocked read return at once however slowly the storage tier dribbles bytes."""

    def getresponse(self, *args, **kwargs):
        deadline = getattr(_current, "deadline", None)
        if deadline is not None:
            _current.watches.append(_watchdog.watch(deadline.end, self))
        return super().getresponse(*args, **kwargs)

    def _expire(self) -> None:
        sock = getattr(self, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

class _GuardedHTTPConnection(_DeadlineGuard, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_DeadlineGuard, HTTPSConnection):
    pass


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool,
                                                   "https": _GuardedHTTPSPool}


def _bad(what: str, detail: str) -> StorageError:
    return StorageError(502, "storage_bad_response", f"the storage API answered {what} "
                        f"unexpectedly: {detail}")


def _causes(exc: BaseException):
    """``exc`` and everything it wraps (requests -> urllib3 MaxRetryError -> reason -> ...)."""
    seen, stack = set(), [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack.extend((getattr(e, "reason", None), e.__cause__, e.__context__))
        stack.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))


def _reason(chain: list[BaseException]) -> str:
    innermost = chain[-1]
    for e in chain:  # prefer the most specific OS-level message, e.g. "Connection refused"
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
    return str(innermost)[:200]


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return repr(text[:120] + ("..." if len(text) > 120 else ""))
