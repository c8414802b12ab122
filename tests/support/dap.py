"""A small Debug Adapter Protocol client (the JSON protocol VS Code speaks to debugpy), enough to
attach to a dev server's debugpy, set breakpoints, wait for a stop, read variables and continue.

Wire format: each message is ``Content-Length: N\\r\\n\\r\\n`` followed by N bytes of JSON; a
request carries ``seq``/``command``/``arguments``, its response ``request_seq``, and the adapter
sends events (``initialized``, ``stopped``, ...) at any time, so a reader thread sorts them.

debugpy's attach order (as VS Code does it): ``initialize``, ``attach``, wait for the
``initialized`` event, ``setBreakpoints``, ``configurationDone``; the ``attach`` response only
comes after ``configurationDone``.
"""
from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
import time

from twotier.poll import Timeout, poll


class DapError(Exception):
    """The adapter refused a request, went away, or did not answer in time."""


class DapClient:
    def __init__(self, host: str, port: int, timeout: float = 30.0):
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(None)  # the reader blocks; waits below have their own deadlines
        self._seq = 0
        self._lock = threading.Lock()
        self._responses: dict[int, dict] = {}
        self._cond = threading.Condition()
        self.events: queue.Queue[dict] = queue.Queue()
        self._seen_events: list[dict] = []
        self.closed = False
        self._reader = threading.Thread(target=self._read_loop, daemon=True, name="dap-reader")
        self._reader.start()

    # -- wire
    def _send(self, message: dict) -> None:
        body = json.dumps(message).encode()
        with self._lock:
            self.sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def _read_message(self, stream) -> dict | None:
        length = None
        while True:
            line = stream.readline()
            if not line:
                return None
            line = line.strip()
            if not line:
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if length is None:
            raise DapError("a DAP message without Content-Length")
        return json.loads(stream.read(length))

    def _read_loop(self) -> None:
        stream = self.sock.makefile("rb")
        try:
            while True:
                message = self._read_message(stream)
                if message is None:
                    break
                if message.get("type") == "response":
                    with self._cond:
                        self._responses[message["request_seq"]] = message
                        self._cond.notify_all()
                elif message.get("type") == "event":
                    self.events.put(message)
                elif message.get("type") == "request":  # reverse requests (runInTerminal): decline
                    self._send({"seq": self._next_seq(), "type": "response", "request_seq": message["seq"],
                                "command": message.get("command"), "success": False})
        except (OSError, ValueError):
            pass
        finally:
            self.closed = True
            with self._cond:
                self._cond.notify_all()

    def _next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    # -- requests, responses, events
    def send_request(self, command: str, arguments: dict | None = None) -> int:
        seq = self._next_seq()
        self._send({"seq": seq, "type": "request", "command": command, "arguments": arguments or {}})
        return seq

    def response(self, seq: int, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cond:
            while seq not in self._responses:
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise DapError(f"no response to request {seq} "
                                   f"({'connection closed' if self.closed else 'timed out'})")
                self._cond.wait(min(left, 0.5))
            message = self._responses.pop(seq)
        if not message.get("success"):
            raise DapError(f"{message.get('command')} failed: {message.get('message')} {message.get('body') or ''}")
        return message.get("body") or {}

    def request(self, command: str, arguments: dict | None = None, timeout: float | None = None) -> dict:
        return self.response(self.send_request(command, arguments), timeout)

    def wait_event(self, name: str, timeout: float | None = None, unless_refused: int | None = None) -> dict:
        """The next event called NAME (events seen before and not waited for are kept too); with
        UNLESS_REFUSED (a request's seq), a refusal of that request ends the wait too."""
        for i, event in enumerate(self._seen_events):
            if event.get("event") == name:
                return self._seen_events.pop(i)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DapError(f"no {name!r} event within {timeout or self.timeout:.0f}s")
            try:
                event = self.events.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.closed:
                    raise DapError(f"the adapter closed the connection before a {name!r} event") from None
                if unless_refused is not None:
                    with self._cond:
                        answer = self._responses.get(unless_refused)
                    if answer is not None and not answer.get("success"):
                        raise DapError(f"{answer.get('command')} failed: {answer.get('message')}") from None
                continue
            if event.get("event") == name:
                return event
            self._seen_events.append(event)

    # -- the usual sequence
    def initialize(self, timeout: float | None = None) -> dict:
        """The first request of a session: the adapter's capabilities."""
        self.initialized = True
        return self.request("initialize", {"clientID": "twotier-tests", "adapterID": "debugpy",
                                           "pathFormat": "path", "linesStartAt1": True,
                                           "columnsStartAt1": True, "supportsVariableType": True},
                            timeout=timeout)

    def attach(self, breakpoints: dict[str, list[int]], path_mappings: list[dict] | None = None,
               just_my_code: bool = True) -> dict[str, list[dict]]:
        """(initialize +) attach + breakpoints + configurationDone; returns the breakpoints as
        set ({path: [{verified, line, ...}]})."""
        if not getattr(self, "initialized", False):
            self.initialize()
        attach_seq = self.send_request("attach", {"name": "twotier", "type": "debugpy", "request": "attach",
                                                  "justMyCode": just_my_code,
                                                  "pathMappings": path_mappings or []})
        # an adapter with no debuggee left refuses the attach instead of ever initializing
        self.wait_event("initialized", unless_refused=attach_seq)
        result = {}
        for path, lines in breakpoints.items():
            body = self.request("setBreakpoints", {"source": {"path": path},
                                                   "breakpoints": [{"line": n} for n in lines]})
            result[path] = body.get("breakpoints", [])
        self.request("configurationDone")
        self.response(attach_seq)
        return result

    def frame_locals(self, thread_id: int) -> tuple[dict, dict[str, str]]:
        """(the top frame, {local name: value as the debugger shows it}) of a stopped thread."""
        frames = self.request("stackTrace", {"threadId": thread_id, "startFrame": 0, "levels": 1})["stackFrames"]
        if not frames:
            raise DapError(f"thread {thread_id} has no frames")
        frame = frames[0]
        scopes = self.request("scopes", {"frameId": frame["id"]})["scopes"]
        local_scope = next((s for s in scopes if s.get("name", "").lower().startswith("locals")), scopes[0])
        variables = self.request("variables", {"variablesReference": local_scope["variablesReference"]})["variables"]
        return frame, {v["name"]: v["value"] for v in variables}

    def close(self) -> None:
        if not self.closed:
            try:
                self.request("disconnect", {"terminateDebuggee": False}, timeout=5)
            except DapError:
                pass
        self.drop()

    def drop(self) -> None:
        """Close the connection without a ``disconnect`` (the reader's file keeps the socket
        open after a bare close(), so the adapter would not see the end: shut it down first)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> DapClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def attach_when_ready(host: str, port: int, breakpoints: dict[str, list[int]],
                      path_mappings: list[dict] | None = None, timeout: float = 120,
                      session_timeout: float = 30, retry_every: float = 1.0) -> tuple[DapClient, dict]:
    """(client, breakpoints as set) of the first session whose whole attach succeeds, tried again
    until TIMEOUT, as a user re-attaches: a port-forward accepts a connection before anything
    listens behind it, and in the instant of a reload the connection may reach the retiring
    worker, so only a completed attach says the serving worker's debugger is there."""
    last: list[Exception] = []

    def attached() -> tuple[DapClient, dict] | None:
        client = None
        try:
            client = DapClient(host, port, timeout=session_timeout)
            client.initialize(timeout=min(5.0, session_timeout))
            return client, client.attach(breakpoints, path_mappings=path_mappings)
        except (OSError, DapError) as err:
            last[:] = [err]
            if client is not None:
                client.drop()
            return None

    try:
        return poll(attached, timeout=timeout, interval=retry_every, what=f"a debugger on {host}:{port}")
    except Timeout:
        raise DapError(f"no debugger took an attach on {host}:{port} within {timeout:.0f}s: "
                       f"{last[0] if last else None}") from None
