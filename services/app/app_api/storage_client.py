"""The application API's only way to the storage tier: one pooled HTTP session, bounded calls.

- One ``requests.Session`` per process (created lazily, so gunicorn workers never share the
  sockets of their parent) with a connection pool of ``pool_size`` keep-alive connections.
- Every call has a connect timeout and a read timeout.
- Retries only where safe: a failed *connection* (nothing was sent) is retried for every
  method; a failed *read* for ``GET``; ``POST /items:batch`` (idempotent: create-if-missing,
  delete-if-present) is re-sent once only when the connection was dropped before any answer -
  typically a pooled keep-alive connection the storage server closed just as we reused it -
  never after a read timeout (that would double the wait before the 504).
- Failures become ``StorageError`` (an ``ApiError``) with a JSON-ready status:
  503 ``storage_unreachable`` (refused, DNS, connect timeout), 504 ``storage_timeout`` (no
  answer within the read timeout), 502 ``storage_bad_response`` (broken connection, non-200,
  not JSON, unexpected JSON).
"""
from __future__ import annotations

import http.client
import os
import threading
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ProtocolError, ReadTimeoutError
from urllib3.util.retry import Retry

from twotier_service.jsonapi import ApiError


class StorageError(ApiError):
    """The storage tier could not be used; ``status`` is 502, 503 or 504."""


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
    def list_items(self) -> list[str]:
        data = self._call("GET", "/items")
        items = data.get("items") if isinstance(data, dict) else None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise _bad("GET /items", 'the body has no "items" list of strings')
        return items

    def batch(self, *, create: list[str] = (), delete: list[str] = ()) -> dict[str, Any]:
        body = {}
        if create:
            body["create"] = list(create)
        if delete:
            body["delete"] = list(delete)
        data = self._call("POST", "/items:batch", json=body)
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
        retry = _Retry(total=None, connect=self.retries, read=1, status=0, other=0, redirect=0,
                      allowed_methods=frozenset({"GET"}), backoff_factor=0.05,
                      raise_on_status=False, raise_on_redirect=False)
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self.pool_size, max_retries=retry)
        session = requests.Session()
        session.trust_env = False  # no proxy from the environment between the two tiers
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["User-Agent"] = "app_api"
        return session

    def _call(self, method: str, path: str, **kwargs) -> Any:
        what = f"{method} {path}"
        try:
            resp = self.session.request(method, self.base_url + path, timeout=self.timeout,
                                        allow_redirects=False, **kwargs)
        except requests.RequestException as exc:
            raise self._classify(exc, what) from None
        if resp.status_code != 200:
            raise _bad(what, f"HTTP {resp.status_code}: {_snippet(resp.text)}")
        try:
            return resp.json()
        except ValueError:
            raise _bad(what, f"the body is not JSON: {_snippet(resp.text)}") from None

    def _classify(self, exc: requests.RequestException, what: str) -> StorageError:
        chain = list(_causes(exc))
        if any(isinstance(e, (requests.ReadTimeout, ReadTimeoutError)) for e in chain):
            return StorageError(504, "storage_timeout", f"the storage API at {self.base_url} did "
                                f"not answer {what} within {self.timeout[1]:g} s")
        if any(isinstance(e, (requests.ConnectTimeout, ConnectTimeoutError, NewConnectionError))
               for e in chain):
            return StorageError(503, "storage_unreachable", f"cannot connect to the storage API "
                                f"at {self.base_url}: {_reason(chain)}")
        return _bad(what, f"the connection failed: {_reason(chain)}")


class _Retry(Retry):
    """urllib3's Retry, plus: a POST whose connection was dropped before any answer (not a
    timeout) counts as retryable, like a GET."""

    def increment(self, method=None, url=None, response=None, error=None, _pool=None,
                  _stacktrace=None):
        if method == "POST" and response is None and isinstance(error, ProtocolError) \
                and error.args and isinstance(error.args[-1], _DROPPED):
            method = "GET"  # urllib3 wraps the OS error: ProtocolError("Connection aborted.", err)
        return super().increment(method, url, response, error, _pool, _stacktrace)


_DROPPED = (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)


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
