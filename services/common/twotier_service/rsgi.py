"""A WSGI app (Flask) served through granian's RSGI interface, with the request body read
*before* a thread is given to the app.

Why not granian's own WSGI interface: there ``wsgi.input`` reads the body from inside an app
thread, so a client that sends its body one byte every few seconds holds one of the few app
threads for as long as it likes; ten such clients stop a service. Here the body is read on the
event loop (thousands of slow clients cost memory only), bounded in size (``max_body``: larger
bodies get a JSON 413 without being read) and in time (``body_timeout``: a JSON 408), and only a
complete request reaches the app's bounded thread pool (``threads``).

The response is collected in full (our answers are small JSON documents) and sent with one
``response_bytes``, which also keeps pipelined requests in order (granian/hyper answers them one
after the other on their connection).

The path is percent-decoded once, by granian: ``scope.path`` is already decoded, so it goes to
the app as it is (WSGI's ``PATH_INFO``: those bytes as latin-1). Decoding it again would turn
``/%2563lear`` into ``/clear``: a path that no rule in front of the service (an ingress, a WAF)
saw. The access log shows the same path percent-encoded again, so what it logs is what ran.

Bodies: ``Content-Length`` bodies are read at once, chunked ones counted while read; either way
the app gets the de-chunked bytes with their length (and ``wsgi.input_terminated``), never a
``Transfer-Encoding`` header it would try to honour again. Requests with a large body (over
``INLINE_BODY``) take one of ``LARGE_AT_ONCE`` places per worker for their whole life (read,
parse, answer), so memory stays bounded however many clients send large bodies at once.

Which requests run on the event loop itself (no thread hop) is the app's choice
(``SERVE_ON_LOOP``: cheap, bodiless or small requests such as the probes); everything else,
listings and batches included, runs on the app's threads so the loop keeps answering probes.

Access log: one line per request on stdout (``AccessLog``), written here rather than by
granian so that it shows the request target (query string as sent, control characters escaped:
a client cannot forge log lines) and the body size::

    127.0.0.1 [01/Dec/2026:14:30:52 +0000] "GET /items?x HTTP/1.1" 200 13 1.2ms
"""
from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

_BASE_ENVIRON = {
    "SCRIPT_NAME": "",
    "GATEWAY_INTERFACE": "CGI/1.1",
    "SERVER_SOFTWARE": "granian",
    "wsgi.version": (1, 0),
    "wsgi.errors": sys.stderr,
    "wsgi.multithread": True,
    "wsgi.multiprocess": True,
    "wsgi.run_once": False,
}
#: bodies larger than this get a 413 unless the app sets MAX_CONTENT_LENGTH
DEFAULT_MAX_BODY = 1024 * 1024
#: requests with bodies up to this size may run on the event loop (see ``on_loop``)
INLINE_BODY = 16 * 1024
#: requests with a larger body that one worker holds in memory at once; more wait their turn
LARGE_AT_ONCE = 4
#: what the access log leaves unescaped in a path (RFC 3986's pchar and "/")
_PATH_SAFE = "/!$&'()*+,;=:@-._~"
_PROTOCOLS = {"1": "HTTP/1.0", "1.0": "HTTP/1.0", "1.1": "HTTP/1.1", "2": "HTTP/2"}


class BodyTooLarge(Exception):
    pass


class AccessLog:
    """The access log: one line per request on ``stream`` (stdout), written in batches. The
    first line of a batch schedules a write ``FLUSH_AFTER`` seconds later on the event loop, so
    under load it is one write per batch instead of one per request, and a line appears within
    50 ms. Used from the event loop's thread only."""

    FLUSH_AFTER = 0.05

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stdout
        self.lines: list[str] = []
        self.pending = None

    def write(self, line: str) -> None:
        self.lines.append(line)
        if self.pending is None:
            try:
                self.pending = asyncio.get_running_loop().call_later(self.FLUSH_AFTER, self.flush)
            except RuntimeError:  # no loop (a test calling the bridge directly): write now
                self.flush()

    def flush(self) -> None:
        self.pending = None
        if not self.lines:
            return
        text = "\n".join(self.lines) + "\n"
        self.lines.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stdout closed: the log is lost, the requests are not


