"""How a service process runs: ``python -m <package>`` (production) or with ``--dev`` (reload).

Shared by every service package (storage_api, app_api, hello_app): one copy in
services/common, copied into each image next to the service's own package.

Production: gunicorn in this very process (it is the master, so it is PID 1 in a container and
handles signals): ``gthread`` workers, graceful shutdown on SIGTERM (in-flight requests finish
within the graceful timeout), one access-log line per request on stdout, errors on stderr.

Dev (``--dev`` or ``TWOTIER_DEV=1``): Werkzeug's server run by ``devserver``'s supervisor, which
watches the code (inotify, watchdog): a change to a ``.py`` file under the working directory
(the service folder; in the image the code directory, where Tilt's live_update syncs files)
starts a new worker with the new code while the old one keeps answering, then switches over; a
syntax or import error keeps the old code serving. Python's own installation and site-packages
are not watched.

Environment (PREFIX is STO for the storage API, API for the application API, HELLO for hello):
  PREFIX_HOST             listen address (default 0.0.0.0)
  PREFIX_PORT             listen port (storage 5000, app 5001, hello 5000)
  PREFIX_WORKERS          gunicorn worker processes (default 2)
  PREFIX_THREADS          threads per worker (default 4)
  PREFIX_TIMEOUT          seconds before a silent worker is killed and replaced (default 30)
  PREFIX_GRACEFUL_TIMEOUT seconds in-flight requests get after SIGTERM (default 10)
  TWOTIER_DEV             1 = dev mode (same as --dev)
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping

ACCESS_LOG_FORMAT = '%(h)s %(t)s "%(r)s" %(s)s %(b)s %(M)sms'


class ConfigError(Exception):
    """A setting is missing or invalid; the message says which and what is expected."""


def env_int(env: Mapping, name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise ConfigError(f"{name} must be >= {minimum}{upper}, got {value}")
    return value


def env_float(env: Mapping, name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not value > minimum:
        raise ConfigError(f"{name} must be > {minimum}, got {value}")
    return value


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def main(*, package: str, title: str, prefix: str, default_port: int,
         factory: Callable, argv: list[str] | None = None) -> int:
    """Entry point of ``python -m <package>``; returns the exit code (config error = 2)."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {package}",
        description=f"Run the {title} (gunicorn; --dev for the reloading dev server).",
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
        app = factory()
        if args.dev or truthy(env.get("TWOTIER_DEV")):
            return _run_dev(app, host, port)
        return _run_gunicorn(app, host, port, prefix, package, env)
    except ConfigError as err:
        print(f"error: {title}: {err}", file=sys.stderr)
        return 2


def _run_gunicorn(app, host: str, port: int, prefix: str, package: str, env: Mapping) -> int:
    from gunicorn.app.base import BaseApplication

    threads = env_int(env, f"{prefix}_THREADS", 4, 1)
    options = {
        "bind": f"{host}:{port}",
        "workers": env_int(env, f"{prefix}_WORKERS", 2, 1),
        "threads": threads,
        "worker_class": "gthread",
        "timeout": env_int(env, f"{prefix}_TIMEOUT", 30, 1),
        "graceful_timeout": env_int(env, f"{prefix}_GRACEFUL_TIMEOUT", 10, 0),
        "keepalive": 5,
        "accesslog": "-",
        "errorlog": "-",
        "access_log_format": ACCESS_LOG_FORMAT,
        "loglevel": "info",
        "proc_name": package,
    }
    # Worker heartbeat files: RAM-backed where possible (works with a read-only root filesystem).
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        options["worker_tmp_dir"] = "/dev/shm"

    class _Server(BaseApplication):
        def load_config(self):
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self):
            return app

    _Server().run()  # returns only through sys.exit
    return 0


def _run_dev(app, host: str, port: int) -> int:
    from twotier_service import devserver

    # Never watch Python's own installation or the virtualenv, nor data directories the app
    # writes to (an item named "x.py" must not trigger a reload). devserver says why it does not
    # use Werkzeug's reloader (a reload there stops serving, and a syntax error ends the server).
    excluded = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    excluded.update(app.config.get("RELOAD_EXCLUDE", ()))
    return devserver.run(app, host, port, {os.path.abspath(p) for p in excluded if p})
