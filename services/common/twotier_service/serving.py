"""How a service process runs: ``python -m <package>`` (production) or with ``--dev`` (reload).

Shared by every service package (storage_api, app_api, hello_app): one copy in
services/common, copied into each image next to the service's own package.

Production: granian (a Rust HTTP server, chosen by measurement: README "Benchmarks") in this very
process, which is its master, so it is PID 1 in a container and handles the signals. Each worker
process runs the Flask app through ``twotier_service.rsgi``: connections, slow clients and
request bodies are handled on the event loop and only complete requests reach the app's few
threads. SIGTERM is graceful (in-flight requests finish within the graceful timeout), one
access-log line per request on stdout, a crashed worker is replaced.

Dev (``--dev`` or ``TWOTIER_DEV=1``): the same granian and bridge, one worker, run by
``devserver``: on a change to a ``.py`` file under the working directory (the service folder;
in the image the code directory, where Tilt's live_update syncs files) a new worker starts with
the new code beside the old one, which retires once the new one serves; a syntax or import error
keeps the old code serving. Python's own installation and site-packages are not watched.

Environment (PREFIX is STO for the storage API, API for the application API, HELLO for hello):
  PREFIX_HOST             listen address (default 0.0.0.0)
  PREFIX_PORT             listen port (storage 5000, app 5001, hello 5000)
  PREFIX_WORKERS          worker processes (default 2)
  PREFIX_THREADS          app threads per worker (default 4)
  PREFIX_TIMEOUT          seconds a client gets to send its request headers (an idle
                          keep-alive connection is closed after as long), and again its body;
                          slower clients are disconnected / get a JSON 408 (default 10)
  PREFIX_GRACEFUL_TIMEOUT seconds in-flight requests get after SIGTERM (default 10)
  PREFIX_CONNECTIONS      open connections per worker, idle ones included (default 4096;
                          more wait in the listen backlog)
  TWOTIER_DEV             1 = dev mode (same as --dev)
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping

#: environment variable naming the service package, read by the workers' app factory
PACKAGE_ENV = "TWOTIER_SERVICE_PACKAGE"
PREFIX_ENV = "TWOTIER_SERVICE_PREFIX"
#: the most a request line and its headers may take; larger ones get granian's 431 (or 400)
MAX_HEADER_BYTES = 32 * 1024


class ConfigError(Exception):
    """A setting is missing or invalid; the message says which and what is expected."""


def env_int(env: Mapping, name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
    value = _env_number(env, name, int, "an integer")
    if value is None:
        return default
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise ConfigError(f"{name} must be >= {minimum}{upper}, got {value}")
    return value


def env_float(env: Mapping, name: str, default: float, minimum: float = 0.0) -> float:
    value = _env_number(env, name, float, "a number")
    if value is None:
        return default
    if not value > minimum:
        raise ConfigError(f"{name} must be > {minimum}, got {value}")
    return value


def _env_number(env: Mapping, name: str, kind, what: str):
    """NAME's value converted by KIND, or None when it is unset or blank."""
    raw = env.get(name)
    if raw is None or str(raw).strip() == "":
        return None
    try:
        return kind(str(raw).strip())
    except ValueError:
        raise ConfigError(f"{name} must be {what}, got {raw!r}") from None


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def main(*, package: str, title: str, prefix: str, default_port: int,
         factory: Callable, argv: list[str] | None = None) -> int:
    """Entry point of ``python -m <package>``; returns the exit code (config error = 2)."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {package}",
        description=f"Run the {title} (granian; --dev for the reloading dev server).",
        epilog=f"Settings come from the environment ({prefix}_HOST, {prefix}_PORT, "
               f"{prefix}_WORKERS, {prefix}_THREADS, ...); flags override them.",
    )
    parser.add_argument("--dev", action="store_true",
                        help="dev server that reloads on code change (also: TWOTIER_DEV=1)")
    parser.add_argument("--host", help=f"listen address (default ${prefix}_HOST or 0.0.0.0)")
    parser.add_argument("--port", type=int, help=f"listen port (default ${prefix}_PORT or {default_port})")
    args = parser.parse_args(argv)
    env = os.environ
    try:
        host = args.host or env.get(f"{prefix}_HOST") or "0.0.0.0"
        port = args.port if args.port is not None else env_int(env, f"{prefix}_PORT", default_port, 1, 65535)
        if not 1 <= port <= 65535:
            raise ConfigError(f"port must be 1..65535, got {port}")
        if args.dev or truthy(env.get("TWOTIER_DEV")):
            return _run_dev(factory(), host, port, prefix, package)
        code = _check_in_child(factory, title)
        if code:
            return code
        return _run_granian(host, port, prefix, package, env)
    except ConfigError as err:
        print(f"error: {title}: {err}", file=sys.stderr)
        return 2


def _check_in_child(factory: Callable, title: str) -> int:
    """Build the app once in a forked child, so that a bad setting is one clear line and exit 2
    before any worker starts, while the master process (PID 1, it only supervises) never
    builds one: no storage client, no open directory, nothing its workers would inherit."""
    if not hasattr(os, "fork"):
        factory()
        return 0
    pid = os.fork()
    if pid == 0:  # the child: report, never return into the caller's code
        code = 1
        try:
            factory()
            code = 0
        except ConfigError as err:
            print(f"error: {title}: {err}", file=sys.stderr, flush=True)
            code = 2
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1


def server_options(host: str, port: int, prefix: str, package: str, env: Mapping) -> dict:
    """granian's settings from the environment (also read by the unit tests)."""
    from granian.constants import HTTPModes, Interfaces, Loops, RuntimeModes
    from granian.http import HTTP1Settings

    workers = env_int(env, f"{prefix}_WORKERS", 2, 1)
    connections = env_int(env, f"{prefix}_CONNECTIONS", 4096, 16)
    timeout = env_int(env, f"{prefix}_TIMEOUT", 10, 1, 60)
    return {
        "target": "twotier_service.rsgi:app_from_env",
        "factory": True,
        "address": host,
        "port": port,
        "interface": Interfaces.RSGI,
        "http": HTTPModes.http1,
        "websockets": False,
        "workers": workers,
        # one event-loop thread per worker: the app's own threads are in the rsgi bridge
        "runtime_mode": RuntimeModes.st,
        "loop": Loops.uvloop,  # pinned in requirements.txt: missing is an error, not a slow default
        "backpressure": connections,
        "backlog": max(1024, min(65535, connections * workers)),
        # max_buffer_size bounds what a request line and its headers may take (granian's default,
        # ~400 KB, lets every connection hold that much); 32 KiB is what nginx allows by default
        "http1_settings": HTTP1Settings(header_read_timeout=timeout * 1000, keep_alive=True,
                                        max_buffer_size=MAX_HEADER_BYTES),
        "log_access": False,  # written by the bridge (twotier_service.rsgi): raw target, escaped
        "respawn_failed_workers": True,
        "workers_kill_timeout": env_int(env, f"{prefix}_GRACEFUL_TIMEOUT", 10, 0) or None,
    }


def _run_granian(host: str, port: int, prefix: str, package: str, env: Mapping) -> int:
    from granian import Granian

    options = server_options(host, port, prefix, package, env)
    env_int(env, f"{prefix}_THREADS", 4, 0)  # fail here, not in every worker
    # the workers build their own app (twotier_service.rsgi.app_from_env) from these
    os.environ[PACKAGE_ENV] = package
    os.environ[PREFIX_ENV] = prefix
    Granian(**options).serve()
    return 0


def _run_dev(app, host: str, port: int, prefix: str, package: str) -> int:
    from twotier_service import devserver

    env_int(os.environ, f"{prefix}_THREADS", 4, 0)  # fail here, not in every worker
    os.environ[PACKAGE_ENV] = package  # for the workers' app factory, as in production
    os.environ[PREFIX_ENV] = prefix
    # Never watch Python's own installation or the virtualenv, nor data directories the app
    # writes to (an item named "x.py" must not trigger a reload).
    excluded = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    excluded.update(app.config.get("RELOAD_EXCLUDE", ()))
    return devserver.run(app, host, port, {os.path.abspath(p) for p in excluded if p})