_UNPRINTABLE = {c: f"\\x{c:02x}" for c in (*range(32), 127)} | {ord('"'): "\\x22"}


_clock = [0, ""]


def _now() -> str:
    """The access log's timestamp, formatted once per second (not once per request)."""
    second = int(time.time())
    if second != _clock[0]:
        _clock[:] = second, time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(second))
    return _clock[1]


def _json_error(status: int, error: str, message: str, headers=()) -> tuple[int, list, bytes]:
    body = json.dumps({"error": error, "message": message, "status": status},
                      sort_keys=True, separators=(",", ":")).encode() + b"\n"
    return status, [("content-type", "application/json"), ("content-length", str(len(body))),
                    *headers], body


class RSGIToWSGI:
    def __init__(self, app, *, threads: int, max_body: int, body_timeout: float,
                 access_log: AccessLog | None = None, on_loop=()):
        self.app = app
        # (METHOD, path prefix) pairs the app marks as cheap (a few filesystem calls, a constant
        # answer): with a small body they run on the event loop itself, measured 1.5x the
        # throughput of the thread hop. Everything else (listings, batches) uses the threads,
        # so it never holds up this worker's loop and its probes.
        self.on_loop = tuple(on_loop)
        self.large = asyncio.Semaphore(LARGE_AT_ONCE)
        self.access_log = access_log
        self.max_body = max_body
        self.body_timeout = body_timeout
        # threads=0: the app runs on the event loop itself (no thread hop; one request at a
        # time per worker, fine for an app that never waits on the network)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="app") if threads else None

    def __rsgi_del__(self, loop) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        if self.access_log is not None:
            self.access_log.flush()

    async def __rsgi__(self, scope, protocol) -> None:
        if scope.proto != "http":  # websockets: not ours
            protocol.close(403)
            return
        started = time.perf_counter()
        try:
            status, headers, body = await self._handle(scope, protocol)
        except Exception:
            logging.getLogger("twotier.rsgi").exception("the request failed in the bridge")
            status, headers, body = _json_error(500, "internal_error",
                                                "unexpected server error (see the server log)")
        protocol.response_bytes(status, headers, body)
        if self.access_log is not None:
            self._log(scope, status, len(body), time.perf_counter() - started)

    async def _handle(self, scope, protocol):
        length = scope.headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return _json_error(400, "bad_request", f"invalid Content-Length {length[:40]!r}")
            if declared > self.max_body:
                return _json_error(413, "request_entity_too_large",
                                   f"the body may be at most {self.max_body} bytes, got {declared}")
        chunked = "transfer-encoding" in scope.headers
        if length in (None, "0") and not chunked:
            return await self._run(self._environ(scope, b""))  # most requests: no body, no timer
        if chunked or declared > INLINE_BODY:
            try:
                async with asyncio.timeout(self.body_timeout):
                    await self.large.acquire()
            except TimeoutError:
                return _json_error(503, "busy", "too many large requests at once: retry shortly",
                                   headers=[("retry-after", "1")])
            try:
                return await self._read_and_run(scope, protocol, chunked)
            finally:
                self.large.release()
        return await self._read_and_run(scope, protocol, chunked)

    async def _read_and_run(self, scope, protocol, chunked: bool):
        try:
            async with asyncio.timeout(self.body_timeout):  # a timer, no extra task
                # chunked: counted while read; declared (within max_body): read at once
                body = await (self._read_body(protocol) if chunked else protocol())
        except TimeoutError:
            return _json_error(408, "request_timeout", f"the request body did not arrive within "
                               f"{self.body_timeout:g} s")
        except BodyTooLarge:
            return _json_error(413, "request_entity_too_large",
                               f"the body may be at most {self.max_body} bytes")
        return await self._run(self._environ(scope, body), len(body))

    async def _run(self, environ: dict, size: int = 0):
        if self.pool is None or (size <= INLINE_BODY and self._cheap(environ)):
            return self._call(environ)
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._call, environ)

    def _cheap(self, environ: dict) -> bool:
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        return any(method == m and path.startswith(p) for m, p in self.on_loop)

    def _log(self, scope, status: int, size: int, seconds: float) -> None:
        target = quote(scope.path, safe=_PATH_SAFE) + (f"?{scope.query_string}" if scope.query_string else "")
        client = scope.client.rpartition(":")[0]
        version = _PROTOCOLS.get(scope.http_version, "HTTP/1.1")
        self.access_log.write(f'{client} [{_now()}] "{scope.method} {target.translate(_UNPRINTABLE)} '
                              f'{version}" {status} {size} {seconds * 1000:.1f}ms')

    async def _read_body(self, protocol) -> bytes:
        chunks, size = [], 0
        async for chunk in protocol:
            size += len(chunk)
            if size > self.max_body:
                raise BodyTooLarge()
            chunks.append(chunk)
        return b"".join(chunks)

    def _environ(self, scope, body: bytes) -> dict:
        server_host, _, server_port = scope.server.rpartition(":")
        client_host, _, client_port = scope.client.rpartition(":")
        environ = {
            **_BASE_ENVIRON,
            "REQUEST_METHOD": scope.method,
            # WSGI: the percent-decoded path (granian decoded it, once) as latin-1 "bytes in a str"
            "PATH_INFO": scope.path.encode("utf-8", "surrogateescape").decode("latin-1"),
            "QUERY_STRING": scope.query_string,
            "SERVER_NAME": server_host,
            "SERVER_PORT": server_port,
            "SERVER_PROTOCOL": _PROTOCOLS.get(scope.http_version, "HTTP/1.1"),
            "REMOTE_ADDR": client_host,
            "REMOTE_PORT": client_port,
            "wsgi.url_scheme": scope.scheme,
            "wsgi.input": io.BytesIO(body),
            # the whole body, de-chunked: its length is known and nothing follows it
            "wsgi.input_terminated": True,
            "CONTENT_LENGTH": str(len(body)) if body or "content-length" in scope.headers else "",
        }
        for key in scope.headers:
            if key in ("content-length", "transfer-encoding"):
                continue
            value = ",".join(scope.headers.get_all(key))
            if key == "content-type":
                environ["CONTENT_TYPE"] = value
            else:
                environ["HTTP_" + key.upper().replace("-", "_")] = value
        return environ

    def _call(self, environ: dict):
        started = {}

        def start_response(status, headers, exc_info=None):
            started["status"], started["headers"] = status, headers
            return lambda data: chunks.append(data)

        chunks: list[bytes] = []
        result = self.app(environ, start_response)
        try:
            for data in result:
                if data:
                    chunks.append(data)
        finally:
            close = getattr(result, "close", None)
            if close:
                close()
        return int(started["status"].split(" ", 1)[0]), started["headers"], b"".join(chunks)


def app_from_env() -> RSGIToWSGI:
    """The factory each granian worker calls: the service named by the master (serving.py)."""
    import importlib
    import os

    from .serving import PACKAGE_ENV, PREFIX_ENV, env_int

    package = importlib.import_module(os.environ[PACKAGE_ENV])
    prefix = os.environ[PREFIX_ENV]
    app = package.create_app()
    # Everything imported so far lives as long as the worker: keep it out of the collector's
    # full passes, which otherwise walk every Flask/Werkzeug object and stall requests (p99).
    gc.freeze()
    return RSGIToWSGI(
        app,
        threads=env_int(os.environ, f"{prefix}_THREADS", 4, 0),
        max_body=app.config.get("MAX_CONTENT_LENGTH") or DEFAULT_MAX_BODY,
        body_timeout=env_int(os.environ, f"{prefix}_TIMEOUT", 10, 1, 60),
        access_log=AccessLog(),
        on_loop=app.config.get("SERVE_ON_LOOP", ()),
    )
