"""Application API: createlist/clear on top of the storage API (``STO_API``), as in the seed.

``create_app(config=None)`` builds the Flask app. With ``config=None`` settings come from the
environment; a mapping (tests) replaces the environment. Settings:

  STO_API              base URL of the storage API (required), e.g. http://in-svc:5000
  API_MAX_ITEMS        largest <number> accepted by /createlist (default 100000)
  API_BATCH_SIZE       items per call to the storage API (default 10000)
  API_CONNECT_TIMEOUT  seconds to connect to the storage API (default 1.0)
  API_READ_TIMEOUT     seconds to wait for data from the storage API, per wait (default 10.0)
  API_DEADLINE         seconds one request may spend on the storage API in total, all its
                       calls together (default 15.0: well under the clients' and probes'
                       patience); past it the answer is a 504 (or, halfway, the rest in faileds)
  API_RETRIES          extra connection attempts when connecting fails (default 2)
  API_POOL_SIZE        keep-alive connections to the storage API per worker (default 8)
  API_MAX_ANSWER       most bytes read from one storage answer (default 33554432 = 32 MiB:
                       a listing of about 250,000 items); larger ones are a 502

Listening address and server settings (``API_HOST``, ``API_PORT`` = 5001, workers, ...) are
read by ``python -m app_api`` (see ``twotier_service.serving``, services/common). The HTTP
contract is in ../openapi.yaml.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from flask import Flask

from twotier_service.jsonapi import add_probes, install_error_handlers
from twotier_service.serving import ConfigError, env_float, env_int

from .storage_client import StorageClient

__all__ = ["create_app", "ConfigError"]


def create_app(config: Mapping | None = None) -> Flask:
    settings = dict(os.environ if config is None else config)
    base_url = _storage_url(settings.get("STO_API"))

    app = Flask(__name__)
    app.config.update(
        STO_API=base_url,
        API_MAX_ITEMS=env_int(settings, "API_MAX_ITEMS", 100_000, 0),
        API_BATCH_SIZE=env_int(settings, "API_BATCH_SIZE", 10_000, 1),
        API_DEADLINE=env_float(settings, "API_DEADLINE", 15.0),
        TESTING=bool(settings.get("TESTING", False)),
    )
    app.extensions["storage"] = StorageClient(
        base_url,
        connect_timeout=env_float(settings, "API_CONNECT_TIMEOUT", 1.0),
        read_timeout=env_float(settings, "API_READ_TIMEOUT", 10.0),
        retries=env_int(settings, "API_RETRIES", 2, 0, 10),
        pool_size=env_int(settings, "API_POOL_SIZE", 8, 1),
        max_answer=env_int(settings, "API_MAX_ANSWER", 32 * 1024 * 1024, 1024),
    )
    install_error_handlers(app)
    add_probes(app)  # ready as soon as it answers: storage trouble is reported per request

    from . import routes

    app.register_blueprint(routes.bp)
    return app


def _storage_url(raw: str | None) -> str:
    if not raw:
        raise ConfigError("STO_API is not set: it is the storage API's base URL "
                          "(e.g. STO_API=http://127.0.0.1:5000)")
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"STO_API must be an http:// or https:// URL with a host, got {raw!r}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(f"STO_API has an invalid port: {raw!r}") from None
    return raw.strip().rstrip("/")
