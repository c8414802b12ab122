"""The seed's Step 1 app: ``/`` -> {"a": 1}, ``/info`` -> {"info": true}, on port 5000.

``create_app(config=None)`` builds the Flask app (no settings of its own). ``python -m hello_app``
serves it with granian (``HELLO_HOST``, ``HELLO_PORT`` = 5000, ...; see
``twotier_service.serving``, services/common), ``--dev`` with reload. The HTTP contract is in
../openapi.yaml.
"""
from __future__ import annotations

from collections.abc import Mapping

from flask import Flask

from twotier_service.jsonapi import add_probes, install_error_handlers

__all__ = ["create_app"]


def create_app(config: Mapping | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(TESTING=bool((config or {}).get("TESTING", False)),
                      SERVE_ON_LOOP=[("GET", "/")])  # constant answers: no thread hop needed
    install_error_handlers(app)
    add_probes(app)

    @app.get("/")
    def home():
        return {"a": 1}

    @app.get("/info")
    def info():
        return {"info": True}

    return app
