"""Loopback ports: one free-port helper, and the checks `invoke serve` makes before it starts.

``free_port()`` is a port nobody listens on now; ``port_in_use(port)`` tries to bind it as a server
would (SO_REUSEADDR); ``check_port_free`` turns a busy port into a UserError that names its owner
and a free one nearby.
"""
from __future__ import annotations

import errno
import socket

from twotier.errors import UserError

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _bind_errno(port: int, host: str = LOOPBACK) -> int | None:
    """None if ``port`` could be listened on now, else the errno of the failed bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        try:
            sock.bind((host, port))
        except OSError as err:
            return err.errno
    return None


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    return _bind_errno(port, host) is not None


def parse_port(value, flag: str) -> int:
    try:
        port = int(str(value).strip())
    except ValueError:
        raise UserError(f"{flag} must be a port number, got {value!r}", f"e.g. {flag} 5002") from None
    if not 1 <= port <= 65535:
        raise UserError(f"{flag} must be between 1 and 65535, got {port}", f"e.g. {flag} 5002")
    return port


def check_port_free(port: int, flag: str, avoid: set[int] = frozenset(), host: str = LOOPBACK) -> None:
    code = _bind_errno(port, host)
    if code is None:
        return
    if code == errno.EACCES:
        raise UserError(f"port {port} needs more privileges than this user has",
                        f"use {flag} with a port above 1023")
    owner = port_owner(port)
    suggestion = next((p for p in range(port + 1, port + 200)
                       if p not in avoid and not port_in_use(p, host)), None)
    who = f" by {owner}" if owner else ""
    note = " (the local cluster's registry listens on 127.0.0.1:5000)" if port == 5000 else ""
    hint = f"use {flag} {suggestion}" if suggestion else f"use {flag} with a free port"
    raise UserError(f"port {port} is in use on {host}{who}{note}", hint + ", or stop what listens there")


def port_owner(port: int) -> str | None:
    """'name (pid N)' of the process listening on TCP ``port``, best effort (psutil)."""
    import psutil

    try:
        conns = psutil.net_connections("tcp")
    except psutil.Error:
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            try:
                return f"{psutil.Process(conn.pid).name()} (pid {conn.pid})"
            except psutil.Error:
                continue
    return None
