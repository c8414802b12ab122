"""Storage API: items are files in one directory (``STO_STORAGE``), as in the seed's Step 3.

``create_app(config=None)`` builds the Flask app. With ``config=None`` settings come from the
environment; a mapping (tests) replaces the environment. Settings:

  STO_STORAGE    directory holding the items (required; created if missing)
  STO_MAX_BATCH  most names one ``POST /items:batch`` may carry (default 10000, what the
                 application API sends at most: API_BATCH_SIZE)
  STO_MAX_BODY   largest request body in bytes (default 2097152 = 2 MiB: 10000 names of the
                 longest kind, 128 characters, with their quotes and commas)

Listening address and server settings (``STO_HOST``, ``STO_PORT`` = 5000, workers, ...) are
read by ``python -m storage_api`` (see ``twotier_service.serving``, services/common). The HTTP
contract is in ../openapi.yaml.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from flask import Flask

from twotier_service.jsonapi import add_probes, install_error_handlers
from twotier_service.serving import ConfigError, env_int

from .store import Store

__all__ = ["create_app", "ConfigError"]


def create_app(config: Mapping | None = None) -> Flask:
    settings = dict(os.environ if config is None else config)
    storage_dir = _storage_dir(settings.get("STO_STORAGE"))

    app = Flask(__name__)
    app.config.update(
        STO_STORAGE=storage_dir,
        STO_MAX_BATCH=env_int(settings, "STO_MAX_BATCH", 10_000, 1),
        MAX_CONTENT_LENGTH=env_int(settings, "STO_MAX_BODY", 2 * 1024 * 1024, 1024),
        RELOAD_EXCLUDE=[storage_dir],  # dev reloader: items are data, not code
        # production server: creating or deleting one item is a few filesystem calls, cheap
        # enough for the event loop (twotier_service.rsgi); listings and batches, which grow
        # with the number of items, run on the app threads
        SERVE_ON_LOOP=[("PUT", "/items/"), ("DELETE", "/items/")],
        TESTING=bool(settings.get("TESTING", False)),
    )
    store = Store(storage_dir)
    app.extensions["store"] = store
    try:
        store.remove_stale_temp_files()
    except OSError as err:
        app.logger.warning("could not sweep stale temporary files in %s: %s", storage_dir, err)

    install_error_handlers(app)
    add_probes(app, readiness=lambda: _readiness(store))

    from . import routes

    app.register_blueprint(routes.bp)
    return app


def _storage_dir(raw: str | None) -> str:
    if not raw:
        raise ConfigError("STO_STORAGE is not set: it names the directory holding the items "
                          "(e.g. STO_STORAGE=/var/lib/storage)")
    path = os.path.abspath(raw)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"STO_STORAGE={raw} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create STO_STORAGE={raw}: {err.strerror or err}") from None
    return path


def _readiness(store: Store) -> tuple[bool, dict]:
    if store.is_writable():
        return True, {}
    return False, {"reason": f"storage directory {store.root} is missing or not writable"}
