"""The application API's only way to the storage tier: one pooled HTTP session, bounded calls.

- One ``requests.Session`` per process (created lazily, so server workers never share the
  sockets of their parent) with a connection pool of ``pool_size`` keep-alive connections.
- Every call has a connect timeout, a read timeout (per wait for data), and starts only while
  the request's total ``Deadline`` lasts; the answer is read up to ``max_answer`` bytes.
- Retries only where safe: a failed *connection* (nothing was sent) is retried by urllib3 for
  every method; a connection dropped before any answer (a pooled keep-alive connection the
  storage closed as we reused it, a storage worker killed mid-batch) is sent again by
  ``_call``, up to ``RESENDS`` times: ``GET`` changes nothing, and each batch carries an
  ``Idempotency-Key``, so the storage reports what an earlier attempt of it did. Never after a
  read timeout (that would stretch the wait beyond what the 504 says).
- Failures become ``StorageError`` (an ``ApiError``) with a JSON-ready status: 503
  ``storage_unreachable`` (refused, DNS, connect timeout), 504 ``storage_timeout`` (no answer
  in time), 502 ``storage_bad_response`` (broken connection, non-200, not JSON, unexpected
  JSON, too large). Their public message names no address and no exception text; the details
  go to the log with the request id (``detail``).
"""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from http.client import RemoteDisconnected
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from twotier_service.jsonapi import ApiError, request_id

#: times a call is sent again after its connection dropped before any answer
RESENDS = 2
_DROPPED = (ConnectionResetError, BrokenPipeError, RemoteDisconnected)


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


class StorageClient:
    def __init__(self, base_url: str, *, connect_timeout: float = 1.0, read_timeout: float = 10.0,
                 retries: int = 2, pool_size: int = 8, max_answer: int = 32 * 1024 * 1024):
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.retries = retries
        self.pool_size = pool_size
        self.max_answer = max_answer
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
        # urllib3 retries failed connections only (nothing sent); _call re-sends dropped ones
        retry = Retry(total=None, connect=self.retries, read=0, status=0, other=0, redirect=0,
                      backoff_factor=0.2, raise_on_status=False, raise_on_redirect=False)
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self.pool_size, max_retries=retry)
        session = requests.Session()
        session.trust_env = False  # no proxy from the environment between the two tiers
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["User-Agent"] = "app_api"
        return session

    def _call(self, method: str, path: str, deadline: Deadline | None = None, **kwargs) -> Any:
        what = f"{method} {path}"
        deadline = deadline or Deadline(3600.0)
        headers = {**kwargs.pop("headers", {}), "X-Request-Id": request_id()}
        for attempt in range(RESENDS + 1):
            remaining = deadline.remaining()
            if remaining <= 0:
                err = self._past_deadline(what, deadline)
                err.sent = attempt > 0
                raise err
            timeout = (min(self.timeout[0], remaining), min(self.timeout[1], remaining))
            try:
                resp = self.session.request(method, self.base_url + path, timeout=timeout,
                                            allow_redirects=False, stream=True, headers=headers,
                                            **kwargs)
                with resp:
                    return self._answer(resp, what)
            except StorageError as err:
                err.detail += f" (from {self.base_url})"
                raise
            except requests.RequestException as exc:
                if _dropped(exc) and attempt < RESENDS:
                    continue  # dropped before any answer: safe to send again (see the module doc)
                err = self._classify(exc, what, deadline)
                err.sent = err.sent or attempt > 0
                raise err from None

    def _answer(self, resp: requests.Response, what: str) -> Any:
        if resp.status_code != 200:
            raise _bad(what, f"HTTP {resp.status_code}", next(resp.iter_content(200), b""))
        declared = resp.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_answer:
            raise _bad(what, f"an answer of {declared} bytes (the most read is {self.max_answer})")
        data = bytearray()
        for chunk in resp.iter_content(64 * 1024):
            data += chunk
            if len(data) > self.max_answer:
                raise _bad(what, f"an answer over {self.max_answer} bytes")
        try:
            return json.loads(data)
        except ValueError:
            raise _bad(what, "not JSON", bytes(data[:200])) from None

    def _past_deadline(self, what: str, deadline: Deadline) -> StorageError:
        return StorageError(504, "storage_timeout", f"the storage tier did not finish in time: "
                            f"gave up after {deadline.elapsed():.1f} s (API_DEADLINE="
                            f"{deadline.seconds:g} s)", detail=f"{what} to {self.base_url}")

    def _classify(self, exc: requests.RequestException, what: str, deadline: Deadline) -> StorageError:
        detail = f"{what} to {self.base_url}: {type(exc).__name__}: {exc}"[:500]
        if deadline.remaining() <= 0:
            return self._past_deadline(what, deadline)
        if isinstance(exc, requests.ConnectTimeout) or (
                isinstance(exc, requests.ConnectionError) and _never_connected(exc)):
            err = StorageError(503, "storage_unreachable", "cannot connect to the storage tier",
                               detail=detail)
            err.sent = False
            return err
        if isinstance(exc, requests.ReadTimeout) or "timed out" in str(exc):
            return StorageError(504, "storage_timeout", f"the storage tier did not answer within "
                                f"{self.timeout[1]:g} s (API_READ_TIMEOUT)", detail=detail)
        return StorageError(502, "storage_bad_response", "the connection to the storage tier "
                            "failed", detail=detail)


def _chain(exc: BaseException):
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


def _never_connected(exc: BaseException) -> bool:
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

    return any(isinstance(e, (NewConnectionError, ConnectTimeoutError)) for e in _chain(exc))


def _dropped(exc: BaseException) -> bool:
    """The connection was closed before any answer (not a timeout, not a refusal)."""
    return isinstance(exc, requests.ConnectionError) and not _never_connected(exc) and any(
        isinstance(e, _DROPPED) for e in _chain(exc))


def _bad(what: str, problem: str, sample: bytes = b"") -> StorageError:
    detail = f"{what}: {problem}" + (f": {sample[:200]!r}" if sample else "")
    return StorageError(502, "storage_bad_response", f"the storage tier answered {what} "
                        f"unexpectedly ({problem.split(':')[0]})", detail=detail)
